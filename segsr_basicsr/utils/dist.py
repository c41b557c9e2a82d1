"""Small process-group helpers shared by the model and the entry points; the stop records a launcher reads."""
import datetime
import os
from pathlib import Path

#: process-group timeout (seconds) for --launcher pytorch / slurm
DIST_TIMEOUT_ENV = 'SEGSR_DIST_TIMEOUT'
DEFAULT_DIST_TIMEOUT = 3 * 3600
#: a folder where each rank that stops on a signal with its work saved leaves ``rank<RANK>`` (docs/contract.md)
STOP_DIR_ENV = 'SEGSR_STOP_DIR'


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


def patch_dist():
    """BasicSR's init_dist('pytorch' | 'slurm') with gloo on CPU-only machines and the long timeout (idempotent)."""
    import basicsr.utils.dist_util as dist_util

    def make_init(orig):

        def _init_dist_pytorch(backend, **kwargs):
            """nccl on CUDA (basicsr's own code), gloo on a CPU-only machine; long timeout either way."""
            import torch
            import torch.distributed as dist
            kwargs.setdefault('timeout', dist_timeout())
            if torch.cuda.is_available() and backend == 'nccl':
                return orig(backend, **kwargs)
            dist.init_process_group(backend='gloo', **kwargs)

        return _init_dist_pytorch

    def make_slurm(orig):

        def _init_dist_slurm(backend, port=None):
            """basicsr's SLURM setup with the long timeout (it passed none); gloo and no set_device without CUDA."""
            import subprocess

            import torch
            import torch.distributed as dist
            proc_id, ntasks = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
            num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if num_gpus:
                torch.cuda.set_device(proc_id % num_gpus)
            else:
                backend = 'gloo'
            addr = subprocess.getoutput(f"scontrol show hostname {os.environ['SLURM_NODELIST']} | head -n1")
            if port is not None:
                os.environ['MASTER_PORT'] = str(port)
            os.environ.setdefault('MASTER_PORT', '29500')
            local = proc_id % num_gpus if num_gpus else int(os.environ.get('SLURM_LOCALID', 0))
            os.environ.update(MASTER_ADDR=addr, WORLD_SIZE=str(ntasks), LOCAL_RANK=str(local), RANK=str(proc_id))
            dist.init_process_group(backend=backend, timeout=dist_timeout())

        return _init_dist_slurm

    from segsr_basicsr.compat import patch
    patch(dist_util, '_init_dist_pytorch', make_init)
    patch(dist_util, '_init_dist_slurm', make_slurm)


def init_process_group(launcher='auto'):
    """(rank, world, local rank) for an entry point: ``auto`` treats a torchrun job (TORCHELASTIC_RUN_ID set)
    as ``pytorch``, anything else as one process; ``pytorch`` reads RANK/WORLD_SIZE/MASTER_ADDR, ``slurm``
    SLURM_PROCID/NTASKS/NODELIST, as training does (nccl on CUDA, gloo on CPU, SEGSR_DIST_TIMEOUT)."""
    import torch.distributed as dist
    if launcher == 'auto':
        launcher = 'pytorch' if 'TORCHELASTIC_RUN_ID' in os.environ else 'none'
    if not dist.is_initialized() and launcher != 'none':
        world = int(os.environ.get('SLURM_NTASKS' if launcher == 'slurm' else 'WORLD_SIZE', '1'))
        if world > 1:
            from basicsr.utils.dist_util import init_dist
            patch_dist()
            init_dist(launcher)
    if dist_ready():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', '0'))
    return 0, 1, 0


def rank_device(name, world, local_rank):
    """Under many ranks each runs on its own GPU (LOCAL_RANK), or on the CPU."""
    import torch
    if world > 1 and name in ('auto', 'cuda') and torch.cuda.is_available():
        return f'cuda:{local_rank}'
    return name


def end_process_group():
    """Destroy the process group if one is up (an entry point's last step)."""
    if dist_ready():
        import torch.distributed as dist
        dist.destroy_process_group()


def record_stop(code: int, what: str):
    """Leave ``$SEGSR_STOP_DIR/rank<RANK>`` (``<code> <what>``) when that variable is set: this rank stopped on
    a signal after its work was saved. torchrun, signalled itself, exits 1 whatever its ranks did; this
    file is how ``segsr_basicsr.launch`` (or a job script around bare torchrun) tells "stopped" from "failed"."""
    folder = os.environ.get(STOP_DIR_ENV)
    if not folder:
        return
    from segsr_basicsr.io.atomic import atomic_write
    path = Path(folder) / f'rank{os.environ.get("RANK", "0")}'
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(f'{code} {what}\n'), durable=False)


def stop_records(folder) -> dict:
    """``{rank file name: its line}`` of the stop records in ``folder`` (see :func:`record_stop`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in sorted(folder.glob('rank*')) if p.is_file()}
