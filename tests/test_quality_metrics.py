"""LR-consistency, SAM and ERGAS (segsr_basicsr.metrics): properties, independent numpy references,
nodata, tile sums, and the BasicSR metric registry / SeGSRModel validation path."""
import json
import math

import cv2
import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001  (compat first; registers the metrics)
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from segsr_basicsr.data.prep import bicubic_lr, bicubic_up
from segsr_basicsr.errors import DataError, OptionError
from segsr_basicsr.metrics import quality
from segsr_basicsr.metrics.quality import QualitySums

NAMES = ('calculate_segsr_lr_consistency', 'calculate_segsr_sam', 'calculate_segsr_ergas')


def scene(seed=0, h=48, w=40, bands=3, dtype=np.uint8):
    """A smooth-ish random image (blurred noise + gradient), so bicubic resampling is not all noise."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, bands)), (5, 5), 0)
    img = (img + np.linspace(0, 60, w)[None, :, None]) * 0.8
    return np.clip(np.round(img), 0, 255).astype(dtype) if dtype == np.uint8 else img


# ----------------------------------------------------------------------------- independent references
def matlab_bicubic_down(img, s):
    """Antialiased MATLAB bicubic x1/s written as two float64 weight matrices (Keys a=-0.5 kernel stretched by
    s, output pixel i centred at input s*i + (s-1)/2, symmetric edge mirroring, weights normalised)."""
    def cubic(x):
        x = np.abs(x)
        return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0))

    def matrix(n):
        out = np.zeros((n // s, n))
        for i in range(n // s):
            centre = s * i + (s - 1) / 2
            for j in range(int(np.floor(centre - 2 * s)) - 1, int(np.ceil(centre + 2 * s)) + 2):
                k = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
                out[i, k] += cubic((centre - j) / s)
        return out / out.sum(1, keepdims=True)
    img = np.asarray(img, np.float64)
    mh, mw = matrix(img.shape[0]), matrix(img.shape[1])
    return np.stack([mh @ img[..., b] @ mw.T for b in range(img.shape[2])], -1)


def psnr_ref(a, b, peak=255.):
    return 10 * math.log10(peak ** 2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def sam_ref(img, ref):
    """Mean of arccos(<x, y> / (|x| |y|)) in degrees, pixel by pixel."""
    x, y = img.reshape(-1, img.shape[-1]).astype(float), ref.reshape(-1, ref.shape[-1]).astype(float)
    cos = [np.dot(p, q) / (np.linalg.norm(p) * np.linalg.norm(q)) for p, q in zip(x, y)]
    return float(np.degrees(np.mean(np.arccos(np.clip(cos, -1, 1)))))


def ergas_ref(img, ref, scale):
    terms = []
    for b in range(ref.shape[-1]):
        rmse = math.sqrt(np.mean((img[..., b].astype(float) - ref[..., b]) ** 2))
        terms.append((rmse / np.mean(ref[..., b].astype(float))) ** 2)
    return 100 / scale * math.sqrt(sum(terms) / len(terms))


# ----------------------------------------------------------------------------- LR-consistency
def test_degradation_is_the_matlab_bicubic_kernel():
    """``degrade`` is also the data prep's LR maker (``prep.bicubic_lr`` calls it): checked against an
    independent float64 formulation of the MATLAB kernel (before rounding)."""
    hr = scene(1, 64, 56)
    assert np.abs(quality.degrade(hr, 4) - matlab_bicubic_down(hr, 4)).max() < 1e-3


def test_the_hr_an_lr_was_made_from_is_perfectly_consistent():
    hr = scene(2)
    lr = bicubic_lr(hr, 4)
    db, err = quality.lr_consistency(hr, lr)
    assert db == math.inf and err.shape == lr.shape[:2] and not err.any()
    assert calculate_metric(dict(img=hr, img2=None, lq=lr), dict(type=NAMES[0])) == math.inf
    # not rounded to 8 bit, only the rounding of the LR is left: high but finite
    assert 50 < quality.lr_consistency(hr, lr, quantize=None)[0] < math.inf
    # another HR (a shifted one) is not consistent with this LR
    assert quality.lr_consistency(np.roll(hr, 3, axis=1), lr)[0] < 40


def test_bicubic_upsampling_scores_its_independently_computed_consistency():
    lr = bicubic_lr(scene(3, 64, 48), 4)
    sr = bicubic_up(lr, 4)
    down = matlab_bicubic_down(sr, 4)
    expected_raw = psnr_ref(down, lr)
    expected_8bit = psnr_ref(np.clip(np.round(down), 0, 255), lr)
    assert quality.lr_consistency(sr, lr, quantize=None)[0] == pytest.approx(expected_raw, abs=1e-3)
    got = calculate_metric(dict(img=sr, img2=None, lq=lr), dict(type=NAMES[0]))
    assert got == pytest.approx(expected_8bit, abs=0.02)  # float32 vs float64 may round a rare .5 differently
    assert 25 < got < 60  # up then down is not the identity


def test_lr_consistency_matches_numpy_on_random_images_and_its_error_map():
    rng = np.random.default_rng(4)
    sr = rng.uniform(0, 255, (36, 28, 4))
    lr = rng.uniform(0, 255, (9, 7, 4))
    db, err = quality.lr_consistency(sr, lr)  # float LR: no rounding
    down = matlab_bicubic_down(sr, 4)
    assert db == pytest.approx(psnr_ref(down, lr), abs=1e-4)
    assert err == pytest.approx(np.sqrt(((down - lr) ** 2).mean(-1)), abs=1e-3)
    # Y channel and a crop in LR pixels, against BasicSR's PSNR on the degraded SR
    from basicsr.metrics import calculate_psnr
    sr8, lr8 = scene(5), bicubic_lr(scene(6), 4)
    y = calculate_metric(dict(img=sr8, lq=lr8), dict(type=NAMES[0], crop_border=1, test_y_channel=True))
    assert y == pytest.approx(calculate_psnr(bicubic_lr(sr8, 4), lr8, 1, test_y_channel=True), abs=1e-9)


def test_lr_consistency_leaves_lr_nodata_out():
    hr, other = scene(7), scene(8)
    lr = bicubic_lr(hr, 4)
    lr[:4, :5] = 0  # nodata block in the LR
    sr = hr.copy()
    sr[:16, :20] = other[:16, :20]  # whatever the SR does under (and right next to) it
    down = bicubic_lr(sr, 4)
    valid = np.ones(lr.shape[:2], bool)
    valid[:4, :5] = False
    db, err = quality.lr_consistency(sr, lr, nodata=0)
    assert db == pytest.approx(psnr_ref(down[valid], lr[valid]), abs=1e-9)
    assert np.isnan(err[:4, :5]).all() and np.isfinite(err[valid]).all()
    assert quality.lr_consistency(sr, lr, mask=valid)[0] == db
    assert quality.lr_consistency(sr, lr)[0] < db  # counted, the block does change the figure


# ----------------------------------------------------------------------------- SAM and ERGAS
def test_sam_is_zero_for_a_positive_multiple_and_matches_arccos_on_random_images():
    rng = np.random.default_rng(9)
    img = rng.uniform(1, 255, (20, 24, 5))
    assert quality.sam(img * 3.7, img) < 1e-9 and quality.sam(img, img) == 0
    other = rng.uniform(1, 255, img.shape)
    assert quality.sam(other, img) == pytest.approx(sam_ref(other, img), abs=1e-6)
    assert quality.sam(other, img) > 1
    # zero spectra: both zero agree (0), one zero is 90 degrees
    a, b = np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    b[0, 1] = 5
    assert quality.sam(a, b) == pytest.approx(45.0)


def test_ergas_is_zero_for_identical_images_grows_with_noise_and_matches_numpy():
    rng = np.random.default_rng(10)
    hr = scene(11, bands=4, dtype=float) + 10
    assert quality.ergas(hr, hr, 4) == 0
    values = [quality.ergas(hr + rng.normal(0, sigma, hr.shape), hr, 4) for sigma in (0.5, 2, 8, 32)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    noisy = hr + rng.normal(0, 5, hr.shape)
    for s in (2, 4):
        assert quality.ergas(noisy, hr, s) == pytest.approx(ergas_ref(noisy, hr, s), rel=1e-12)
    assert quality.ergas(noisy[..., :1], hr[..., :1], 4) == pytest.approx(ergas_ref(noisy[..., :1], hr[..., :1], 4))


def test_sam_and_ergas_leave_reference_nodata_out():
    rng = np.random.default_rng(12)
    hr = rng.uniform(1, 255, (16, 18, 3))
    sr = hr + rng.normal(0, 6, hr.shape)
    hr[5:9, 2:7] = -9999  # every band nodata
    hr[0, 0, 0] = -9999  # one band only: still a valid pixel
    valid = ~np.all(hr == -9999, -1)
    for garbage in (0.0, 1e6):
        sr[5:9, 2:7] = garbage
        assert quality.sam(sr, hr, nodata=-9999) == pytest.approx(sam_ref(sr[valid][None], hr[valid][None]), abs=1e-6)
        assert quality.ergas(sr, hr, 4, nodata=-9999) == pytest.approx(ergas_ref(sr[valid][None], hr[valid][None], 4))
    hr_nan = hr.copy()
    hr_nan[~valid] = np.nan
    assert quality.ergas(sr, hr_nan, 4, nodata=np.nan) == quality.ergas(sr, hr, 4, nodata=-9999)
    assert quality.sam(sr, hr, mask=valid) == quality.sam(sr, hr, nodata=-9999)


# ----------------------------------------------------------------------------- tiles
def test_tile_sums_add_up_to_the_whole_image_figures():
    hr = scene(13, 80, 64)
    sr = np.clip(hr.astype(int) + np.random.default_rng(13).integers(-9, 10, hr.shape), 0, 255).astype(np.uint8)
    lr = bicubic_lr(hr, 4)
    lr[:3, :3] = 0
    whole_db, _ = quality.lr_consistency(sr, lr, nodata=0)
    whole_down = quality.degrade(sr, 4, np.uint8)
    total, sam_erg = QualitySums(), QualitySums()
    for y0 in range(0, 20, 7):  # LR tiles of 7x6, uneven at the edges
        for x0 in range(0, 16, 6):
            box = (y0, min(y0 + 7, 20), x0, min(x0 + 6, 16))
            down = whole_down[box[0]:box[1], box[2]:box[3]]  # (the streamed scorer's halo: test_scene_quality)
            ref = lr[box[0]:box[1], box[2]:box[3]]
            total = total + QualitySums.of(down, ref, quality.valid_mask(ref, nodata=0))
            hy, hx = slice(4 * box[0], 4 * box[1]), slice(4 * box[2], 4 * box[3])
            sam_erg = sam_erg + QualitySums.of(sr[hy, hx], hr[hy, hx])
    assert total.psnr() == pytest.approx(whole_db, rel=1e-12)
    assert total.count == 20 * 16 - 9
    assert sam_erg.sam() == pytest.approx(quality.sam(sr, hr), rel=1e-12)
    assert sam_erg.ergas(4) == pytest.approx(quality.ergas(sr, hr, 4), rel=1e-12)
    # guard: the halo matters; a tile degraded on its own differs from the whole image near its edges
    alone = quality.degrade(sr[28:56, 24:48], 4, np.uint8)
    assert not np.array_equal(alone, whole_down[7:14, 6:12])


# ----------------------------------------------------------------------------- BasicSR registry and errors
def test_metrics_are_in_basicsrs_registry_under_their_own_names_and_basicsr_metrics_ignore_lq():
    for name in NAMES:
        assert name in METRIC_REGISTRY and METRIC_REGISTRY.get(name).__module__ == 'segsr_basicsr.metrics.registered'
    hr = scene(14)
    sr = np.clip(hr.astype(int) + 7, 0, 255).astype(np.uint8)
    lr = bicubic_lr(hr, 4)
    data = dict(img=sr, img2=hr, lq=lr)
    assert calculate_metric(data, dict(type='calculate_psnr', crop_border=4)) == \
        calculate_metric(dict(img=sr, img2=hr), dict(type='calculate_psnr', crop_border=4))
    c = 4
    assert calculate_metric(data, dict(type=NAMES[1], crop_border=c)) == \
        pytest.approx(sam_ref(sr[c:-c, c:-c], hr[c:-c, c:-c]), abs=1e-6)
    assert calculate_metric(data, dict(type=NAMES[2], crop_border=c)) == \
        pytest.approx(ergas_ref(sr[c:-c, c:-c], hr[c:-c, c:-c], 4))
    assert calculate_metric(dict(img=sr, img2=hr), dict(type=NAMES[2], scale=2)) == pytest.approx(ergas_ref(sr, hr, 2))
    chw = dict(img=sr.transpose(2, 0, 1), img2=hr.transpose(2, 0, 1), lq=lr.transpose(2, 0, 1))
    for name in NAMES:
        assert calculate_metric(chw, dict(type=name, input_order='CHW')) == calculate_metric(data, dict(type=name))


def test_what_cannot_be_computed_is_refused_in_words():
    hr = scene(15)
    lr = bicubic_lr(hr, 4)
    with pytest.raises(OptionError, match='LR input.*SeGSRModel'):
        calculate_metric(dict(img=hr, img2=hr), dict(type=NAMES[0]))
    with pytest.raises(OptionError, match='scale'):
        calculate_metric(dict(img=hr, img2=hr), dict(type=NAMES[2]))
    with pytest.raises(OptionError, match='HR reference'):
        calculate_metric(dict(img=hr, lq=lr), dict(type=NAMES[1]))
    with pytest.raises(DataError, match='integer multiple'):
        quality.lr_consistency(hr[:, :-1], lr)
    with pytest.raises(DataError, match='at least 2 bands'):
        quality.sam(hr[..., :1], hr[..., :1])
    with pytest.raises(DataError, match='no valid pixel'):
        quality.sam(hr, np.zeros_like(hr), nodata=0)
    with pytest.raises(DataError, match='mean 0'):
        quality.ergas(hr, np.zeros_like(hr), 4)


# ----------------------------------------------------------------------------- option files and validation
def test_the_demo_test_file_uses_the_metrics_and_passes_the_option_check():
    from pathlib import Path

    from segsr_basicsr.io.option_file import load_option_file
    from segsr_basicsr.options import check_val
    path = Path(__file__).resolve().parents[1] / 'options' / 'demo' / 'test_SeGSR_HAT_demo_x4.yml'
    opt = load_option_file(path)
    types = {m['type'] for m in opt['val']['metrics'].values()}
    assert set(NAMES) <= types
    check_val(opt, path, is_train=False)
    opt['val']['metrics']['lr']['type'] = 'calculate_segsr_lr_consistancy'
    with pytest.raises(OptionError, match='calculate_segsr_lr_consistancy'):
        check_val(opt, path, is_train=False)


def test_segsr_model_validation_reports_the_metrics_in_results_json(tmp_path, monkeypatch):
    """`segsr_basicsr.test` on a tiny EDSR: the LR-consistency in results.json is that of the saved SR
    image against the LR file, so validation passed the LR image (not the HR) to the metric."""
    from basicsr.archs import build_network
    from segsr_basicsr.archs.tiny_configs import TINY_EDSR
    from segsr_basicsr.io.checkpoint import network_metadata
    from segsr_basicsr.test import main
    from train_opts import write_opt
    (tmp_path / 'gt').mkdir()
    (tmp_path / 'lq').mkdir()
    for i in range(2):
        hr = scene(20 + i, 48, 40)
        cv2.imwrite(str(tmp_path / 'gt' / f'field{i}.png'), hr)
        cv2.imwrite(str(tmp_path / 'lq' / f'field{i}.png'), bicubic_lr(hr, 4))
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, tmp_path / 'net.pth')
    metrics = {'psnr_rgb': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': False},
               'lr_consistency': {'type': NAMES[0]}, 'sam': {'type': NAMES[1], 'crop_border': 4},
               'ergas': {'type': NAMES[2], 'crop_border': 4}}
    opt = {'name': 'q', 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 0, 'network_g': dict(TINY_EDSR),
           'path': {'pretrain_network_g': str(tmp_path / 'net.pth'), 'param_key_g': 'params'},
           'datasets': {'test_1': {'name': 'set', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'gt'),
                                   'dataroot_lq': str(tmp_path / 'lq'), 'io_backend': {'type': 'disk'}}},
           'val': {'save_img': True, 'metrics': metrics}}
    monkeypatch.chdir(tmp_path)
    main(['-opt', write_opt(tmp_path / 'q.yml', opt)])
    entry = json.loads((tmp_path / 'results' / 'q' / 'results.json').read_text())['datasets']['set']
    assert set(entry['metrics']) == set(metrics)
    for stem, values in entry['per_image'].items():
        sr = cv2.imread(entry['sr_images'][stem])
        lr, hr = cv2.imread(str(tmp_path / 'lq' / f'{stem}.png')), cv2.imread(str(tmp_path / 'gt' / f'{stem}.png'))
        assert values['lr_consistency'] == pytest.approx(psnr_ref(bicubic_lr(sr, 4), lr), abs=1e-9)
        assert values['sam'] == pytest.approx(sam_ref(sr[4:-4, 4:-4], hr[4:-4, 4:-4]), abs=1e-6)
        assert values['ergas'] == pytest.approx(ergas_ref(sr[4:-4, 4:-4], hr[4:-4, 4:-4], 4))
    assert entry['metrics']['sam'] == pytest.approx(np.mean([v['sam'] for v in entry['per_image'].values()]))


def test_the_best_checkpoint_keeps_the_lowest_sam_and_ergas(tmp_path):
    """BasicSR takes 'higher is better' for any metric without ``better``: net_g_best.pth would keep the worst
    SAM. The model and the tables ask ``registered.better`` instead."""
    from basicsr.models import build_model
    from tests.test_model import make_opt
    opt = make_opt(tmp_path)
    opt['val']['metrics'] = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                             'sam': {'type': 'calculate_segsr_sam'},
                             'ergas_up': {'type': 'calculate_segsr_ergas', 'scale': 4, 'better': 'higher'}}
    model = build_model(opt)
    model._initialize_best_metric_results('set')
    record = model.best_metric_results['set']
    assert [(m, record[m]['better'], record[m]['val']) for m in record] == [
        ('psnr', 'higher', float('-inf')), ('sam', 'lower', float('inf')), ('ergas_up', 'higher', float('-inf'))]
    model._update_best_metric_result('set', 'sam', 3.0, 10)
    model._update_best_metric_result('set', 'sam', 5.0, 20)
    model._initialize_best_metric_results('set')  # later validations keep the record
    assert (record['sam']['val'], record['sam']['iter']) == (3.0, 10)
