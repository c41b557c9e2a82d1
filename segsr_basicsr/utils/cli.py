"""Shared front of ``segsr_basicsr.train`` / ``.test``: check the option file, then hand over to basicsr."""
import argparse
import os
import sys

from segsr_basicsr.utils.checkpoint import CheckpointError
from segsr_basicsr.utils.options import OptionError, load_option_file, validate_options


def _check_args(argv, is_train):
    from segsr_basicsr.compat import split_argv
    rest, overrides = split_argv(list(argv))
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    known, _ = parser.parse_known_args(rest)
    if known.opt is None:
        return  # basicsr's own argparse prints the usage
    opt = load_option_file(known.opt, overrides)
    validate_options(opt, known.opt, is_train=is_train)


def run(pipeline, is_train, argv=None, prog='segsr'):
    """Validate, then ``pipeline(cwd)`` so experiments/, tb_logger/ and results/ land in the current directory."""
    saved = sys.argv
    if argv is not None:  # basicsr's parser reads sys.argv
        sys.argv = [sys.argv[0]] + list(argv)
    try:
        _check_args(sys.argv[1:], is_train)
        pipeline(os.getcwd())
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():  # one line per process of a torchrun job
            print(f'{prog}: rank {dist.get_rank()}/{dist.get_world_size()} finished', flush=True)
    except (OptionError, CheckpointError) as e:
        print(f'{prog}: error: {e}', file=sys.stderr, flush=True)
        raise SystemExit(2)
    finally:
        sys.argv = saved
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
