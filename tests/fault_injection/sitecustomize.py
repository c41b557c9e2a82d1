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

# ``SEGSR_TEST_SIGNAL=<NAME>`` with ``SEGSR_TEST_SIGNAL_AT=step:<iter> | validation:<iter> | save:<file>`` sends the
# signal to this process at that point (``SEGSR_TEST_SIGNAL_RANK``: only on that torchrun rank;
# ``SEGSR_TEST_SIGNAL_COUNT``: that many times in a row), to test the stop-on-signal path deterministically.
# ``SEGSR_TEST_SIGNAL_TO=launcher`` sends it to this rank's parent (torchrun) instead, ``job`` to the launcher's
# parent (the job script), as a scheduler does; this rank then waits there until the forwarded stop arrives.
SIGNAL_ENV = 'SEGSR_TEST_SIGNAL'

if os.environ.get(SIGNAL_ENV):
    import signal
    import time

    _sig = getattr(signal, os.environ[SIGNAL_ENV])
    _where, _, _what = os.environ.get('SEGSR_TEST_SIGNAL_AT', 'step:1').partition(':')
    _rank = os.environ.get('SEGSR_TEST_SIGNAL_RANK')
    _to = os.environ.get('SEGSR_TEST_SIGNAL_TO', 'self')

    def _target():
        if _to == 'self':
            return os.getpid()
        if _to == 'launcher':
            return os.getppid()
        with open(f'/proc/{os.getppid()}/stat') as f:  # 'job': field 4 (ppid) of the launcher's stat line
            return int(f.read().rsplit(')', 1)[1].split()[1])

    def _wait_for_the_forwarded_stop():
        from segsr_basicsr.training.stop import STOP
        end = time.monotonic() + 60
        while not STOP.requested and time.monotonic() < end:  # segsr-infer's handler exits from this sleep
            time.sleep(0.01)

    def _send(label):
        if _rank is not None and os.environ.get('RANK', '0') != _rank:
            return
        for _ in range(int(os.environ.get('SEGSR_TEST_SIGNAL_COUNT', '1'))):
            print(f'[{SIGNAL_ENV}] {_sig.name} to {_to} at {label}', flush=True)
            os.kill(_target(), _sig)
        if _to != 'self':
            _wait_for_the_forwarded_stop()

    from segsr_basicsr.models.segsr_model import SeGSRModel

    if _where == 'step':
        _step = SeGSRModel.optimize_parameters

        def _step_with_signal(self, current_iter):
            if current_iter == int(_what):
                _send(f'step {current_iter}')  # before the step: the signal lands mid-iteration
            return _step(self, current_iter)

        SeGSRModel.optimize_parameters = _step_with_signal
    elif _where == 'validation':
        _validate = SeGSRModel.nondist_validation

        def _validate_with_signal(self, dataloader, current_iter, tb_logger, save_img):
            if current_iter == int(_what):
                _send(f'validation {current_iter}')
            return _validate(self, dataloader, current_iter, tb_logger, save_img)

        SeGSRModel.nondist_validation = _validate_with_signal
    elif _where == 'save':
        import segsr_basicsr.io.atomic as atomic_for_signal

        _commit_before = atomic_for_signal._commit

        def _commit_with_signal(tmp, path):
            if os.path.basename(path) == _what:
                _send(f'save of {path}')
            _commit_before(tmp, path)

        atomic_for_signal._commit = _commit_with_signal
