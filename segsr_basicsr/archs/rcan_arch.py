"""SeG-SR guidance on BasicSR's RCAN: one SR unit per residual group."""
from basicsr.archs.rcan_arch import RCAN
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.registry import register

from segsr_basicsr.archs.backbone import ConvTrunkAdapter


@register(ARCH_REGISTRY)
class SeGSR_RCAN(ConvTrunkAdapter, RCAN):
    """BasicSR's RCAN (same keys, same output without guidance) with SeG-SR guidance.

    RCAN keeps EDSR's trunk layout, so only the units differ: its
    ``num_group`` residual groups, as in the paper.
    """

    def __init__(self, *args, guidance=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_trunk_guidance(guidance)

    @property
    def sr_units(self):
        return self.body
