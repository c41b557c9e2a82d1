"""SeG-SR guidance on BasicSR's EDSR (and the trunk layout RCAN shares with it)."""
import math
from typing import Sequence

from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.utils.registry import register
from torch import nn

from segsr_basicsr.archs.guided import GuidedBackbone


class ConvTrunkAdapter(GuidedBackbone):
    """Head/unit/tail for BasicSR's mean-shifted conv trunks (EDSR, RCAN).

    Both run ``conv_first -> body -> conv_after_body (+ skip) -> upsample ->
    conv_last`` in ``img_range`` units around ``mean``; the adapters differ
    only in how ``body`` is cut into SR units. Listed before the backbone in
    the bases, so :meth:`GuidedBackbone.forward` wins over the backbone's.
    """

    feature_layout = 'image'

    def init_trunk_guidance(self, guidance) -> None:
        """Read scale and width off the built modules (EDSR/RCAN keep no ``upscale``)."""
        self.upscale = math.prod(m.upscale_factor for m in self.upsample if isinstance(m, nn.PixelShuffle))
        self.unit_channels = self.conv_first.out_channels
        self.init_guidance(guidance)

    def forward_head(self, x):
        self.mean = self.mean.type_as(x)
        feat = self.conv_first((x - self.mean) * self.img_range)
        return feat, {'size': tuple(feat.shape[-2:]), 'skip': feat}

    def forward_unit(self, k, feat, ctx):
        return self.sr_units[k](feat)

    def forward_tail(self, feat, ctx):
        res = self.conv_after_body(feat) + ctx['skip']
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean


@register(ARCH_REGISTRY)
class SeGSR_EDSR(ConvTrunkAdapter, EDSR):
    """BasicSR's EDSR (same keys, same output without guidance) with SeG-SR guidance.

    EDSR's body is a flat run of ``num_block`` residual blocks; SeG-SR needs a
    few SR units to modulate after, so consecutive blocks are grouped into
    ``num_units`` equal units (a grouping only: no module or key changes).
    """

    def __init__(self, *args, num_units: int = 4, guidance=None, **kwargs):
        super().__init__(*args, **kwargs)
        num_block = len(self.body)
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1 or num_block % num_units:
            raise ValueError(f'SeGSR_EDSR: num_units={num_units!r} must be a positive divisor of '
                             f'num_block={num_block}')
        self.num_units = num_units
        self.init_trunk_guidance(guidance)

    @property
    def sr_units(self) -> Sequence[nn.Module]:
        n = len(self.body) // self.num_units
        return [self.body[k * n:(k + 1) * n] for k in range(self.num_units)]

