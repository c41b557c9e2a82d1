"""Crash-safe checkpoint files and safe loading.

A checkpoint is first written to a hidden temporary file in the same folder,
flushed to disk, then renamed over the final name (``os.replace`` is atomic on
POSIX and Windows). A kill at any moment therefore leaves either the old file
or the new one, never a truncated one. Temporary names start with a dot and end
in ``.tmp``, so neither basicsr's ``scandir`` nor a ``*.pth`` / ``*.state`` glob
ever picks them up.
"""
import os
import random
import time

import numpy as np
import torch

__all__ = ['CheckpointError', 'atomic_save', 'load_checkpoint', 'get_rng_states', 'set_rng_states', 'TMP_SUFFIX']

TMP_SUFFIX = '.tmp'

#: test-only hook, so tests can kill a run in the middle of writing a checkpoint:
#: ``SEGSR_TEST_SAVE_HOOK=kill:<name>`` SIGKILLs the process while ``<name>`` (a file name such as ``net_g_4.pth``
#: or ``4.state``) sits in its temporary file, not yet renamed; ``sleep:<name>:<seconds>`` sleeps there instead.
_HOOK_ENV = 'SEGSR_TEST_SAVE_HOOK'


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, truncated or unsafe."""


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _test_hook(path, f):
    spec = os.environ.get(_HOOK_ENV)
    if not spec:
        return
    action, _, rest = spec.partition(':')
    name, _, seconds = rest.partition(':')
    if os.path.basename(path) != name:
        return
    f.flush()
    os.fsync(f.fileno())
    print(f'[{_HOOK_ENV}] {action} while writing {path}', flush=True)
    if action == 'kill':
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == 'sleep':
        time.sleep(float(seconds or 60))


def _remove_stale_temps(folder, basename):
    """Temporary files of ``basename`` left by a killed run (any pid) are garbage once the real file is in place."""
    prefix = f'.{basename}.'
    for entry in os.listdir(folder):
        if entry.startswith(prefix) and entry.endswith(TMP_SUFFIX) and entry[len(prefix):-len(TMP_SUFFIX)].isdigit():
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def atomic_save(obj, path):
    """torch.save ``obj`` to ``path`` so that ``path`` is always either the old or the new complete file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}{TMP_SUFFIX}')
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            _test_hook(path, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    _remove_stale_temps(folder, os.path.basename(path))
    return path


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Raises CheckpointError naming the file for a missing, truncated or unsafe (pickled code) file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint file not found: {path}. Check the path in the option file '
                              '(path: pretrain_network_g / resume_state) or the --model argument.')
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
