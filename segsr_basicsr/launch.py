"""torchrun that keeps the stop contract: ``python -m segsr_basicsr.launch <torchrun's arguments>``.

A scheduler signals the job step, which is torchrun. torchrun forwards the signal to every rank, waits
for them (``--shutdown_timeout``, default 30 s, then SIGKILL) and exits 1 however the ranks ended, so a
job script cannot tell "stopped, saved, requeue me" (every rank exits 75) from a crash. This runs
torchrun's own ``main`` in this process, the same arguments and the same behaviour, with
``SEGSR_STOP_DIR`` pointing at a fresh folder where each rank that stops with its work saved leaves a
record (:func:`segsr_basicsr.utils.dist.record_stop`). It exits 75 when torchrun was signalled and a
rank left a record, or when every failed rank exited 75 (a rank signalled directly); otherwise it ends
exactly as torchrun does (0, or torchrun's error and 1). docs/contract.md#exit-codes.
"""
import os
import shutil
import sys
import tempfile

from segsr_basicsr.training.stop import STOP_EXIT_CODE
from segsr_basicsr.utils.dist import STOP_DIR_ENV, stop_records

PROG = 'segsr-launch'


def _stop_folder():
    """(folder, ours): ``$SEGSR_STOP_DIR`` emptied of older records when the user set it, else a new folder."""
    given = os.environ.get(STOP_DIR_ENV)
    if given:
        for name in stop_records(given):
            os.unlink(os.path.join(given, name))
        return given, False
    folder = tempfile.mkdtemp(prefix='segsr-stop-')
    os.environ[STOP_DIR_ENV] = folder  # torchrun's ranks inherit this environment
    return folder, True


def _stopped(records, how):
    """The line that says the job stopped with its work saved, then exit 75."""
    lines = '; '.join(f'{name}: {line}' for name, line in records.items())
    print(f'{PROG}: {how}; {lines}. Exit code {STOP_EXIT_CODE}: requeue, or run the same command again.',
          file=sys.stderr, flush=True)
    raise SystemExit(STOP_EXIT_CODE)


def main(argv=None):
    """torchrun's ``main(argv)``; a saved stop exits 75 (see the module docstring)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    argv = sys.argv[1:] if argv is None else list(argv)
    folder, ours = _stop_folder()
    try:
        torchrun(argv)
    except SignalException as e:
        records = stop_records(folder)
        if not records:  # the ranks did not stop cleanly (killed before saving, or not started): a failure
            raise
        _stopped(records, f'{e.sigval.name} to the launcher was forwarded to the ranks')
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if codes != {STOP_EXIT_CODE}:
            raise
        _stopped(stop_records(folder) or {'ranks': f'exit code {STOP_EXIT_CODE}'}, 'the ranks stopped on a signal')
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
    main()
