"""Band plans and radiometry: which bands the network sees and how their values map to [0, 1] and back.

numpy only (no GDAL), so arrays and rasters share it. Every channel stack that goes through the tiler
is float32 ``(3 + E + 1, h, w)``: the three bands the network sees (mapped to [0, 1], invalid pixels
filled from their nearest valid neighbour), the ``E`` bands carried through bicubic (raw values), and
one channel that is the alpha band's value or the valid mask (0/1). Values the mapping cannot represent
(NaN/inf at valid pixels, values above ``max_value`` that would be clipped) are refused, not clipped.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from segsr_basicsr.errors import InferError, RasterError


@dataclass
class BandPlan:
    """Which input bands (0-based) play which role; output bands keep the input band order."""
    count: int
    rgb: Tuple[int, int, int]
    extras: List[int]
    alpha: Optional[int] = None

    def out_sources(self):
        """Per output band: ('sr', [sr channels]) | ('extra', k) | ('alpha', None)."""
        roles = []
        for b in range(self.count):
            if b == self.alpha:
                roles.append(('alpha', None))
            elif b in self.rgb:
                roles.append(('sr', [c for c in range(3) if self.rgb[c] == b]))
            else:
                roles.append(('extra', self.extras.index(b)))
        return roles


def plan_bands(name, count, alpha=None, bands=None) -> BandPlan:
    """RGB from ``bands`` (1-based, file order) or the first three non-alpha bands; a single band is
    replicated (gray); every other non-alpha band is carried through."""
    others = [b for b in range(count) if b != alpha]
    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != 3 or min(bands) < 1 or max(bands) > count or (alpha is not None and alpha + 1 in bands):
            raise RasterError(f'{name}: --bands {" ".join(map(str, bands))} does not pick 3 of its {count} bands'
                              f'{" (band %d is alpha)" % (alpha + 1) if alpha is not None else ""}; use 1-based band '
                              'numbers, e.g. --bands 3 2 1.')
        rgb = tuple(b - 1 for b in bands)
    elif len(others) >= 3:
        rgb = tuple(others[:3])
    elif len(others) == 1:
        rgb = (others[0], ) * 3
    else:
        raise RasterError(f'{name}: has {len(others)} non-alpha bands; pick the red, green and blue ones with '
                          '--bands R G B.')
    return BandPlan(count, rgb, [b for b in others if b not in rgb], alpha)


@dataclass
class Radiometry:
    """Linear map of each RGB channel to [0, 1] for the network and back: ``(v - lo) / (hi - lo)``.

    ``clamp``: the network output is clamped to [0, 1] before mapping back (8-bit and ``max_value``,
    like BasicSR's tensor2img); a percentile stretch is not clamped, so values beyond the percentiles
    keep their radiometry. Output values are always clipped to the dtype's range.
    """
    lo: np.ndarray  # (3,)
    hi: np.ndarray  # (3,)
    clamp: bool = True
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint8))

    def forward(self, rgb):
        """(3, h, w) raw -> float32 [0, 1]."""
        return ((rgb.astype(np.float32) - self.lo[:, None, None]) / (self.hi - self.lo)[:, None, None]).astype(
            np.float32, copy=False)

    def inverse(self, sr):
        """(3, h, w) float [0, 1] -> float values in the input's units (not rounded).

        Clamped maps (8-bit, ``max_value``) compute in float32 like BasicSR's tensor2img, so validation
        images and inference outputs round to the same integers."""
        if self.clamp:
            sr = np.clip(sr.astype(np.float32, copy=False), 0, 1)
            span, lo = (self.hi - self.lo).astype(np.float32), self.lo.astype(np.float32)
            return sr * span[:, None, None] + lo[:, None, None]
        return sr * (self.hi - self.lo)[:, None, None] + self.lo[:, None, None]


def dtype_range(dtype):
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def to_dtype(values, dtype):
    """float -> dtype: round half to even and clip for integers (as BasicSR's tensor2img)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        lo, hi = dtype_range(dtype)
        return np.clip(np.rint(values), lo, hi).astype(dtype)
    return values.astype(dtype)


def make_radiometry(name, dtype, max_value=None, stretch=None, sample=None):
    """The mapping for 3 channels of ``dtype``; ``sample`` (3, n) valid values for a percentile stretch."""
    dtype = np.dtype(dtype)
    if dtype.kind not in 'uif' or dtype.itemsize > 8:
        raise RasterError(f'{name}: values of type {dtype} are not image data; pass unsigned/signed integers or '
                          'floats (e.g. uint8, uint16, float32).')
    if stretch is not None:
        p_lo, p_hi = (float(p) for p in stretch)
        if not 0 <= p_lo < p_hi <= 100:
            raise RasterError(f'{name}: --stretch {p_lo:g} {p_hi:g}: need 0 <= low < high <= 100 (percentiles).')
        if sample is None or sample.shape[1] == 0:
            lo, hi = np.zeros(3), np.ones(3)
        else:
            lo, hi = (np.percentile(sample.astype(np.float64), [p_lo, p_hi], axis=1))
        hi = np.where(hi > lo, hi, lo + 1)
        return Radiometry(lo.astype(np.float64), hi.astype(np.float64), clamp=False, dtype=dtype)
    if max_value is not None:
        if not (max_value > 0 and math.isfinite(max_value)):
            raise RasterError(f'{name}: --max-value must be > 0, got {max_value}.')
        return Radiometry(np.zeros(3), np.full(3, float(max_value)), dtype=dtype)
    if dtype == np.uint8:
        return Radiometry(np.zeros(3), np.full(3, 255.0), dtype=dtype)
    if dtype.kind == 'f':
        kind = f'float ({dtype})'
    else:
        kind = f'{dtype.itemsize * 8}-bit ({dtype})'
    raise RasterError(f'{name}: is {kind}; say how its values map to the 8-bit range the network was trained on: '
                      '--max-value M (v/M, e.g. 65535 for full-range 16-bit, 4095 for 12-bit, 1 for reflectance) '
                      'or --stretch 1 99 (per-band percentiles, inverted on output). The output keeps the dtype.')


def fill_invalid(rgb, valid):
    """Replace invalid pixels of (C, h, w) by their nearest valid pixel (in place), so a nodata border
    looks like an image edge to the network instead of a step to black. All invalid -> zeros."""
    if valid.all():
        return rgb
    if not valid.any():
        rgb[...] = 0
        return rgb
    from scipy.ndimage import distance_transform_edt
    iy, ix = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    rgb[...] = rgb[:, iy, ix]
    return rgb


# ----------------------------------------------------------------------------- channel stacks
class ChannelScene:
    """A scene handed to the tiler: ``read(y0, y1, x0, x1)`` -> float32 (3 + E + 1, h, w)."""
    height: int
    width: int
    n_extra: int
    name: str

    def read(self, y0, y1, x0, x1):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self):
        pass


class ArrayScene(ChannelScene):
    """An in-memory (H, W, C) array: C = 1 (gray), 3 (RGB) or 4 (RGBA) channels, and an optional valid mask."""

    def __init__(self, img, radiometry, mask=None, name='array'):
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise InferError(f'{name}: expected an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray array, '
                             f'got shape {img.shape}.')
        if 0 in img.shape[:2]:
            raise InferError(f'{name}: the image is {img.shape[0]}x{img.shape[1]} pixels; there is nothing to upscale.')
        self.img, self.rad, self.mask, self.name = img, radiometry, mask, name
        self.height, self.width = img.shape[:2]
        self.n_extra = 0
        self.plan = plan_bands(name, img.shape[2], alpha=3 if img.shape[2] == 4 else None)

    def read(self, y0, y1, x0, x1):
        win = np.moveaxis(self.img[y0:y1, x0:x1], -1, 0)
        return stack_channels(win, self.plan, self.rad, None if self.mask is None else self.mask[y0:y1, x0:x1],
                              self.name)


def check_values(raw, valid, rad, name):
    """The RGB values (3, h, w) at valid pixels are finite and, where the mapping clamps, inside its range:
    anything else would come out as a silently wrong image."""
    vals = raw[:, valid]
    if vals.size == 0 or raw.dtype == np.uint8:
        return
    if vals.dtype.kind == 'f' and not np.isfinite(vals).all():
        raise RasterError(f'{name}: has NaN or infinite values at valid pixels; mark them as nodata (API: '
                          'mask=...) or clean the data.')
    low, high = float(vals.min()), float(vals.max())
    if rad.clamp and (low < rad.lo.min() or high > rad.hi.max()):
        raise RasterError(f'{name}: values span {low:g}..{high:g}, outside the {rad.lo.min():g}..{rad.hi.max():g} '
                          'that maps to the network\'s [0, 1] (--max-value / max_value, 1 for floats); they would be '
                          'clipped. Pass the data\'s full range (e.g. --max-value 65535) or --stretch 1 99.')


def stack_channels(data, plan, rad, valid=None, name='image'):
    """(bands, h, w) raw window -> float32 (3 + E + 1, h, w); ``valid`` (h, w) bool or None (all valid)."""
    if plan.alpha is not None:
        last = data[plan.alpha].astype(np.float32)
        alpha_valid = last > 0
        valid = alpha_valid if valid is None else (valid & alpha_valid)
    if valid is None:
        valid = np.ones(data.shape[1:], bool)
    if plan.alpha is None:
        last = valid.astype(np.float32)
    else:
        last = np.where(valid, last, 0).astype(np.float32)
    check_values(data[list(plan.rgb)], valid, rad, name)
    rgb = fill_invalid(rad.forward(data[list(plan.rgb)]), valid)
    out = np.empty((3 + len(plan.extras) + 1, *data.shape[1:]), np.float32)
    out[:3] = rgb
    if plan.extras:
        out[3:-1] = data[plan.extras]
    out[-1] = last
    return out


def channels_to_bands(block, plan, rad, dtype, nodata=None):
    """Blended tiler output float32 (3 + E + 1, h, w) -> (bands (count, h, w) of ``dtype``, valid (h, w) bool).

    SR channels are mapped back to the input's units; a band that fed several SR channels (gray) gets
    their mean. Invalid pixels become ``nodata``; a valid pixel that would read as nodata in every band
    is nudged by one unit in its first band, so it stays valid.
    """
    last = block[-1]
    valid = last > 0.5 if plan.alpha is None else np.rint(last) > 0
    sr = rad.inverse(block[:3])
    out = np.empty((plan.count, *block.shape[1:]), np.dtype(dtype))
    for b, (role, arg) in enumerate(plan.out_sources()):
        if role == 'alpha':
            out[b] = to_dtype(np.where(valid, last, 0), dtype)
        elif role == 'sr':
            out[b] = to_dtype(sr[arg[0]] if len(arg) == 1 else sr[arg].mean(0), dtype)
        else:
            out[b] = to_dtype(block[3 + arg], dtype)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        nd = np.array(nodata).astype(dtype)
        clash = valid & (out == nd).all(0)
        if clash.any() and np.issubdtype(np.dtype(dtype), np.integer):
            out[0][clash] = nd + 1 if nd < dtype_range(dtype)[1] else nd - 1
        out[:, ~valid] = nd
    elif nodata is not None:
        out[:, ~valid] = np.nan
    elif plan.alpha is not None:  # transparent: no colour to invent
        for b in range(plan.count):
            if b != plan.alpha:
                out[b][~valid] = 0
    return out, valid
