"""Quality figures a remote-sensing user can check: LR-consistency (no HR needed), SAM and ERGAS.

Numpy functions on HWC arrays (2-D = one band), any number of bands, any value range; the
BasicSR registry wrappers in :mod:`segsr_basicsr.metrics.registered` call them, and so can
inference code (per-scene figures, error maps, tiled scenes). docs/metrics.md has the formulas.

* LR-consistency: the SR image brought back to the LR grid by the degradation that made the
  training LR (:func:`degrade`: BasicSR's MATLAB-style antialiased bicubic ``imresize``, the
  function ``segsr_basicsr.data.prep.bicubic_lr`` uses, rounded the same way for integer LR),
  compared with the LR input as PSNR in dB. Higher is better; ``inf`` means the SR, degraded,
  *is* the LR exactly.
* SAM: mean spectral angle in degrees between SR and reference pixels (lower is better, 0 best).
* ERGAS: Wald's relative global error, ``100/scale * sqrt(mean_b(RMSE_b**2 / mean_b**2))``
  (lower is better, 0 best; unitless, percent-like).

Nodata: a pixel whose every band equals ``nodata`` in the reference (the LR for LR-consistency,
the HR for SAM/ERGAS), or that a ``mask`` marks False, is left out of every figure.
:class:`QualitySums` holds the sums the figures are made of; sums over tiles (or ranks) add up
to the sums of the whole image, so a tiled scene gets the whole-image figures exactly.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from basicsr.utils.matlab_functions import imresize
from segsr_basicsr.errors import DataError

#: LR pixels of SR context around an LR box that make :func:`degrade` of the padded region equal the
#: whole-image degradation in the box (the antialiased cubic kernel reaches 2 LR pixels; the streamed scorer,
#: inference/scene_quality.py, uses it; tests/test_scene_quality.py)
DEGRADE_HALO = 2


def as_hwc(img, input_order: str = 'HWC') -> np.ndarray:
    """``img`` as a float64 H x W x C array (a 2-D image is one band)."""
    if input_order not in ('HWC', 'CHW'):
        raise DataError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}.")
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    elif img.ndim != 3:
        raise DataError(f'an image must be 2-D or 3-D ({input_order}), got shape {img.shape}.')
    elif input_order == 'CHW':
        img = img.transpose(1, 2, 0)
    return img.astype(np.float64)


def valid_mask(ref, nodata=None, mask=None) -> np.ndarray:
    """H x W bool: True where a pixel counts. Out: every band of ``ref`` equals ``nodata`` (NaN
    matches NaN), or ``mask`` (H x W, True = valid) is False there."""
    ref = as_hwc(ref)
    valid = np.ones(ref.shape[:2], bool)
    if nodata is not None:
        same = np.isnan(ref) if np.isnan(nodata) else ref == nodata
        valid &= ~same.all(axis=-1)
    if mask is not None:
        mask = np.asarray(mask)
        mask = mask[..., 0] if mask.ndim == 3 and mask.shape[-1] == 1 else mask
        if mask.shape != valid.shape:
            raise DataError(f'the mask is {mask.shape[::-1]} (W x H) but the image is {valid.shape[::-1]}.')
        valid &= mask.astype(bool)
    return valid


def lr_scale(sr_shape, lq_shape) -> int:
    """The integer scale between an SR and its LR (same on both axes), or a :class:`DataError`."""
    (h, w), (lh, lw) = sr_shape[:2], lq_shape[:2]
    if not lh or not lw or h % lh or w % lw or h // lh != w // lw:
        raise DataError(f'the SR image ({w}x{h}) is not an integer multiple of the LR image ({lw}x{lh}), the '
                        'same on both axes; LR-consistency compares an SR with the very LR it was made from.')
    return h // lh


#: the MATLAB bicubic (BasicSR's imresize) needs at least this many LR pixels per side
MIN_LR_SIDE = 2


def _quantize(img, dtype) -> np.ndarray:
    """Round half to even and clip to ``dtype``'s range, as ``bicubic_lr`` makes an 8-bit LR."""
    info = np.iinfo(dtype)
    return np.clip(np.round(img), info.min, info.max)


def degrade(sr, scale: int, quantize=None) -> np.ndarray:
    """The training degradation: MATLAB-style antialiased bicubic x1/``scale`` (BasicSR's ``imresize``).

    Computed in float32 on values / 255; ``quantize`` (an integer dtype such as ``np.uint8``) rounds half
    to even and clips, as BasicSR's ``tensor2img`` does: this is the data prep's LR maker
    (``segsr_basicsr.data.prep.bicubic_lr``). Returns float64 H/scale x W/scale x C."""
    sr = np.asarray(sr)
    sr = sr[..., None] if sr.ndim == 2 else sr
    if min(sr.shape[:2]) < MIN_LR_SIDE * scale:
        raise DataError(f'the image ({sr.shape[1]}x{sr.shape[0]}) is too small to bring to the LR grid at '
                        f'x{scale}: the MATLAB bicubic needs at least {MIN_LR_SIDE} LR pixels a side.')
    down = imresize(sr.astype(np.float32) / 255., 1. / scale) * 255.
    down = down[..., None] if down.ndim == 2 else down
    return (_quantize(down, quantize) if quantize is not None else down).astype(np.float64)


def spectral_angles(img, ref) -> np.ndarray:
    """H x W angle in degrees between each pixel's band vector in ``img`` and in ``ref``.

    Kahan's ``2 atan2(|u - v|, |u + v|)`` of the unit vectors (exact 0 for a positive multiple,
    unlike ``arccos`` near 1). Two zero vectors: 0 (the same spectrum); one zero vector: 90."""
    img, ref = as_hwc(img), as_hwc(ref)
    ni, nr = np.linalg.norm(img, axis=-1), np.linalg.norm(ref, axis=-1)
    u = np.divide(img, ni[..., None], out=np.zeros_like(img), where=ni[..., None] > 0)
    v = np.divide(ref, nr[..., None], out=np.zeros_like(ref), where=nr[..., None] > 0)
    angle = 2 * np.arctan2(np.linalg.norm(u - v, axis=-1), np.linalg.norm(u + v, axis=-1))
    angle[(ni > 0) != (nr > 0)] = np.pi / 2
    return np.degrees(angle)


@dataclass
class QualitySums:
    """Sums over valid pixels that every figure here is made of; ``a + b`` is the sums of both parts.

    ``sse``/``ref_sum``: per band, sum of squared errors / of the reference; ``count``: valid
    pixels; ``angle_sum``/``angle_count``: spectral angles in degrees (only with 2+ bands)."""
    sse: Optional[np.ndarray] = None
    ref_sum: Optional[np.ndarray] = None
    count: int = 0
    angle_sum: float = 0.0
    angle_count: int = 0

    @classmethod
    def of(cls, img, ref, valid=None) -> 'QualitySums':
        """Sums of ``img`` against ``ref`` (same shape) over the pixels ``valid`` (H x W bool) marks."""
        img, ref = as_hwc(img), as_hwc(ref)
        if img.shape != ref.shape:
            raise DataError(f'the images differ in shape: {img.shape} and {ref.shape} (H, W, bands).')
        valid = np.ones(img.shape[:2], bool) if valid is None else np.asarray(valid, bool)
        if valid.shape != img.shape[:2]:
            raise DataError(f'the valid-pixel mask is {valid.shape} but the images are {img.shape[:2]} (H, W).')
        a, b = img[valid], ref[valid]
        sums = cls(sse=((a - b) ** 2).sum(0), ref_sum=b.sum(0), count=int(valid.sum()))
        if img.shape[2] >= 2:
            sums.angle_sum = float(spectral_angles(a[None], b[None]).sum())
            sums.angle_count = sums.count
        return sums

    def __add__(self, other: 'QualitySums') -> 'QualitySums':
        if self.sse is None or other.sse is None:
            return other if self.sse is None else self
        if self.sse.shape != other.sse.shape:
            raise DataError(f'cannot add sums of {self.sse.size} and {other.sse.size} bands.')
        return QualitySums(self.sse + other.sse, self.ref_sum + other.ref_sum, self.count + other.count,
                           self.angle_sum + other.angle_sum, self.angle_count + other.angle_count)

    def _need_pixels(self):
        if not self.count:
            raise DataError('no valid pixel to score: every pixel is nodata or masked out.')

    def mse(self) -> float:
        """Mean squared error over valid pixels and all bands."""
        self._need_pixels()
        return float(self.sse.sum() / (self.count * self.sse.size))

    def psnr(self, data_range: float = 255.) -> float:
        """``10 log10(data_range**2 / MSE)`` in dB; ``inf`` when the images agree exactly."""
        mse = self.mse()
        return float('inf') if mse == 0 else float(10. * np.log10(data_range ** 2 / mse))

    def sam(self) -> float:
        """Mean spectral angle in degrees over valid pixels (needs 2+ bands)."""
        self._need_pixels()
        if not self.angle_count:
            raise DataError(f'SAM needs at least 2 bands; these images have {self.sse.size}.')
        return self.angle_sum / self.angle_count

    def ergas(self, scale: float) -> float:
        """Wald's ERGAS: ``100/scale * sqrt(mean_b(MSE_b / mean_b**2))`` with the reference's band means."""
        self._need_pixels()
        mean = self.ref_sum / self.count
        if np.any(mean == 0):
            raise DataError(f'ERGAS divides by each reference band mean; band(s) {np.flatnonzero(mean == 0).tolist()} '
                            'have mean 0 over the valid pixels (mark those pixels nodata, or use another figure).')
        return float(100. / scale * np.sqrt(np.mean(self.sse / self.count / mean ** 2)))


def lr_consistency(sr, lq, nodata=None, mask=None, data_range: float = 255.,
                   quantize='auto') -> Tuple[float, np.ndarray]:
    """(PSNR in dB, H x W error map) of :func:`degrade` (SR) against the LR ``lq``: no HR needed.

    The map is the per-pixel RMS over bands of degraded SR - LR on the LR grid, in the images'
    units, NaN at nodata. ``quantize='auto'`` rounds the degraded SR to ``lq``'s dtype when that is
    an integer type (as the training LR was rounded); ``None`` keeps it unrounded."""
    down, ref, valid = lr_pair(sr, lq, nodata, mask, quantize)
    err = np.sqrt(((down - ref) ** 2).mean(-1))
    err[~valid] = np.nan
    return QualitySums.of(down, ref, valid).psnr(data_range), err


def lr_pair(sr, lq, nodata=None, mask=None, quantize='auto'):
    """(degraded SR, LR, valid mask), all float64 HWC on the LR grid: what LR-consistency compares."""
    lq_arr = np.asarray(lq)
    scale = lr_scale(np.shape(sr), lq_arr.shape)
    if quantize == 'auto':
        quantize = lq_arr.dtype if np.issubdtype(lq_arr.dtype, np.integer) else None
    down, ref = degrade(sr, scale, quantize), as_hwc(lq_arr)
    if down.shape != ref.shape:
        raise DataError(f'the SR image has {down.shape[2]} band(s), the LR image {ref.shape[2]}.')
    return down, ref, valid_mask(ref, nodata, mask)


def sam(img, ref, nodata=None, mask=None) -> float:
    """Mean spectral angle (degrees) of ``img`` against ``ref`` over valid pixels; 2+ bands."""
    return QualitySums.of(img, ref, valid_mask(ref, nodata, mask)).sam()


def ergas(img, ref, scale: float, nodata=None, mask=None) -> float:
    """Wald's ERGAS of ``img`` against the reference ``ref`` at resolution ratio ``scale``."""
    return QualitySums.of(img, ref, valid_mask(ref, nodata, mask)).ergas(scale)
