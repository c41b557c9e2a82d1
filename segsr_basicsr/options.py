"""The one option contract: every user-facing key of an option file, read and checked once.

:func:`validate_options` runs before BasicSR builds anything or writes a file (``segsr_basicsr.train``
/ ``.test`` call it first); an error names the key path, the value, what is allowed and, for a
misspelt key or value, the nearest valid one. The same parsers (:func:`tile_spec`, :func:`parse_amp`,
...) serve the model and the command line, so a rule lives in one place. Files and folders named by
options are checked in :mod:`segsr_basicsr.utils.preflight` (inputs) after this pass.
"""
import difflib
import os
import signal
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest

__all__ = ['validate_options', 'tile_spec',
           'check_tile', 'parse_amp', 'parse_tf32', 'parse_finite_check_freq', 'parse_grad_clip',
           'parse_guidance_lr_mult', 'choice', 'AMP_DTYPES']


#: the one default overlap between tiles (LR pixels), at most a quarter of the tile
DEFAULT_OVERLAP = 32


def default_overlap(tile: int) -> int:
    """Overlap used when none is given: :data:`DEFAULT_OVERLAP`, at most a quarter of ``tile``."""
    return min(DEFAULT_OVERLAP, int(tile) // 4)


#: ``tile: auto`` (the default of segsr-infer and the API): streamed rasters in tiles of this many LR pixels
#: (memory set by the tile, not the scene), images read whole in one pass
RASTER_TILE = 256


@dataclass(frozen=True)
class TileSpec:
    """How to tile: ``size`` LR pixels (None: the whole image in one pass; 'auto': see
    :meth:`for_input`), ``overlap`` (None: the default), ``margin`` (None: overlap // 4) and ``batch``
    tiles per forward pass."""
    size: Optional[Union[int, str]] = None
    overlap: Optional[int] = None
    margin: Optional[int] = None
    batch: int = 1

    def for_input(self, streamed: bool) -> 'TileSpec':
        """'auto' made concrete: :data:`RASTER_TILE` for a streamed raster, the whole image otherwise."""
        if self.size != 'auto':
            return self
        return TileSpec(RASTER_TILE, self.overlap, self.margin, self.batch) if streamed else \
            TileSpec(None, None, None, self.batch)

    def resolve(self, h: int, w: int) -> Tuple[int, int, int]:
        """(tile, overlap, margin) for an h x w image; the whole image is one tile of max(h, w)."""
        if not self.size:
            return max(h, w), 0, 0
        overlap = default_overlap(self.size) if self.overlap is None else self.overlap
        margin = overlap // 4 if self.margin is None else self.margin
        return self.size, overlap, margin


DEFAULT_STOP_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGUSR1', 'SIGUSR2')


def signal_numbers(names, where='train:stop_signals'):
    """['SIGTERM', 'USR1', 15, ...] -> signal numbers; an unknown name is an OptionError naming it."""
    if names is None:
        names = DEFAULT_STOP_SIGNALS
    if not isinstance(names, (list, tuple)):
        raise OptionError(f'{where} must be a list of signal names, e.g. [SIGTERM, SIGUSR1], got {names!r}.')
    known = {s.name: s for s in signal.Signals}
    numbers = []
    for name in names:
        text = str(name).upper()
        text = text if text.startswith('SIG') or text.isdigit() else f'SIG{text}'
        sig = known.get(text) or (signal.Signals(int(text)) if text.isdigit() and int(text) in
                                  {s.value for s in signal.Signals} else None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise OptionError(f'{where}: {name!r} is not a signal a process can catch{suggest(text, known)}.')
        numbers.append(int(sig))
    return numbers


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
def choice(value, allowed, where):
    """``value`` if it is one of ``allowed``, else OptionError naming the nearest allowed value."""
    if value in allowed:
        return value
    shown = ', '.join(str(a) for a in allowed)
    raise OptionError(f'{where} must be one of {shown}, got {value!r}{suggest(value, allowed)}.')


def _whole(value, where, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value) \
            or value < minimum:
        raise OptionError(f'{where} must be a whole number >= {minimum}, got {value!r}.')
    return int(value)


TILE_KEYS = ('size', 'overlap', 'margin', 'batch')


def tile_spec(value, where='val:tile') -> TileSpec:
    """``val.tile`` (an int, ``{size, overlap, margin, batch}``, or ~), the API's or the CLI's tile ('auto',
    an int, 0 / None: whole image) -> TileSpec, checked here once for every entry point."""
    if not isinstance(value, dict):
        value = {'size': value}
    unknown = [k for k in value if k not in TILE_KEYS]
    if unknown:
        raise OptionError(f'{where}: unknown key {unknown[0]!r}{suggest(unknown[0], TILE_KEYS)}; '
                          'write {size: 256, overlap: 32}.')
    if value.get('size') is None or value.get('size') is False or value.get('size') == 0:
        return TileSpec(batch=_whole(value.get('batch', 1), f'{where} batch', 1))  # 0 / ~: the whole image
    auto = value['size'] == 'auto'
    size = RASTER_TILE if auto else _whole(value['size'], f'{where} size', 1)
    overlap = value.get('overlap')
    overlap = default_overlap(size) if overlap is None else _whole(overlap, f'{where} overlap', 0)
    if overlap >= size:
        raise OptionError(f'{where} overlap {overlap} must be smaller than the tile size {size}.')
    margin = value.get('margin')
    if margin is not None and (_whole(margin, f'{where} margin', 0) * 2 > overlap):
        raise OptionError(f'{where} margin must be an integer between 0 and overlap/2, got {margin!r}.')
    batch = _whole(value.get('batch', 1), f'{where} batch', 1)
    return TileSpec('auto' if auto else size, None if auto and value.get('overlap') is None else overlap, margin, batch)


def check_tile(spec: TileSpec, window: int, origin: str, window_name='the network window'):
    """A tile must be a multiple of the network's window (else each tile is padded, the window grid
    shifts from tile to tile and the overlap is lost: visible seams), and leave a step after the overlap."""
    if not spec.size:
        return
    size, overlap = spec.size, spec.overlap if spec.overlap is not None else default_overlap(spec.size)
    if size % window:
        raise OptionError(f'{origin} size {size} is not a multiple of {window_name} {window}; '
                          f'it would be rounded up and the overlap lost. Use {window * max(1, round(size / window))}.')
    if not overlap + window <= size:
        raise OptionError(f'{origin} overlap {overlap} leaves no step on a tile of {size} with window '
                          f'{window}; need overlap <= size - window ({size - window}).')


#: autocast dtypes by option value; None/none/fp32 mean full precision
AMP_DTYPES = {'bf16': 'bfloat16', 'bfloat16': 'bfloat16', 'fp16': 'float16', 'float16': 'float16'}
_NO_AMP = (None, False, 'none', 'None', 'fp32', 'float32')


def parse_amp(value, where: str):
    """'bf16' | 'fp16' | None/'none'/False -> torch dtype or None."""
    import torch
    if value in _NO_AMP:
        return None
    return getattr(torch, AMP_DTYPES[choice(value, tuple(AMP_DTYPES) + ('none', ), where)])


def parse_tf32(value, device_type: str) -> bool:
    """``train.tf32``: true/false, or ~ (default): on for CUDA (Ampere and newer run fp32 matmuls on tensor cores)."""
    if value is None:
        return device_type == 'cuda'
    if not isinstance(value, bool):
        raise OptionError(f'train.tf32 must be true, false or ~ (on for CUDA), got {value!r}')
    return value


def parse_finite_check_freq(value, device_type: str, print_freq) -> int:
    """``train.finite_check_freq``: host checks of the non-finite flag every N iterations (besides saves/validation).

    Default: every iteration on CPU (free there), every ``logger.print_freq`` on CUDA (those steps sync anyway).
    """
    if value is None:
        if device_type != 'cuda':
            return 1
        return int(print_freq) if isinstance(print_freq, (int, float)) and print_freq >= 1 else 100
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f'train.finite_check_freq must be an integer >= 1 (iterations), got {value!r}')
    return value


def parse_grad_clip(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise OptionError(f'train.grad_clip must be a positive max gradient norm or ~, got {value!r}')
    return value


def parse_guidance_lr_mult(value):
    value = 1.0 if value is None else value
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
        raise OptionError(f'train.guidance_lr_mult must be a number >= 0, got {value!r}')
    return value


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

