"""Test-only fault injection, loaded into subprocesses by putting this folder on PYTHONPATH.

``SEGSR_TEST_SAVE_HOOK=kill:<name>`` SIGKILLs the process when the file ``<name>`` (e.g. ``net_g_4.pth``
or ``4.state``) is completely written to its temporary name but not yet renamed into place;
``sleep:<name>:<seconds>`` sleeps there instead. It wraps the one rename seam of
:func:`segsr_basicsr.io.atomic.atomic_write`; production code has no hook.
"""
import os

HOOK_ENV = 'SEGSR_TEST_SAVE_HOOK'

if os.environ.get(HOOK_ENV):
    import signal
    import time

    import segsr_basicsr.io.atomic as atomic

    _commit = atomic._commit

    def _commit_with_hook(tmp, path):
        action, _, rest = os.environ[HOOK_ENV].partition(':')
        name, _, seconds = rest.partition(':')
        if os.path.basename(path) == name:
            print(f'[{HOOK_ENV}] {action} while writing {path}', flush=True)
            if action == 'kill':
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == 'sleep':
                time.sleep(float(seconds or 60))
        _commit(tmp, path)

    atomic._commit = _commit_with_hook
