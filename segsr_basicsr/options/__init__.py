"""The one option contract: every user-facing key of an option file, read and checked once.

* :mod:`.contract`: :func:`validate_options` and the checks of each section (what keys exist, their types).
* :mod:`.values`: the parsers of single values shared by option files and command lines (tile, amp, ...).
"""
from segsr_basicsr.options.contract import (check_cpu_options, check_dataset, check_train, check_val,  # noqa: F401
                                            validate_options)
from segsr_basicsr.options.values import (AMP_DTYPES, CPU_KERNELS, DEFAULT_OVERLAP, DEFAULT_STOP_SIGNALS,  # noqa: F401
                                          RASTER_TILE, TILE_KEYS, TileSpec, check_tile, choice, default_overlap,
                                          fitting_tile,
                                          parse_amp, parse_finite_check_freq, parse_grad_clip,
                                          parse_guidance_lr_mult, parse_tf32, signal_numbers, tile_spec)
