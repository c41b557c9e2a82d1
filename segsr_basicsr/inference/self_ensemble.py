"""Self-ensemble ("+" results in SR papers): the 8 flips/rotations of the input, each through the
whole network (so CLIP sees each view too), mapped back and averaged."""
from typing import Callable, List, Sequence, Union

import torch

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]

#: (transpose H/W, flip W, flip H) for each of the 8 dihedral transforms; index 0 is the identity
TRANSFORMS = [(bool(k & 4), bool(k & 1), bool(k & 2)) for k in range(8)]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform k of (..., H, W): transpose, then flip W, then flip H."""
    transpose, flip_w, flip_h = TRANSFORMS[k]
    if transpose:
        x = x.transpose(-1, -2)
    if flip_w:
        x = x.flip(-1)
    if flip_h:
        x = x.flip(-2)
    return x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` (the same steps in reverse order; each is its own inverse)."""
    transpose, flip_w, flip_h = TRANSFORMS[k]
    if flip_h:
        x = x.flip(-2)
    if flip_w:
        x = x.flip(-1)
    if transpose:
        x = x.transpose(-1, -2)
    return x


def self_ensemble(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor) -> Outputs:
    """Mean over the 8 transforms of ``inverse_k(fn(transform_k(x)))``, for (B, C, H, W) ``x``.

    ``fn`` may return one tensor or a tuple (SR, maps...); every output is on a grid that transforms
    with the input's (SR at H*s x W*s, maps at H x W), so each is mapped back and averaged in fp32.
    The result has the dtype of the first view's outputs.
    """
    total: List[torch.Tensor] = []
    single = False
    for k in range(8):
        out = fn(dihedral(x, k))
        single = torch.is_tensor(out)
        outs = [out] if single else list(out)
        back = [dihedral_inverse(o, k).float() for o in outs]
        if not total:
            total, dtypes = [b.clone() for b in back], [o.dtype for o in outs]
        else:
            for acc, b in zip(total, back):
                acc.add_(b)
    means = [(t / 8).to(d) for t, d in zip(total, dtypes)]
    return means[0] if single else tuple(means)
