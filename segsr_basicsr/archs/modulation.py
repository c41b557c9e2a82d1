"""SeG-SR LMM: modulate the features after an SR unit with its semantic map."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segsr_basicsr.errors import OptionError

#: 'zero': the conv producing gamma/beta starts at zero, so at step 0 the LMM is LN(F) (guidance starts where the
#: backbone is); 'default': PyTorch's default conv init, as the official code (gamma std ~0.7 with tau = 100 maps)
MODULATION_INITS = ('zero', 'default')


class SemanticModulation(nn.Module):
    """F <- LN(F) * (1 + gamma(S)) + beta(S).

    gamma/beta: 3x3 conv E -> 128, ReLU, then two 3x3 convs 128 -> C (computed as one 128 -> 2C conv,
    the same thing in one call).  ``feat`` is (B, H*W, C) for layout 'tokens' or (B, C, H, W) for
    'image'; ``semantic_map`` is (B, E, H, W) on the same grid.  ``init``: one of MODULATION_INITS.
    """

    def __init__(self, channels: int, map_channels: int = 1, hidden: int = 128, init: str = 'zero'):
        super().__init__()
        self.channels = channels
        self.norm = nn.LayerNorm(channels)
        self.shared = nn.Sequential(nn.Conv2d(map_channels, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.to_gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, 1, 1)
        if init not in MODULATION_INITS:
            raise OptionError(f'guidance.modulation_init must be one of {MODULATION_INITS}, got {init!r}')
        if init == 'zero':
            nn.init.zeros_(self.to_gamma_beta.weight)
            nn.init.zeros_(self.to_gamma_beta.bias)

    def forward(self, feat: torch.Tensor, semantic_map: torch.Tensor, layout: str) -> torch.Tensor:
        (scale, shift), = modulation_scale_shift([self], semantic_map)
        return self.modulate(feat, scale, shift, layout)

    def modulate(self, feat: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, layout: str) -> torch.Tensor:
        """LN(feat) * scale + shift, with (scale, shift) = (1 + gamma, beta) from :func:`modulation_scale_shift`.

        The result has the layout the backbone keeps: contiguous (B, H*W, C) tokens, or channels-last
        (B, C, H, W) maps, so the next unit's LayerNorm / convs need no copy.
        """
        b, h, w, c = scale.shape
        if layout == 'tokens':
            if feat.shape[1] != h * w:
                raise ValueError(f'semantic map {h}x{w} does not match {feat.shape[1]} feature tokens')
            # (B, H*W, C) views with unit stride over C: the output comes out contiguous like the tokens
            return torch.addcmul(shift.reshape(b, h * w, c), self.norm(feat), scale.reshape(b, h * w, c))
        if layout == 'image':
            if feat.shape[-2:] != (h, w):
                raise ValueError(f'semantic map {h}x{w} does not match features {tuple(feat.shape[-2:])}')
            normed = self.norm(feat.permute(0, 2, 3, 1))  # (B, H, W, C)
            return torch.addcmul(shift, normed, scale).permute(0, 3, 1, 2)
        raise ValueError(f"feature layout must be 'tokens' or 'image', got {layout!r}")


def modulation_scale_shift(modulations: Sequence[SemanticModulation],
                           maps: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(1 + gamma_k, beta_k) of K modulations from their maps, all K in one grouped conv per layer.

    maps (B, K*E, H, W) (unit k's E channels at k*E) -> K pairs of (B, H, W, C) channels-last views.
    The convs run channels-last, so each unit's (H*W, C) slices are token-major without a copy; the
    ``1 +`` is folded into the conv bias of gamma.  Same result as K separate calls (grouped conv).
    """
    k = len(modulations)
    c = modulations[0].channels
    first = [m.shared[0] for m in modulations]
    last = [m.to_gamma_beta for m in modulations]
    if k == 1:
        w1, b1, w2 = first[0].weight, first[0].bias, last[0].weight
    else:
        w1, b1 = torch.cat([m.weight for m in first]), torch.cat([m.bias for m in first])
        w2 = torch.cat([m.weight for m in last])
    b2 = torch.cat([m.bias for m in last]).view(k, 2, c) + _ONE_ZERO.to(maps.device, maps.dtype)
    maps = maps.contiguous(memory_format=torch.channels_last)
    hidden = F.relu(F.conv2d(maps, w1, b1, padding=1, groups=k), inplace=True)
    hidden = hidden.contiguous(memory_format=torch.channels_last)  # no-op unless maps had one channel
    out = F.conv2d(hidden, w2, b2.flatten(), padding=1, groups=k)  # (B, K*2C, H, W)
    out = out.permute(0, 2, 3, 1).unflatten(-1, (k, 2, c))  # a view when the conv returned channels-last
    return [(out[..., i, 0, :], out[..., i, 1, :]) for i in range(k)]


#: added to the (K, 2, C) conv bias: +1 on gamma's half, 0 on beta's
_ONE_ZERO = torch.tensor([1., 0.]).view(1, 2, 1)
