"""The quality figures of :mod:`.quality` in BasicSR's ``METRIC_REGISTRY``, for any ``val: metrics:`` block.

BasicSR calls a metric as ``calculate_metric(data, opt)``: ``fn(**data, **opt)`` with ``data`` =
``img`` (SR) and ``img2`` (HR), HWC 0..255 (BGR, uint8 from ``tensor2img``), and the metric's
options. SeGSRModel's validation also passes ``lq`` (the LR input, same layout); BasicSR's own
metrics ignore it (``**kwargs``). The names carry ``segsr`` so they cannot clash with BasicSR's
``calculate_psnr`` / ``calculate_ssim`` / ``calculate_niqe`` or another plugin's.
"""
import numpy as np

from basicsr.utils.registry import METRIC_REGISTRY
from segsr_basicsr.errors import DataError, OptionError
import segsr_basicsr.metrics.quality as quality
from segsr_basicsr.registry import register


def _crop(img, crop_border: int):
    if crop_border:
        if min(img.shape[:2]) <= 2 * crop_border:
            raise DataError(f'crop_border {crop_border} leaves nothing of a {img.shape[1]}x{img.shape[0]} image.')
        return img[crop_border:-crop_border, crop_border:-crop_border, ...]
    return img


def _pair(img, img2, crop_border, input_order, nodata, mask, name):
    if img2 is None:
        raise OptionError(f'{name} compares the SR image with an HR reference, and this dataset has none '
                          '(no dataroot_gt); remove it from val:metrics or use calculate_segsr_lr_consistency.')
    img, ref = quality.as_hwc(img, input_order), quality.as_hwc(img2, input_order)
    valid = quality.valid_mask(ref, nodata, mask)
    return _crop(img, crop_border), _crop(ref, crop_border), _crop(valid, crop_border)


@register(METRIC_REGISTRY)
def calculate_segsr_lr_consistency(img, img2=None, crop_border=0, input_order='HWC', test_y_channel=False, lq=None,
                                   nodata=None, mask=None, data_range=255., **kwargs):
    """LR-consistency in dB (higher is better; ``inf``: the SR brought down *is* the LR): PSNR of
    the SR degraded to the LR grid (antialiased MATLAB bicubic, rounded like the training LR)
    against the LR input ``lq``. No HR image needed (``img2`` is ignored).

    ``crop_border`` counts LR pixels (cut after the degradation); ``test_y_channel`` compares the
    Y channel (BGR input, as BasicSR's); ``nodata``/``mask`` leave LR pixels out (docs/metrics.md)."""
    if lq is None:
        raise OptionError('calculate_segsr_lr_consistency compares the SR image with its LR input, and the model '
                          'did not pass one (metric data "lq"): use model_type SeGSRModel, whose validation passes '
                          'it, or call it with lq=<LR image>.')
    sr, lq = quality.as_hwc(img, input_order), np.asarray(lq)
    lq = lq.transpose(1, 2, 0) if input_order == 'CHW' and lq.ndim == 3 else lq
    down, ref, valid = quality.lr_pair(sr, lq, nodata, mask)
    if test_y_channel:
        from basicsr.metrics.metric_util import to_y_channel
        down, ref = to_y_channel(down).astype(np.float64), to_y_channel(ref).astype(np.float64)
    down, ref, valid = _crop(down, crop_border), _crop(ref, crop_border), _crop(valid, crop_border)
    return quality.QualitySums.of(down, ref, valid).psnr(data_range)


@register(METRIC_REGISTRY)
def calculate_segsr_sam(img, img2=None, crop_border=0, input_order='HWC', nodata=None, mask=None, **kwargs):
    """SAM in degrees (lower is better, 0 best): mean spectral angle between SR and HR pixels
    (Yuhas et al. 1992); 2+ bands; ``crop_border`` in HR pixels as for BasicSR's PSNR."""
    img, ref, valid = _pair(img, img2, crop_border, input_order, nodata, mask, 'calculate_segsr_sam')
    return quality.QualitySums.of(img, ref, valid).sam()


@register(METRIC_REGISTRY)
def calculate_segsr_ergas(img, img2=None, crop_border=0, input_order='HWC', scale=None, lq=None, nodata=None,
                          mask=None, **kwargs):
    """ERGAS (lower is better, 0 best; unitless): Wald 2002, ``100/scale * sqrt(mean_b(RMSE_b**2 /
    mean_b**2))`` of SR against HR. ``scale``: the option, else SR size / LR size when the model
    passes ``lq``."""
    if scale is None:
        if lq is None:
            raise OptionError('calculate_segsr_ergas needs the SR scale: give "scale: <s>" in its val:metrics '
                              'entry (SeGSRModel also infers it from the LR input).')
        lq = np.asarray(lq)
        scale = quality.lr_scale(np.shape(img)[1:] if input_order == 'CHW' else np.shape(img),
                                 lq.shape[1:] if input_order == 'CHW' and lq.ndim == 3 else lq.shape)
    img, ref, valid = _pair(img, img2, crop_border, input_order, nodata, mask, 'calculate_segsr_ergas')
    return quality.QualitySums.of(img, ref, valid).ergas(scale)


#: metric types whose best value is the lowest unless their options say ``better`` (docs/metrics.md)
LOWER_IS_BETTER = ('calculate_segsr_sam', 'calculate_segsr_ergas', 'calculate_lpips', 'calculate_niqe')


def better(metric_options) -> str:
    """'higher' or 'lower': the option ``better`` if given, else by type. BasicSR's own default is 'higher' for
    every metric; the best-checkpoint tracking and the tables both ask here."""
    return str(metric_options.get('better', 'lower' if metric_options.get('type') in LOWER_IS_BETTER else 'higher'))
