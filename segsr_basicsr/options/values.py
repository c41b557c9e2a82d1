"""Option values parsed once, for option files and command lines alike: tiles, precision, signals, ...

Each parser takes a raw value and where it came from (``val:tile``, ``--tile``), and returns what the code
uses or raises an :class:`OptionError` naming the key, the value and what is allowed.
"""
import math
import signal
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest


#: the one default overlap between tiles (LR pixels), at most a quarter of the tile
DEFAULT_OVERLAP = 32


def default_overlap(tile: int) -> int:
    """Overlap used when none is given: :data:`DEFAULT_OVERLAP`, at most a quarter of ``tile``."""
    return min(DEFAULT_OVERLAP, int(tile) // 4)


#: ``tile: auto`` (the default of segsr-infer and the API): streamed rasters in tiles of this many LR pixels
#: (memory set by the tile, not the scene), images read whole in one pass
RASTER_TILE = 256


def fitting_tile(want: int, window: int) -> int:
    """The tile size nearest ``want`` that :func:`check_tile` accepts with the default overlap: a multiple
    of ``window`` that leaves a step (default overlap + window <= tile)."""
    window = max(int(window), 1)
    size = max(1, round(int(want) / window)) * window
    while default_overlap(size) + window > size:
        size += window
    return size


@dataclass(frozen=True)
class TileSpec:
    """How to tile: ``size`` LR pixels (None: the whole image in one pass; 'auto': see
    :meth:`for_input`), ``overlap`` (None: the default), ``margin`` (None: overlap // 4) and ``batch``
    tiles per forward pass."""
    size: Optional[Union[int, str]] = None
    overlap: Optional[int] = None
    margin: Optional[int] = None
    batch: int = 1

    def for_input(self, streamed: bool, window: int = 1) -> 'TileSpec':
        """'auto' made concrete: about :data:`RASTER_TILE` for a streamed raster (the nearest size that fits
        the network's ``window``, :func:`fitting_tile`), the whole image otherwise."""
        if self.size != 'auto':
            return self
        return TileSpec(fitting_tile(RASTER_TILE, window), self.overlap, self.margin, self.batch) if streamed \
            else TileSpec(None, None, None, self.batch)

    def resolve(self, h: int, w: int) -> Tuple[int, int, int]:
        """(tile, overlap, margin) for an h x w image; the whole image is one tile of max(h, w)."""
        if not self.size:
            return max(h, w), 0, 0
        overlap = default_overlap(self.size) if self.overlap is None else self.overlap
        margin = overlap // 4 if self.margin is None else self.margin
        return self.size, overlap, margin


DEFAULT_STOP_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGUSR1', 'SIGUSR2')


def signal_numbers(names, where='train:stop_signals'):
    """['SIGTERM', 'USR1', 15, ...] -> signal numbers; an unknown name is an OptionError naming it."""
    if names is None:
        names = DEFAULT_STOP_SIGNALS
    if not isinstance(names, (list, tuple)):
        raise OptionError(f'{where} must be a list of signal names, e.g. [SIGTERM, SIGUSR1], got {names!r}.')
    known = {s.name: s for s in signal.Signals}
    numbers = []
    for name in names:
        text = str(name).upper()
        text = text if text.startswith('SIG') or text.isdigit() else f'SIG{text}'
        sig = known.get(text) or (signal.Signals(int(text)) if text.isdigit() and int(text) in
                                  {s.value for s in signal.Signals} else None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise OptionError(f'{where}: {name!r} is not a signal a process can catch{suggest(text, known)}.')
        numbers.append(int(sig))
    return numbers


#: top-level ``cpu_kernels``: torch/oneDNN/MKL's own choice by CPU, or their AVX2 paths (training/cpu_arithmetic.py)
CPU_KERNELS = ('native', 'avx2')


def choice(value, allowed, where):
    """``value`` if it is one of ``allowed``, else OptionError naming the nearest allowed value."""
    if value in allowed:
        return value
    shown = ', '.join(str(a) for a in allowed)
    raise OptionError(f'{where} must be one of {shown}, got {value!r}{suggest(value, allowed)}.')


def _whole(value, where, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or float(value) != int(value) or value < minimum:
        raise OptionError(f'{where} must be a whole number >= {minimum}, got {value!r}.')
    return int(value)


TILE_KEYS = ('size', 'overlap', 'margin', 'batch')


def tile_spec(value, where='val:tile') -> TileSpec:
    """``val.tile`` (an int, ``{size, overlap, margin, batch}``, or ~), the API's or the CLI's tile ('auto',
    an int, 0 / None: whole image) -> TileSpec, checked here once for every entry point."""
    if not isinstance(value, dict):
        value = {'size': value}
    unknown = [k for k in value if k not in TILE_KEYS]
    if unknown:
        raise OptionError(f'{where}: unknown key {unknown[0]!r}{suggest(unknown[0], TILE_KEYS)}; '
                          'write {size: 256, overlap: 32}.')
    if value.get('size') is None or value.get('size') is False or value.get('size') == 0:
        return TileSpec(batch=_whole(value.get('batch', 1), f'{where} batch', 1))  # 0 / ~: the whole image
    auto = value['size'] == 'auto'
    size = RASTER_TILE if auto else _whole(value['size'], f'{where} size', 1)
    overlap = value.get('overlap')
    overlap = default_overlap(size) if overlap is None else _whole(overlap, f'{where} overlap', 0)
    if overlap >= size:
        raise OptionError(f'{where} overlap {overlap} must be smaller than the tile size {size}.')
    margin = value.get('margin')
    if margin is not None and (_whole(margin, f'{where} margin', 0) * 2 > overlap):
        raise OptionError(f'{where} margin must be an integer between 0 and overlap/2, got {margin!r}.')
    batch = _whole(value.get('batch', 1), f'{where} batch', 1)
    return TileSpec('auto' if auto else size, None if auto and value.get('overlap') is None else overlap, margin, batch)


def check_tile(spec: TileSpec, window: int, origin: str, window_name='the network window'):
    """A tile must be a multiple of the network's window (else each tile is padded, the window grid
    shifts from tile to tile and the overlap is lost: visible seams), and leave a step after the overlap."""
    if not spec.size:
        return
    size, overlap = spec.size, spec.overlap if spec.overlap is not None else default_overlap(spec.size)
    if size % window:
        raise OptionError(f'{origin} size {size} is not a multiple of {window_name} {window}; '
                          f'it would be rounded up and the overlap lost. Use {window * max(1, round(size / window))}.')
    if not overlap + window <= size:
        raise OptionError(f'{origin} overlap {overlap} leaves no step on a tile of {size} with window '
                          f'{window}; need overlap <= size - window ({size - window}).')


#: autocast dtypes by option value; None/none/fp32 mean full precision
AMP_DTYPES = {'bf16': 'bfloat16', 'bfloat16': 'bfloat16', 'fp16': 'float16', 'float16': 'float16'}
_NO_AMP = (None, False, 'none', 'None', 'fp32', 'float32')


def parse_amp(value, where: str):
    """'bf16' | 'fp16' | None/'none'/False -> torch dtype or None."""
    import torch
    if value in _NO_AMP:
        return None
    return getattr(torch, AMP_DTYPES[choice(value, tuple(AMP_DTYPES) + ('none', ), where)])


def parse_tf32(value, device_type: str) -> bool:
    """``train.tf32``: true/false, or ~ (default): on for CUDA (Ampere and newer run fp32 matmuls on tensor cores)."""
    if value is None:
        return device_type == 'cuda'
    if not isinstance(value, bool):
        raise OptionError(f'train.tf32 must be true, false or ~ (on for CUDA), got {value!r}')
    return value


def parse_finite_check_freq(value, device_type: str, print_freq) -> int:
    """``train.finite_check_freq``: host checks of the non-finite flag every N iterations (besides saves/validation).

    Default: every iteration on CPU (free there), every ``logger.print_freq`` on CUDA (those steps sync anyway).
    """
    if value is None:
        if device_type != 'cuda':
            return 1
        return int(print_freq) if isinstance(print_freq, (int, float)) and print_freq >= 1 else 100
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f'train.finite_check_freq must be an integer >= 1 (iterations), got {value!r}')
    return value


def parse_grad_clip(value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise OptionError(f'train.grad_clip must be a positive max gradient norm or ~, got {value!r}')
    return value


def parse_guidance_lr_mult(value):
    value = 1.0 if value is None else value
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
        raise OptionError(f'train.guidance_lr_mult must be a number >= 0, got {value!r}')
    return value
