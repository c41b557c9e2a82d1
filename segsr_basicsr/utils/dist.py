"""Small process-group helpers shared by the model and the entry points."""
import datetime
import os

#: process-group timeout (seconds) for --launcher pytorch / slurm
DIST_TIMEOUT_ENV = 'SEGSR_DIST_TIMEOUT'
DEFAULT_DIST_TIMEOUT = 3 * 3600


def dist_ready() -> bool:
    """True inside an initialised process group."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (all ranks take part); ``[obj]`` without a process group."""
    if not dist_ready():
        return [obj]
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def dist_timeout() -> datetime.timedelta:
    """Process-group timeout: ``SEGSR_DIST_TIMEOUT`` seconds (default 3 h, so a long rank-0 validation fits)."""
    from segsr_basicsr.errors import OptionError
    raw = os.environ.get(DIST_TIMEOUT_ENV, '')
    try:
        seconds = float(raw) if raw else DEFAULT_DIST_TIMEOUT
    except ValueError:
        raise OptionError(f'{DIST_TIMEOUT_ENV}={raw!r} is not a number of seconds, e.g. {DIST_TIMEOUT_ENV}=10800.')
    if seconds <= 0:
        raise OptionError(f'{DIST_TIMEOUT_ENV}={raw!r} must be > 0 seconds.')
    return datetime.timedelta(seconds=seconds)
