"""Quality metrics: LR-consistency (no HR needed), SAM and ERGAS, registered in BasicSR's METRIC_REGISTRY.

:mod:`.quality` holds the numpy functions (figures, error maps, tile sums); :mod:`.registered`
puts them in BasicSR's registry as ``calculate_segsr_lr_consistency``, ``calculate_segsr_sam``
and ``calculate_segsr_ergas`` (docs/metrics.md).
"""
from segsr_basicsr.metrics import quality, registered  # noqa: F401
from segsr_basicsr.metrics.quality import QualitySums, degrade, ergas, lr_consistency, sam  # noqa: F401
