"""The ``datasets`` sections of the option contract: phase, type, the keys BasicSR's dataset reads, counts,
patch size, io_backend (LMDB folders with their meta_info.txt), dataroots that exist.

Part of :func:`segsr_basicsr.options.validate_options`; every refusal is one :class:`OptionError` line.
"""
import os

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest
from segsr_basicsr.options.keys import _flag, _positive_int, _registered, _require
from segsr_basicsr.options.values import _whole, choice


#: keys BasicSR's datasets may read without a default (``opt['key']``); for the training phase, the patch keys
_READ_KEYS, _TRAIN_READ_KEYS = ('dataroot_gt', 'dataroot_lq', 'io_backend'), ('gt_size', 'use_hflip', 'use_rot')


def _keys_read(dataset_class, train) -> list:
    """Which of :data:`_READ_KEYS` a dataset class reads as ``opt['key']`` (a KeyError mid-run when missing)."""
    import inspect
    try:
        source = inspect.getsource(dataset_class)
    except (OSError, TypeError):
        return []
    return [k for k in _READ_KEYS + (_TRAIN_READ_KEYS if train else ()) if f"opt['{k}']" in source]


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
    for key in _keys_read(DATASET_REGISTRY.get(dataset['type']), kind == 'train'):
        if dataset.get(key) is None:
            example = f'a multiple of scale {scale}, e.g. {16 * (scale or 4)}' if key == 'gt_size' else \
                '{type: disk}' if key == 'io_backend' else 'true or false' if key.startswith('use_') else 'a folder'
            raise OptionError(f'{path}: missing key {where + key!r}: {dataset["type"]} reads it ({example}).')
    if kind == 'train':
        _positive_int(dataset, 'batch_size_per_gpu', where, path)
        _positive_int(dataset, 'num_worker_per_gpu', where, path, minimum=0)
        gt_size = dataset.get('gt_size')
        if 'dataset_enlarge_ratio' in dataset:  # BasicSR's default (1) is for a missing key, not for ~
            _positive_int(dataset, 'dataset_enlarge_ratio', where, path)
        choice(dataset.get('prefetch_mode'), (None, 'cpu', 'cuda'), f'{path}: {where}prefetch_mode')
        if gt_size is not None and scale and _whole(gt_size, f'{path}: {where}gt_size', 1) % scale:
            raise OptionError(f'{path}: {where}gt_size {gt_size} is not a multiple of scale {scale}; the LR '
                              f'patch would not match the HR patch. Use {gt_size - gt_size % scale or scale}.')
    for key in ('use_hflip', 'use_rot', 'use_shuffle', 'pin_memory'):
        _flag(dataset, key, f'{path}: {where}')
    io_backend = dataset.get('io_backend')
    if io_backend is not None and (not isinstance(io_backend, dict) or not isinstance(io_backend.get('type'), str)):
        raise OptionError(f'{path}: {where}io_backend must be a section with a type, like {{type: disk}}, got '
                          f'{io_backend!r}.')
    backend = (io_backend or {}).get('type', 'disk')
    choice(backend, ('disk', 'lmdb', 'memcached'), f'{path}: {where}io_backend:type')
    extra = [k for k in (io_backend or {}) if k != 'type']
    if backend == 'disk' and extra:  # BasicSR's disk backend takes no options: it would fail at the first image
        raise OptionError(f'{path}: {where}io_backend:{extra[0]} is not an option of the disk backend '
                          '(it takes only type: disk).')
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
