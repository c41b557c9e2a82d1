"""SeG-SR guidance on BasicSR's EDSR: its flat run of residual blocks grouped into SR units."""
from typing import Sequence

from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.registry import register
from torch import nn

from segsr_basicsr.archs.backbone import ConvTrunkAdapter
from segsr_basicsr.errors import OptionError


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
            raise OptionError(f'SeGSR_EDSR: num_units={num_units!r} must be a positive divisor of '
                             f'num_block={num_block}')
        self.num_units = num_units
        self.init_trunk_guidance(guidance)

    @property
    def sr_units(self) -> Sequence[nn.Module]:
        n = len(self.body) // self.num_units
        return [self.body[k * n:(k + 1) * n] for k in range(self.num_units)]

