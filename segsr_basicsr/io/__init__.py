"""Everything that touches files: images, rasters and checkpoints, written atomically.

* :mod:`.atomic`: temporary sibling + rename for files (:func:`atomic_write`) and folders
  (:func:`staged_outputs`); nothing half-written ever sits under a final name.
* :mod:`.images`: the one image reader (8-bit RGB rules) and writer (PNG / TIFF / GeoTIFF).
* :mod:`.checkpoint`: safe (``weights_only``) checkpoint loading, atomic saving, RNG states.
"""
from segsr_basicsr.io.atomic import atomic_write, check_free, staged_output, staged_outputs  # noqa: F401
from segsr_basicsr.io.checkpoint import atomic_save, load_checkpoint, load_state_dict  # noqa: F401
from segsr_basicsr.io.images import IMG_EXTS, decode_image, list_images, read_image, write_image  # noqa: F401
