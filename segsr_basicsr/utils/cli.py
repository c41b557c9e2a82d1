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


def user_error_line(prog: str, err: BaseException) -> str:
    """``prog: error: message`` on one line (messages never need more)."""
    text = ' '.join(str(err).split()) or type(err).__name__
    return f'{prog}: error: {text}'


@contextmanager
def exit_on_user_error(prog: str):
    """Turn a :class:`SeGSRError` raised inside the block into one stderr line and ``SystemExit(2)``."""
    try:
        yield
    except SeGSRError as e:
        if debug_enabled():
            raise
        print(user_error_line(prog, e), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _check_args(argv, is_train):
    from segsr_basicsr.compat import split_argv
    from segsr_basicsr.utils.options import load_option_file, validate_options
    rest, overrides = split_argv(list(argv))
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    known, _ = parser.parse_known_args(rest)
    if known.opt is None:
        return  # basicsr's own argparse prints the usage
    opt = load_option_file(known.opt, overrides)
    validate_options(opt, known.opt, is_train=is_train)


def run(pipeline, is_train, argv=None, prog='segsr'):
    """Validate the option file, patch BasicSR's train loop (:func:`segsr_basicsr.compat.patch_train_loop`),
    then ``pipeline(cwd)``, so experiments/, tb_logger/ and results/ land in the current directory."""
    from segsr_basicsr.compat import patch_train_loop
    saved = sys.argv
    if argv is not None:  # basicsr's parser reads sys.argv
        sys.argv = [sys.argv[0]] + list(argv)
    try:
        with exit_on_user_error(prog):
            _check_args(sys.argv[1:], is_train)
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
