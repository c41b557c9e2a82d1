"""The option contract: every user-facing key of an option file, read and checked once.

:func:`validate_options` runs before BasicSR builds anything or writes a file (``segsr_basicsr.train``
/ ``.test`` call it first); an error names the key path, the value, what is allowed and, for a
misspelt key or value, the nearest valid one. The same parsers (:func:`tile_spec`, :func:`parse_amp`,
...) serve the model and the command line, so a rule lives in one place. Files and folders named by
options are checked in :mod:`segsr_basicsr.utils.preflight` (inputs) after this pass.
"""
import math
import os

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest
from segsr_basicsr.options.datasets import check_dataset
from segsr_basicsr.options.keys import _flag, _positive_int, _registered, _require
from segsr_basicsr.options.values import (CPU_KERNELS, _whole, check_tile, choice, parse_amp,  # noqa: F401
                                          parse_finite_check_freq, parse_grad_clip, parse_guidance_lr_mult,
                                          parse_tf32, signal_numbers, tile_spec)

__all__ = ['validate_options', 'check_cpu_options', 'check_val', 'check_train', 'check_dataset']


# ----------------------------------------------------------------------------- sections
#: keys of ``val`` that BasicSR's SRModel and SeGSRModel read
VAL_KEYS = ('val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'tile', 'self_ensemble', 'amp', 'best_metric')


def check_val(opt, path, is_train):
    """val: known keys, val_freq, flags, amp, tile (against the network's window), metrics' crop_border."""
    if opt.get('val') is None:
        if not is_train:
            raise OptionError(f'{path}: Testing needs a "val:" section (save_img, metrics).')
        return
    val = _require(opt, 'val', dict, '', path)
    for key in val:
        if key not in VAL_KEYS:
            raise OptionError(f'{path}: val:{key} is not a validation option{suggest(key, VAL_KEYS)}; known: '
                              f'{", ".join(VAL_KEYS)}.')
    if is_train:
        _positive_int(val, 'val_freq', 'val:', path)
    for key in ('save_img', 'pbar', 'self_ensemble'):
        _flag(val, key, f'{path}: val:')
    parse_amp(val.get('amp'), f'{path}: val:amp')
    hat = opt.get('tile') if isinstance(opt.get('tile'), dict) else None
    origin = (f"{path}: tile (tile_size {hat.get('tile_size')} + 2 * tile_pad {hat.get('tile_pad', 0)}, HAT's form "
              'of val:tile)') if hat else f'{path}: val:tile'
    window = opt['network_g'].get('window_size') or 1
    check_tile(tile_spec(val.get('tile'), origin), window, origin, 'network_g:window_size')
    metrics = val.get('metrics')
    metrics = {} if metrics is None else metrics
    if not isinstance(metrics, dict):
        raise OptionError(f'{path}: val:metrics must be a section (name: {{type: calculate_psnr, ...}}).')
    from basicsr.utils.registry import METRIC_REGISTRY
    for name, metric in metrics.items():
        _require(metrics, name, dict, 'val:metrics:', path)
        _registered(METRIC_REGISTRY, _require(metric, 'type', str, f'val:metrics:{name}:', path), 'metric', path,
                    f'val:metrics:{name}:type')
        _check_metric_arguments(METRIC_REGISTRY.get(metric['type']), metric, f'{path}: val:metrics:{name}')
        crop = metric.get('crop_border', 0)
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise OptionError(f'{path}: val:metrics:{name}:crop_border must be an integer >= 0, got {crop!r}.')
    if val.get('best_metric') is not None:
        choice(val['best_metric'], list(metrics), f'{path}: val:best_metric')


def _check_metric_arguments(function, metric, where):
    """The arguments a metric function requires (after the two images) are in its section; BasicSR would only
    find out at the first validation, after training up to it."""
    import inspect
    params = list(inspect.signature(function).parameters.values())[2:]
    for p in params:
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in metric:
            raise OptionError(f'{where}: missing key {p.name!r}: {function.__name__} requires it.')


def check_train(opt, path):
    """train and logger: counts, amp, tf32, grad_clip, guidance_lr_mult, the optimizer's name."""
    train = _require(opt, 'train', dict, '', path)
    _positive_int(train, 'total_iter', 'train:', path)
    parse_amp(train.get('amp'), f'{path}: train:amp')
    try:
        parse_tf32(train.get('tf32'), 'cpu')
        parse_finite_check_freq(train.get('finite_check_freq'), 'cpu', None)
        parse_grad_clip(train.get('grad_clip'))
        parse_guidance_lr_mult(train.get('guidance_lr_mult'))
    except OptionError as e:
        raise OptionError(f'{path}: {e}') from None
    _check_optimizer(train, path)
    ema = train.get('ema_decay', 0)
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
        raise OptionError(f'{path}: train:ema_decay must be a number in [0, 1) (0: no EMA), got {ema!r}.')
    _check_registered_types(train, path)
    _check_schedule(train, path, opt['model_type'])
    logger = _require(opt, 'logger', dict, '', path)
    _positive_int(logger, 'print_freq', 'logger:', path)
    _positive_int(logger, 'save_checkpoint_freq', 'logger:', path)
    if not isinstance(logger.get('use_tb_logger'), bool):  # BasicSR's MessageLogger reads it without a default
        raise OptionError(f'{path}: logger:use_tb_logger must be true or false, got '
                          f'{logger.get("use_tb_logger", "nothing")!r}.')
    if logger.get('keep_checkpoints') is not None:
        _positive_int(logger, 'keep_checkpoints', 'logger:', path)
    signal_numbers(train.get('stop_signals'), f'{path}: train:stop_signals')


def _check_optimizer(train, path):
    import torch
    optim = _require(train, 'optim_g', dict, 'train:', path)
    names = [n for n, c in vars(torch.optim).items()
             if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]
    choice(_require(optim, 'type', str, 'train:optim_g:', path), names, f'{path}: train:optim_g:type')
    lr = _require(optim, 'lr', (int, float), 'train:optim_g:', path)
    if not lr > 0:
        raise OptionError(f'{path}: train:optim_g:lr must be > 0, got {lr!r}.')
    kwargs = {k: v for k, v in optim.items() if k not in ('type', 'lr')}
    import inspect
    defaults = inspect.signature(getattr(torch.optim, optim['type'])).parameters
    for key, value in kwargs.items():
        default = defaults[key].default if key in defaults else None
        if isinstance(value, bool) and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise OptionError(f'{path}: train:optim_g:{key} must be a number, got {value!r}.')
    try:  # one dummy parameter: whatever torch refuses in these options (betas, weight_decay, ...) is one line
        getattr(torch.optim, optim['type'])([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise OptionError(f'{path}: train:optim_g cannot build {optim["type"]}: {type(e).__name__}: {e}') from None
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict):  # what BasicSR's BaseModel.setup_schedulers accepts
        kind = choice(scheduler.get('type'), ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR'),
                      f'{path}: train:scheduler:type')
        from basicsr.models import lr_scheduler
        cls = lr_scheduler.CosineAnnealingRestartLR if kind == 'CosineAnnealingRestartLR' else \
            lr_scheduler.MultiStepRestartLR
        try:
            cls(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr),
                **{k: v for k, v in scheduler.items() if k != 'type'})
        except Exception as e:  # noqa: BLE001
            raise OptionError(f'{path}: train:scheduler cannot build {kind}: {type(e).__name__}: {e}') from None


def _check_registered_types(train, path):
    """Every ``train:*_opt`` is a section naming a BasicSR loss, with a finite ``loss_weight`` >= 0; it is built
    once (losses that load VGG weights excepted), so what its constructor refuses is one line now."""
    import inspect

    from basicsr.utils.registry import LOSS_REGISTRY
    for key, section in train.items():
        if not str(key).endswith('_opt') or section is None:
            continue
        if not isinstance(section, dict):
            raise OptionError(f'{path}: train:{key} must be a section like {{type: L1Loss, loss_weight: 1.0}} or ~, '
                              f'got {section!r}.')
        kind = _require(section, 'type', str, f'train:{key}:', path)
        _registered(LOSS_REGISTRY, kind, 'loss', path, f'train:{key}:type')
        weight = section.get('loss_weight', 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise OptionError(f'{path}: train:{key}:loss_weight must be a number >= 0, got {weight!r}.')
        cls = LOSS_REGISTRY.get(kind)
        if 'layer_weights' in inspect.signature(cls).parameters:
            continue  # a perceptual loss: building it loads VGG weights
        try:
            cls(**{k: v for k, v in section.items() if k != 'type'})
        except Exception as e:  # noqa: BLE001 - whatever the loss refuses in these options
            raise OptionError(f'{path}: train:{key} cannot build {kind}: {type(e).__name__}: {e}') from None


def _check_schedule(train, path, model_type):
    """What BasicSR's SRModel needs and only finds out while training: a loss, a scheduler section of numbers,
    an integer warmup_iter."""
    from basicsr.models.sr_model import SRModel
    from basicsr.utils.registry import MODEL_REGISTRY
    if issubclass(MODEL_REGISTRY.get(model_type), SRModel) and not (train.get('pixel_opt')
                                                                      or train.get('perceptual_opt')):
        raise OptionError(f'{path}: train has neither pixel_opt nor perceptual_opt; {model_type} trains with at least '
                          'one (e.g. pixel_opt: {type: L1Loss, loss_weight: 1.0}).')
    scheduler = _require(train, 'scheduler', dict, 'train:', path, ' E.g. {type: MultiStepLR, milestones: '
                         '[50000], gamma: 0.5}.')
    for key, value in scheduler.items():
        values = value if isinstance(value, list) else [value]
        if key != 'type' and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise OptionError(f'{path}: train:scheduler:{key} must be a number or a list of numbers, got {value!r}.')
    warmup = train.get('warmup_iter', -1)  # BasicSR's default is for a missing key, not for ~
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < -1:
        raise OptionError(f'{path}: train:warmup_iter must be an integer (-1: no warm-up), got {warmup!r}.')


def _refuse_non_finite(node, path, where=''):
    """No option takes NaN or infinity (YAML's .nan / .inf): every number of the file is finite."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f'{where}:{key}' if where else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f'{path}: {here} is {value}; options take finite numbers.')
        _refuse_non_finite(value, path, here)


#: keys of ``path`` BasicSR reads or sets; per network: pretrain_network_*, param_key_*, strict_load_*
_PATH_KEYS = ('pretrain_network_g', 'param_key_g', 'strict_load_g', 'resume_state', 'ignore_resume_networks', 'root',
              'experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root')
_PATH_PREFIXES = ('pretrain_network_', 'param_key_', 'strict_load_')


def check_cpu_options(opt, path):
    """Top-level ``num_threads`` and ``cpu_kernels``: checked on their own too, since they are applied before the
    rest of the pass runs (training/cpu_arithmetic.py)."""
    if opt.get('num_threads') is not None:
        _positive_int(opt, 'num_threads', '', path)
    if opt.get('cpu_kernels') is not None:
        choice(opt['cpu_kernels'], CPU_KERNELS, f'{path}: cpu_kernels')


def validate_options(opt, path, is_train=True):
    """The whole option pass (before any work): top level, network_g, path, datasets, train/logger, val.
    Returns the CPU build of network_g it made (None where it cannot build here: an hf-hub CLIP)."""
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

    from segsr_basicsr.archs.network_options import check_network_options

    _refuse_non_finite(opt, path)
    name = _require(opt, 'name', str, '', path)
    if not name.strip() or name in ('.', '..') or '/' in name or os.sep in name:
        raise OptionError(f'{path}: name {name!r} must be a plain folder name (it becomes experiments/<name> and '
                          'results/<name>): no slashes, not empty, not . or ..')
    seed = opt.get('manual_seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise OptionError(f'{path}: manual_seed must be an integer >= 0 or ~ (random), got {seed!r}.')
    check_cpu_options(opt, path)
    paths = _require(opt, 'path', dict, '', path, ' Add a "path:" section (it may be empty: path: {}).')
    for key in ('strict_load_g', 'strict_load_d'):
        _flag(paths, key, f'{path}: path:')
    for key in ('param_key_g', 'param_key_d'):
        if key in paths and paths[key] is not None and not isinstance(paths[key], str):
            raise OptionError(f'{path}: path:{key} must be the name of an entry of the checkpoint (params, '
                              f'params_ema) or ~, got {paths[key]!r}.')
    _registered(MODEL_REGISTRY, _require(opt, 'model_type', str, '', path), 'model', path, 'model_type')
    scale = _positive_int(opt, 'scale', '', path) if 'scale' in opt else None
    network = _require(opt, 'network_g', dict, '', path)
    _registered(ARCH_REGISTRY, _require(network, 'type', str, 'network_g:', path), 'arch', path, 'network_g:type')
    net = check_network_options(network, scale, path)
    for key in paths:
        if not (str(key).startswith(_PATH_PREFIXES) or key in _PATH_KEYS):
            raise OptionError(f'{path}: path:{key} is not a path option{suggest(key, _PATH_KEYS)}; known: '
                              f'{", ".join(_PATH_KEYS)} and pretrain_network_* / param_key_* / strict_load_*.')
    resume = paths.get('resume_state')
    if resume is not None and not isinstance(resume, str):
        raise OptionError(f'{path}: path:resume_state must be a training state file or ~, got {resume!r}.')
    for key, value in paths.items():
        if key.startswith('pretrain_network') and value is not None:
            if not isinstance(value, str) or not os.path.isfile(os.path.expanduser(value)):
                raise OptionError(f'{path}: path:{key} = {value!r} is not a file. Fix the path or set it to ~.')
    datasets = _require(opt, 'datasets', dict, '', path)
    if not datasets:
        raise OptionError(f"{path}: 'datasets' is empty.")
    if is_train and 'train' not in datasets:
        raise OptionError(f"{path}: 'datasets' has no 'train' section{suggest('train', datasets)}.")
    for phase, dataset in datasets.items():
        check_dataset(dataset, str(phase), path, scale, is_train)
    _check_num_gpu(opt, path)  # after the datasets: on a first run, the missing data is the news
    if is_train:
        check_train(opt, path)
    check_val(opt, path, is_train)
    return net


def _check_num_gpu(opt, path):
    import torch
    num_gpu = opt.get('num_gpu', None)
    if num_gpu is None:
        raise OptionError(f"{path}: missing key 'num_gpu'. Use num_gpu: auto (all visible GPUs, 0 on a CPU machine).")
    if num_gpu != 'auto':
        if not isinstance(num_gpu, int) or isinstance(num_gpu, bool) or num_gpu < 0:
            raise OptionError(f"{path}: 'num_gpu' must be 'auto' or an integer >= 0, got {num_gpu!r}.")
        if num_gpu > 0 and not torch.cuda.is_available():
            raise OptionError(f'{path}: num_gpu is {num_gpu} but CUDA is not available on this machine. '
                              'Set num_gpu: 0 or num_gpu: auto to run on the CPU.')

