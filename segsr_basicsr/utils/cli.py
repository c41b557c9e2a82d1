"""The front of every command: one exit convention, and the hand-over to BasicSR's pipelines.

A user error (:class:`~segsr_basicsr.errors.SeGSRError`) ends a command with one line on stderr,
``<prog>: error: <what was wrong and what to do>``, and exit code 2, never a traceback.
``SEGSR_DEBUG=1`` re-raises instead, for the full traceback.
"""
import argparse
import os
import sys
from contextlib import contextmanager

from segsr_basicsr.errors import SeGSRError

DEBUG_ENV = 'SEGSR_DEBUG'


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


def _check_args(argv, is_train, prog='segsr'):
    """The validation pass before any work (see :mod:`segsr_basicsr.utils.preflight`): the option file,
    every input it names, the output folder. Runs before BasicSR builds a network or writes a file."""
    from segsr_basicsr.compat import split_argv
    from segsr_basicsr.io.option_file import load_option_file, unknown_top_level_keys
    from segsr_basicsr.utils.options import validate_options
    from segsr_basicsr.utils.preflight import check_run
    rest, overrides = split_argv(list(argv))
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    known, _ = parser.parse_known_args(rest)
    if known.opt is None:
        return  # basicsr's own argparse prints the usage
    opt = load_option_file(known.opt, overrides)
    for message in unknown_top_level_keys(opt):
        warning_line(prog, f'{known.opt}: {message}')
    validate_options(opt, known.opt, is_train=is_train)
    check_run(opt, known.opt, is_train=is_train)


def run(pipeline, is_train, argv=None, prog='segsr'):
    """Validate the option file, patch BasicSR's train loop (:func:`segsr_basicsr.compat.patch_train_loop`),
    then ``pipeline(cwd)``, so experiments/, tb_logger/ and results/ land in the current directory."""
    from segsr_basicsr.compat import patch_train_loop
    saved = sys.argv
    if argv is not None:  # basicsr's parser reads sys.argv
        sys.argv = [sys.argv[0]] + list(argv)
    try:
        with exit_on_user_error(prog):
            _check_args(sys.argv[1:], is_train, prog)
            patch_train_loop()
            pipeline(os.getcwd())
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():  # one line per process of a torchrun job
            print(f'{prog}: rank {dist.get_rank()}/{dist.get_world_size()} finished', flush=True)
    finally:
        sys.argv = saved
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
