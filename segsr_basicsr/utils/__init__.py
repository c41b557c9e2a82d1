"""Reusable helpers: crash-safe, code-free checkpoints and safe option files."""
from segsr_basicsr.utils.checkpoint import CheckpointError, atomic_save, load_checkpoint  # noqa: F401
from segsr_basicsr.utils.options import OptionError, load_option_file  # noqa: F401
