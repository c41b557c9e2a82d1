"""SeG-SR LMM: modulate the features after an SR unit with its semantic map."""
import torch
from torch import nn

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
            raise ValueError(f'guidance.modulation_init must be one of {MODULATION_INITS}, got {init!r}')
        if init == 'zero':
            nn.init.zeros_(self.to_gamma_beta.weight)
            nn.init.zeros_(self.to_gamma_beta.bias)

    def forward(self, feat: torch.Tensor, semantic_map: torch.Tensor, layout: str) -> torch.Tensor:
        h, w = semantic_map.shape[-2:]
        gamma, beta = self.to_gamma_beta(self.shared(semantic_map)).chunk(2, dim=1)  # (B, C, H, W) each
        if layout == 'tokens':
            if feat.shape[1] != h * w:
                raise ValueError(f'semantic map {h}x{w} does not match {feat.shape[1]} feature tokens')
            gamma, beta = gamma.flatten(2).transpose(1, 2), beta.flatten(2).transpose(1, 2)
            return torch.addcmul(beta, self.norm(feat), 1 + gamma)
        if layout == 'image':
            if feat.shape[-2:] != (h, w):
                raise ValueError(f'semantic map {h}x{w} does not match features {tuple(feat.shape[-2:])}')
            normed = self.norm(feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return torch.addcmul(beta, normed, 1 + gamma)
        raise ValueError(f"feature layout must be 'tokens' or 'image', got {layout!r}")
