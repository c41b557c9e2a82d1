"""Test-side constants: the shared tiny network configs, and where the shared sample data lives."""
from pathlib import Path

from segsr_basicsr.archs.tiny_configs import TINY_GUIDANCE, TINY_HAT  # noqa: F401  (one definition, package-side)

REPO = Path(__file__).resolve().parents[1]
#: design notes, reference key listings and sample images live beside the repo
SHARED = REPO.parent / 'shared'
RS_SAMPLES = SHARED / 'data' / 'rs_samples'
