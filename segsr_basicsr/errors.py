"""One family of user-facing errors (and the one warning type for scenes).

Every error a user can fix (a bad option, a missing or damaged file, an image that
breaks the input rules) is a :class:`SeGSRError` whose message is one line naming
the file, key or value and saying what to do. Entry points catch the base class
once and print ``<prog>: error: <message>`` with exit code 2. Subclasses exist
where a caller must tell the kinds apart; each also derives from the builtin
exception it replaced, so ``except ValueError`` / ``except RuntimeError`` in
user code keeps working.
"""

__all__ = ['SeGSRError', 'OptionError', 'CheckpointError', 'DataError', 'ImageError', 'InferError', 'TileError',
           'RasterError', 'SceneWarning']


class SeGSRError(Exception):
    """A problem the user can fix; ``str(e)`` is one line that says what and how."""


class OptionError(SeGSRError, ValueError):
    """An option file, key or command-line value is wrong."""


class CheckpointError(SeGSRError, RuntimeError):
    """A checkpoint file is missing, unreadable, truncated, unsafe or does not fit the network."""


class DataError(SeGSRError, ValueError):
    """A dataset folder, file name or output location is unusable."""


class ImageError(DataError):
    """An input image breaks the 8-bit RGB rules (see :func:`segsr_basicsr.io.images.decode_image`)."""


class InferError(SeGSRError, ValueError):
    """An inference input, output or setting is unusable."""


class RasterError(InferError):
    """A raster or array input (bands, value range, dtype) or a raster output problem; names the file."""


class TileError(SeGSRError, RuntimeError):
    """A tile failed during tiled inference (the message names it)."""


class SceneWarning(UserWarning):
    """Something about a scene the user should know (all nodata, metadata dropped)."""
