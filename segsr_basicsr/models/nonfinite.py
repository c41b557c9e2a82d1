"""Non-finite losses and gradients during training: noted on the device, reported with one clear error.

:class:`NonFiniteRecord` notes the first bad iteration without a host sync; :func:`raise_if_nonfinite`
reads it back on check steps (every ``train.finite_check_freq`` iterations and before saves) and stops
training before the optimizer step, all DDP ranks together.
"""
from typing import Dict, Optional

import torch


class NonFiniteRecord:
    """The first training iteration with a NaN/inf value (loss or gradient norm), kept on the device.

    :meth:`note` is a few tiny kernels and no host sync; reading ``iter``/``values`` back is a sync, so
    the model does it only on check steps.
    """

    def __init__(self):
        self.iter: Optional[torch.Tensor] = None  # 0-d int64 on the device, -1 while all was finite
        self.values: Dict[str, torch.Tensor] = {}  # 0-d float each: the values at ``iter``

    def note(self, current_iter: int, values: Dict[str, torch.Tensor]) -> None:
        vals = {k: v.detach().float().mean() for k, v in values.items()}
        bad = ~torch.isfinite(torch.stack(list(vals.values()))).all()
        if self.iter is None:
            self.iter = torch.full((), -1, dtype=torch.long, device=bad.device)
        first = bad & (self.iter < 0)
        self.iter.masked_fill_(first, current_iter)
        for k, v in vals.items():
            old = self.values.get(k)
            self.values[k] = v if old is None else torch.where(first, v, old)

    def flag(self, device: torch.device) -> torch.Tensor:
        """0-d float: 1. if a non-finite value was noted, else 0. (on the device, no sync)."""
        if self.iter is None:
            return torch.zeros((), device=device)
        return (self.iter >= 0).float()


def raise_if_nonfinite(record: NonFiniteRecord, what: str, current_iter: int, opt: dict, device, check_freq: int):
    """Raise before the optimizer step when ``record`` holds a NaN/inf (one host sync).

    Under DDP all ranks agree first (one scalar all-reduce on the same check steps), so they stop
    together instead of the healthy ranks hanging in the next gradient all-reduce.
    """
    flag = record.flag(device)
    local = flag.clone()
    if opt.get('dist'):
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not bool(flag):
        return
    models = opt['path'].get('models', 'experiments/<name>/models')
    advice = ('Check the data for NaNs, lower the learning rate, set train.grad_clip, or use train.amp: bf16 '
              'instead of fp16.')
    if not bool(local):
        raise FloatingPointError(
            f'Non-finite {what} on another rank by iteration {current_iter} (rank {opt.get("rank", 0)} '
            f'is finite). Training stopped before the optimizer step; the last saved checkpoint in {models} is '
            f'intact (resume from it with path.resume_state). {advice}')
    first = int(record.iter)
    values = ', '.join(f'{k}={v.item():.6g}' for k, v in record.values.items())
    if first == current_iter:
        raise FloatingPointError(
            f'Non-finite {what} at iteration {current_iter}: {values}. Training stopped before the optimizer '
            f'step: the network was not updated and the last saved checkpoint in {models} is intact (resume '
            f'from it with path.resume_state). {advice}')
    raise FloatingPointError(
        f'Non-finite {what} at iteration {first}: {values}, found at iteration {current_iter} (on '
        f'{device.type} the flag is read every {check_freq} iterations and before every save '
        f'and validation: train.finite_check_freq). Training stopped; nothing was saved after iteration '
        f'{first}, so the last saved checkpoint in {models} is intact (resume from it with '
        f'path.resume_state). {advice}')

