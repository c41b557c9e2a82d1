"""Checkpoints: saved atomically, loaded safely, one reader for every caller.

Saving goes through :func:`segsr_basicsr.io.atomic.atomic_write` (temporary sibling,
fsync, rename), so a kill at any moment leaves either the old file or the new one.
Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only,
never code. :func:`load_state_dict` is the one place that picks a ``params_ema`` /
``params`` entry and strips a DataParallel/DDP ``module.`` prefix (with torch's own
``consume_prefix_in_state_dict_if_present``).

``.safetensors`` files (no pickle at all) are read by the same :func:`load_checkpoint` and come back in
the same shape as a ``.pth``: ``{'params': state_dict, META_KEY: {network_g, scale}}``, the metadata
stored as JSON strings in the safetensors header (:func:`save_safetensors`).
"""
import json
import os
import random
from collections import OrderedDict

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from segsr_basicsr.errors import CheckpointError
from segsr_basicsr.io.atomic import atomic_write

__all__ = ['META_KEY', 'network_metadata', 'atomic_save', 'save_with_retry', 'load_checkpoint', 'save_safetensors', 'pick_state_dict', 'load_state_dict', 'strip_module_prefix',
           'get_rng_states', 'set_rng_states']

#: extra checkpoint entry: {'network_g': {...}, 'scale': s}; BasicSR's loaders read only params*
META_KEY = 'segsr_network'


def _plain(obj):
    """YAML/OrderedDict option trees -> dicts/lists/scalars that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def network_metadata(opt) -> dict:
    """``{META_KEY: {network_g, scale}}`` to add to a saved net_g checkpoint (self-describing)."""
    net_opt = _plain(opt['network_g'])
    scale = opt.get('scale') or net_opt.get('upscale')
    return {META_KEY: {'network_g': net_opt, 'scale': int(scale) if scale else None}}


#: entries tried, in order, when no param_key is given (BasicSR writes both; EMA is the better net)
DEFAULT_PARAM_KEYS = ('params_ema', 'params')


def atomic_save(obj, path):
    """torch.save ``obj`` to ``path`` so that ``path`` is always either the old or the new complete file."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(obj, f)

    return str(atomic_write(path, write))


def load_checkpoint(path, map_location='cpu'):
    """``torch.load(weights_only=True)`` (or safetensors for ``.safetensors``) with one-line
    :class:`CheckpointError` naming the file on failure."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f'Checkpoint {path} is a folder, not a file: name the .pth file in it (e.g. '
                              f'{os.path.join(path, "net_g_latest.pth")}).')
    if not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint file not found: {path}. Check the path in the option file '
                              '(path: pretrain_network_g / resume_state) or the --model argument.')
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        return _load_safetensors(path, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        blocked = [line for line in lines if 'GLOBAL' in line]
        if blocked:
            raise CheckpointError(
                f'Refusing to load {path}: it contains pickled Python objects, not only tensors ({blocked[0]}). '
                'Nothing in it was executed. Only use checkpoints from sources you trust; re-save a trusted file '
                'as a plain state_dict of tensors.') from None
        detail = next((line for line in lines if line.startswith('Unsupported')), lines[0] if lines else '')
        raise CheckpointError(f'Cannot read checkpoint {path}: {type(e).__name__}: {detail}. The file is truncated, '
                              'not a PyTorch checkpoint, or uses pickle features that safe loading refuses; use an '
                              'earlier checkpoint or re-create it with torch.save(state_dict).') from None


SAFETENSORS_SUFFIX = '.safetensors'


def save_safetensors(state, metadata, path):
    """Write ``state`` (name -> tensor) to a ``.safetensors`` file atomically, with ``metadata`` (the
    :data:`META_KEY` entry of :func:`network_metadata`: network options, scale) as JSON in the header.

    Tensors are copied to contiguous CPU memory first: safetensors refuses views sharing storage.
    """
    from safetensors.torch import save_file
    tensors = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in state.items()}
    header = {}
    if metadata is not None:
        header[META_KEY] = json.dumps(_plain(metadata))
    return str(atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header or None)))


def _load_safetensors(path, map_location='cpu'):
    """A ``.safetensors`` file as :func:`load_checkpoint` returns a ``.pth``, or one-line CheckpointError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    device = str(map_location) if map_location is not None else 'cpu'
    try:
        with safe_open(path, framework='pt') as f:
            header = f.metadata() or {}
        state = load_file(path, device=device)
        meta = json.loads(header[META_KEY]) if META_KEY in header else None
    except (SafetensorError, OSError, ValueError) as e:  # ValueError: a header that is not our JSON
        detail = ' '.join(str(e).split()) or type(e).__name__
        raise CheckpointError(f'Cannot read safetensors file {path}: {detail}. The file is truncated or not a '
                              'safetensors file; copy it again or re-create it with segsr-export --safetensors.'
                              ) from None
    ckpt = {'params': state}  # the tensors of one state_dict: what BasicSR calls params
    if meta is not None:
        ckpt[META_KEY] = meta
    return ckpt


def load_error_details(e: RuntimeError) -> str:
    """The first lines of torch's ``load_state_dict`` error (size mismatches), for a one-line message."""
    details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    more = f' (+{len(details) - 2} more)' if len(details) > 2 else ''
    return f'{"; ".join(details[:2])}{more}'


def strip_module_prefix(state_dict):
    """A copy of ``state_dict`` without the ``module.`` prefix that DataParallel/DDP add."""
    state = OrderedDict(state_dict)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    return state


def pick_state_dict(ckpt, param_key=None, source='checkpoint', hint='set path:param_key_g'):
    """The state_dict inside a loaded checkpoint: ``ckpt[param_key]``, else the first of
    ``params_ema`` / ``params`` present, else ``ckpt`` itself when it is a bare state_dict.

    Returns ``(state_dict without module. prefix, the key used or None)``.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{source}: is not a state_dict checkpoint (it holds a {type(ckpt).__name__}).')
    entries = [k for k, v in ckpt.items() if isinstance(v, dict)]
    if param_key is None:
        param_key = next((k for k in DEFAULT_PARAM_KEYS if isinstance(ckpt.get(k), dict)), None)
        if param_key is None:
            if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
                return strip_module_prefix(ckpt), None
            raise CheckpointError(f'{source}: has no params_ema/params entry and is not a bare state_dict '
                                  f'(entries: {", ".join(map(str, entries)) or "none"}); {hint} to one of them.')
    elif not isinstance(ckpt.get(param_key), dict):
        raise CheckpointError(f'{source}: has no {param_key!r} entry (it has: '
                              f'{", ".join(map(str, entries)) or "none"}); {hint} to one of them.')
    return strip_module_prefix(ckpt[param_key]), param_key


def load_state_dict(path, param_key=None, hint='set path:param_key_g'):
    """:func:`load_checkpoint` + :func:`pick_state_dict`: ``(state_dict, key used)``."""
    return pick_state_dict(load_checkpoint(path), param_key, source=os.fspath(path), hint=hint)


def get_rng_states():
    """The python, numpy, torch (and CUDA) RNG states, as tensors / plain types so weights_only can load them."""
    np_state = np.random.get_state()
    states = {
        'python': random.getstate(),
        'numpy': {
            'name': np_state[0],
            'keys': torch.from_numpy(np_state[1].astype(np.int64)),
            'pos': int(np_state[2]),
            'has_gauss': int(np_state[3]),
            'cached_gaussian': float(np_state[4]),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what :func:`get_rng_states` returned (CUDA only when the device count matches).

    Tensors may come back on a GPU (resume maps the state there): they are moved to the CPU first.
    """
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    n = states['numpy']
    np.random.set_state((n['name'], n['keys'].cpu().numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(states['torch'].cpu())
    cuda = states.get('cuda')
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_with_retry(obj, path, retries=3):
    """:func:`atomic_save`, retried (a network file system hiccup); then an OSError naming the file.

    BasicSR retries too, but then logs "Just ignore it" and trains on without the checkpoint.
    """
    import logging
    import time
    for attempt in range(retries):
        try:
            return atomic_save(obj, path)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            if attempt == retries - 1:
                raise OSError(f'Cannot save {path}: {e}. Free disk space or fix permissions of '
                              f'{os.path.dirname(path)}; earlier checkpoints are intact.') from e
            logging.getLogger('basicsr').warning(f'Save {path} failed ({e}), retrying.')
            time.sleep(1)
