"""SeG-SR as a BasicSR plugin.

Importing this package first makes basicsr 1.4.2 work on today's stack
(:mod:`segsr_basicsr.compat`), then registers every arch, model and dataset of
the package into BasicSR's registries.
"""
from segsr_basicsr import compat  # noqa: F401  (must run before basicsr is imported)

compat.apply()

from segsr_basicsr import archs, data, metrics, models  # noqa: E402,F401
from segsr_basicsr.api import load_model  # noqa: E402,F401

__version__ = '0.1.0'
