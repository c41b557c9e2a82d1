"""The front of every command: one exit convention (docs/contract.md#exit-codes).

A user error (:class:`~segsr_basicsr.errors.SeGSRError`) ends a command with one line on stderr,
``<prog>: error: <what was wrong and what to do>``, and exit code 2, never a traceback.
``SEGSR_DEBUG=1`` re-raises instead, for the full traceback. A stop signal ends a command that keeps
nothing half-done (:func:`exit_on_stop_signals`) with :data:`STOP_EXIT_CODE`.
"""
import os
import signal
import sys
import threading
from contextlib import contextmanager

from segsr_basicsr.errors import SeGSRError

DEBUG_ENV = 'SEGSR_DEBUG'
#: exit code of a run stopped by a signal after saving (EX_TEMPFAIL: "try again"); docs/training.md
STOP_EXIT_CODE = 75


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, '') not in ('', '0')


_WORKER_MARK = 'Original Traceback (most recent call last):'
_ERRORS_MODULE = SeGSRError.__module__ + '.'


def worker_user_error(err: BaseException):
    """The one-line message of a :class:`SeGSRError` raised in a DataLoader worker, else None.

    torch re-raises a worker's exception in the main process as the same type (or RuntimeError when
    the type cannot be rebuilt) with the worker's whole traceback as the message; its last line is
    ``segsr_basicsr.errors.ImageError: <message>``.
    """
    text = str(err)
    if _WORKER_MARK not in text:
        return None
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    kind, sep, message = last.partition(': ')
    if sep and (isinstance(err, SeGSRError) or kind.startswith(_ERRORS_MODULE)):
        return message
    return None


def user_error_line(prog: str, err: BaseException) -> str:
    """``prog: error: message`` on one line (messages never need more)."""
    text = worker_user_error(err) or str(err)
    text = ' '.join(text.split()) or type(err).__name__
    return f'{prog}: error: {text}'


def warning_line(prog: str, message: str):
    """``prog: warning: message`` on stderr, once per job (rank 0 of a torchrun job only)."""
    if int(os.environ.get('RANK', '0') or 0) == 0:
        print(f'{prog}: warning: {" ".join(str(message).split())}', file=sys.stderr, flush=True)


@contextmanager
def exit_on_user_error(prog: str):
    """Turn a :class:`SeGSRError` raised inside the block (also one re-raised from a DataLoader worker)
    into one stderr line and ``SystemExit(2)``. In a torchrun job every rank that fails prints the line
    and exits 2, so the launcher stops the job instead of waiting on a collective."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - anything not a user error is re-raised untouched
        if debug_enabled() or not (isinstance(e, SeGSRError) or worker_user_error(e)):
            raise
        print(user_error_line(prog, e), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextmanager
def exit_on_stop_signals(prog: str, numbers, record):
    """Inside the block the stop signals ``numbers`` end the process at once with :data:`STOP_EXIT_CODE`, for
    a command whose outputs appear only complete (the same command then does what is missing);
    ``record()`` runs on the way out (a stop record for the launcher). The old handlers come back after."""

    def stop(signum, frame):
        for num in numbers:  # a repeated signal does not interrupt the way out
            signal.signal(num, signal.SIG_IGN)
        rank = os.environ.get('RANK')
        who = f' (rank {rank})' if rank is not None else ''
        print(f'{prog}: {signal.Signals(signum).name} received{who}: stopping; finished outputs are kept, the '
              f'same command finishes the job (exit code {STOP_EXIT_CODE}).', file=sys.stderr, flush=True)
        raise SystemExit(STOP_EXIT_CODE)

    main = threading.current_thread() is threading.main_thread()
    previous = {num: signal.signal(num, stop) for num in numbers} if main else {}
    try:
        yield
    except SystemExit as e:
        if e.code == STOP_EXIT_CODE:
            record()
        raise
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
