"""The option contract: every user-facing key of an option file, read and checked once.

:func:`validate_options` runs before BasicSR builds anything or writes a file (``segsr_basicsr.train``
/ ``.test`` call it first); an error names the key path, the value, what is allowed and, for a
misspelt key or value, the nearest valid one. The same parsers (:func:`tile_spec`, :func:`parse_amp`,
...) serve the model and the command line, so a rule lives in one place. Files and folders named by
options are checked in :mod:`segsr_basicsr.utils.preflight` (inputs) after this pass.
"""
import difflib
import os

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest
from segsr_basicsr.options.values import (_whole, check_tile, choice, parse_amp, parse_finite_check_freq,  # noqa: F401
                                          parse_grad_clip, parse_guidance_lr_mult, parse_tf32, signal_numbers,
                                          tile_spec)

__all__ = ['validate_options', 'check_val', 'check_train', 'check_dataset']


_TYPE_NAMES = {int: 'an integer', str: 'a string', dict: 'a section (key: value mapping)', float: 'a number'}


def _require(opt, key, types, where, path, hint=''):
    if key not in opt:
        raise OptionError(f'{path}: missing key {where + key!r}{suggest(key, opt)}.{hint}')
    value = opt[key]
    types = types if isinstance(types, tuple) else (types, )
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = ' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise OptionError(f'{path}: {where + key!r} must be {names}, got {value!r}.')
    return value


def _positive_int(opt, key, where, path, minimum=1):
    """An integer count; BasicSR files often write counts as ``!!float 5e3``, which basicsr accepts too."""
    if key in opt and (isinstance(opt[key], bool) or not isinstance(opt[key], (int, float))):
        raise OptionError(f'{path}: {where + key!r} must be a whole number, got {opt[key]!r}.')
    value = _require(opt, key, (int, float), where, path)
    if isinstance(value, float) and not value.is_integer():
        raise OptionError(f'{path}: {where + key!r} must be a whole number, got {value!r}.')
    if value < minimum:
        raise OptionError(f'{path}: {where + key!r} must be >= {minimum}, got {value}.')
    return value


def _registered(registry, name, what, path, where):
    if name not in registry:
        names = sorted(k for k in registry.keys())
        close = difflib.get_close_matches(name, names, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise OptionError(f'{path}: {where} {name!r} is not a registered BasicSR {what}.{hint} '
                          'Check the spelling (our names start with SeGSR) and that segsr_basicsr is imported.')


# ----------------------------------------------------------------------------- value parsers
def _flag(section, key, where):
    value = section.get(key, False)
    if value is not None and not isinstance(value, bool):
        raise OptionError(f'{where}{key} must be true or false, got {value!r}.')
    return bool(value)


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
    metrics = val.get('metrics') or {}
    if not isinstance(metrics, dict):
        raise OptionError(f'{path}: val:metrics must be a section (name: {{type: calculate_psnr, ...}}).')
    from basicsr.utils.registry import METRIC_REGISTRY
    for name, metric in metrics.items():
        _require(metrics, name, dict, 'val:metrics:', path)
        _registered(METRIC_REGISTRY, _require(metric, 'type', str, f'val:metrics:{name}:', path), 'metric', path,
                    f'val:metrics:{name}:type')
        crop = metric.get('crop_border', 0)
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise OptionError(f'{path}: val:metrics:{name}:crop_border must be an integer >= 0, got {crop!r}.')
    if val.get('best_metric') is not None:
        choice(val['best_metric'], list(metrics), f'{path}: val:best_metric')


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
    logger = _require(opt, 'logger', dict, '', path)
    _positive_int(logger, 'print_freq', 'logger:', path)
    _positive_int(logger, 'save_checkpoint_freq', 'logger:', path)
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
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict):  # what BasicSR's BaseModel.setup_schedulers accepts
        choice(scheduler.get('type'), ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR'),
               f'{path}: train:scheduler:type')


def _check_registered_types(train, path):
    """Every ``train:*_opt:type`` names a BasicSR loss (BasicSR only finds out when the model is built)."""
    from basicsr.utils.registry import LOSS_REGISTRY
    for key, section in train.items():
        if key.endswith('_opt') and isinstance(section, dict) and 'type' in section:
            _registered(LOSS_REGISTRY, section['type'], 'loss', path, f'train:{key}:type')


def _reads_gt_size(dataset_class) -> bool:
    """Whether a dataset class reads ``opt['gt_size']`` (BasicSR's training datasets do, without a default)."""
    import inspect
    try:
        return "opt['gt_size']" in inspect.getsource(dataset_class)
    except (OSError, TypeError):
        return False


def _check_lmdb(dataset, where, path):
    """An LMDB dataroot is a folder with data.mdb and the meta_info.txt BasicSR lists its keys from."""
    for key in ('dataroot_gt', 'dataroot_lq'):
        root = dataset.get(key)
        if not isinstance(root, str):
            continue
        folder = os.path.expanduser(root)
        meta = os.path.join(folder, 'meta_info.txt')
        missing = [n for n in ('data.mdb', 'meta_info.txt') if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise OptionError(f'{path}: {where}{key} = {root!r} is not an LMDB folder (no {" / ".join(missing)}); '
                              'make it with BasicSR\'s scripts/data_preparation/create_lmdb.py, or use '
                              'io_backend: {type: disk} for an image folder.')
        try:
            lines = [line for line in open(meta, encoding='utf-8').read().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise OptionError(f'{path}: {meta} cannot be read as text ({e}); re-create the LMDB.') from None
        if not lines:
            raise OptionError(f'{path}: {meta} is empty: the LMDB lists no images; re-create it.')


def _check_dataroots(dataset, where, path):
    from segsr_basicsr.data.prep import prep_command
    for key, value in dataset.items():
        if not (key.startswith('dataroot') or key == 'meta_info_file') or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, str):
                raise OptionError(f'{path}: {where}{key} must be a path, got {v!r}.')
            if not os.path.exists(os.path.expanduser(v)):
                raise OptionError(f'{path}: {where}{key} = {v!r} does not exist (looked in {os.getcwd()} for a '
                                  f'relative path); {prep_command(v)}.')


def check_dataset(dataset, phase, path, scale, is_train):
    """One ``datasets:<phase>`` section: phase name, type, dataroots, counts, gt_size, max_value, backend."""
    from basicsr.utils.registry import DATASET_REGISTRY
    where = f'datasets:{phase}:'
    if not isinstance(dataset, dict):
        raise OptionError(f'{path}: {where[:-1]!r} must be a section, got {dataset!r}.')
    kind, allowed = phase.split('_')[0], ('train', 'val') if is_train else ('test', 'val')
    if kind not in allowed:
        raise OptionError(f'{path}: dataset phase {phase!r} is not recognised{suggest(kind, allowed)}; use '
                          f'{" / ".join(a + "[_name]" for a in allowed)}.')
    _require(dataset, 'name', str, where, path)
    _registered(DATASET_REGISTRY, _require(dataset, 'type', str, where, path), 'dataset', path, where + 'type')
    if kind == 'train':
        _positive_int(dataset, 'batch_size_per_gpu', where, path)
        _positive_int(dataset, 'num_worker_per_gpu', where, path, minimum=0)
        gt_size = dataset.get('gt_size')
        if gt_size is None and _reads_gt_size(DATASET_REGISTRY.get(dataset['type'])):
            raise OptionError(f'{path}: missing key {where}gt_size: {dataset["type"]} crops training patches of '
                              f'gt_size x gt_size GT pixels; set it (a multiple of scale {scale}, e.g. {16 * (scale or 4)}).')
        if gt_size is not None and scale and _whole(gt_size, f'{path}: {where}gt_size', 1) % scale:
            raise OptionError(f'{path}: {where}gt_size {gt_size} is not a multiple of scale {scale}; the LR '
                              f'patch would not match the HR patch. Use {gt_size - gt_size % scale or scale}.')
    for key in ('use_hflip', 'use_rot', 'use_shuffle', 'pin_memory'):
        _flag(dataset, key, f'{path}: {where}')
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    choice(backend, ('disk', 'lmdb', 'memcached'), f'{path}: {where}io_backend:type')
    max_value = dataset.get('max_value')
    if max_value is not None and (isinstance(max_value, bool) or not isinstance(max_value, (int, float))
                                  or not max_value > 0):
        raise OptionError(f'{path}: {where}max_value must be a number > 0 (the value that maps to white, e.g. '
                          f'65535 or 4095), got {max_value!r}.')
    roots = [dataset.get('dataroot_gt'), dataset.get('dataroot_lq')]
    if backend == 'disk' and any(isinstance(r, str) and r.rstrip('/').endswith('.lmdb') for r in roots):
        raise OptionError(f'{path}: {where[:-1]} points at an LMDB with io_backend disk; '
                          'set io_backend: {type: lmdb}.')
    if dataset['type'] == 'PairedImageDataset' and not scale:
        raise OptionError(f"{path}: {where[:-1]} is a PairedImageDataset but the option file has no 'scale'.")
    _check_dataroots(dataset, where, path)
    if backend == 'lmdb':
        _check_lmdb(dataset, where, path)


def validate_options(opt, path, is_train=True):
    """The whole option pass (before any work): top level, network_g, path, datasets, train/logger, val."""
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

    from segsr_basicsr.archs.network_options import check_network_options

    name = _require(opt, 'name', str, '', path)
    if not name.strip() or name in ('.', '..') or '/' in name or os.sep in name:
        raise OptionError(f'{path}: name {name!r} must be a plain folder name (it becomes experiments/<name> and '
                          'results/<name>): no slashes, not empty, not . or ..')
    seed = opt.get('manual_seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise OptionError(f'{path}: manual_seed must be an integer >= 0 or ~ (random), got {seed!r}.')
    for key in ('strict_load_g', 'strict_load_d'):
        _flag(opt.get('path') or {}, key, f'{path}: path:')
    _registered(MODEL_REGISTRY, _require(opt, 'model_type', str, '', path), 'model', path, 'model_type')
    scale = _positive_int(opt, 'scale', '', path) if 'scale' in opt else None
    network = _require(opt, 'network_g', dict, '', path)
    _registered(ARCH_REGISTRY, _require(network, 'type', str, 'network_g:', path), 'arch', path, 'network_g:type')
    check_network_options(network, scale, path)
    paths = _require(opt, 'path', dict, '', path, ' Add a "path:" section (it may be empty: path: {}).')
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
    return opt


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

