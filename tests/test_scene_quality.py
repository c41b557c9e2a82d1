"""``segsr-infer --quality``: each output's LR-consistency (no ground truth) beside it, streamed, the same
from the engine's blocks, from the output file, and from ranks sharing the scene; without the flag nothing
changes. The figures themselves are tested in tests/test_quality_metrics.py."""
import math
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segsr_basicsr.archs.tiny_configs import TINY_EDSR
from segsr_basicsr.inference import scene_quality as Q
from segsr_basicsr.io.checkpoint import network_metadata
from segsr_basicsr.metrics import quality
from train_opts import PYTHON, env

rasterio = pytest.importorskip('rasterio')


def _pair(seed, h=23, w=29):
    rng = np.random.default_rng(seed)
    lr = (rng.random((h, w, 3)) * 200 + 20).astype(np.uint8)
    sr = np.clip(np.repeat(np.repeat(lr, 4, 0), 4, 1).astype(int) + rng.integers(-9, 10, (4 * h, 4 * w, 3)), 0, 255)
    return lr, sr.astype(np.uint8)


def _stream(lr, sr, valid=None, rows=256, cols=2048):
    err = np.full(lr.shape[:2], -1, np.float32)

    class Map:
        def add(self, y0, x0, e):
            assert (err[y0:y0 + e.shape[1], x0:x0 + e.shape[2]] == -1).all()  # every LR pixel scored once
            err[y0:y0 + e.shape[1], x0:x0 + e.shape[2]] = e[0]
    st = Q.LRConsistencyStream(Q.array_window(lr, valid), lr.shape[:2], 4, np.uint8, map_writer=Map())
    figures = Q.score_blocks(st, lambda r0, r1, c0, c1: np.moveaxis(sr[r0:r1, c0:c1], -1, 0), sr.shape[:2],
                             rows, cols)
    return figures, err


@pytest.mark.parametrize('rows,cols', [(4, 4), (8, 12), (20, 2048), (92, 8), (12, 40)])
def test_streamed_figure_and_map_equal_the_whole_image_ones_for_any_block_grid(rows, cols):
    lr, sr = _pair(0)
    db, emap = quality.lr_consistency(sr, lr)
    figures, err = _stream(lr, sr, rows=rows, cols=cols)
    assert figures['lr_consistency_db'] == db and figures['scored_pixels'] == lr.shape[0] * lr.shape[1]
    np.testing.assert_allclose(err, emap, rtol=1e-6)
    # nodata: the whole-image rule (nodata filled, pixels within the halo of nodata left out), block by block
    valid = np.ones(lr.shape[:2], bool)
    valid[:6, :5], valid[15, 20] = False, False
    filled = np.where(np.repeat(np.repeat(valid, 4, 0), 4, 1)[..., None], sr, 0)
    scored = Q.scored_pixels(valid)
    want, _ = quality.lr_consistency(filled, lr, mask=scored)
    figures, err = _stream(lr, np.where(filled > 0, sr, 7), valid, rows, cols)  # nodata values do not matter
    assert figures['lr_consistency_db'] == want and figures['scored_pixels'] == scored.sum() < valid.sum()
    assert np.isnan(err[~scored]).all() and not np.isnan(err[scored]).any()


@pytest.fixture(scope='module')
def job(tmp_path_factory):
    """A tiny checkpoint, a georeferenced GeoTIFF with nodata, a PNG, and one segsr-infer run of each with
    --quality-map, one without."""
    from basicsr.archs import build_network
    from segsr_basicsr.infer import main
    root = tmp_path_factory.mktemp('quality')
    torch.manual_seed(0)
    ckpt = root / 'net.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict(),
                **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, ckpt)
    (root / 'in').mkdir()
    rng = np.random.default_rng(0)
    data = cv2.GaussianBlur(rng.integers(1, 256, (40, 36, 3), dtype=np.uint8), (3, 3), 0).transpose(2, 0, 1).copy()
    data[:, :6, :7] = 0
    with rasterio.open(root / 'in' / 'g.tif', 'w', driver='GTiff', width=36, height=40, count=3, dtype='uint8',
                       nodata=0, crs='EPSG:32633', transform=rasterio.transform.from_origin(5e5, 4e6, 10, 10)) as dst:
        dst.write(data)
    cv2.imwrite(str(root / 'in' / 'p.png'), cv2.GaussianBlur(rng.integers(0, 256, (20, 24, 3), np.uint8), (3, 3), 0))
    common = ['--model', str(ckpt), '--input', str(root / 'in'), '--no-progress', '--tile', '16', '--tile-overlap', '4']
    main([*common, '--output', str(root / 'plain')])
    main([*common, '--output', str(root / 'q'), '--quality-map'])
    return root, common


def test_segsr_infer_quality_writes_figure_and_map_for_a_geotiff_and_a_png(job, capsys):
    from segsr_basicsr.api import load_model
    root, _ = job
    out = root / 'q'
    rec = Q.read_quality(out / 'g_SeGSR_x4.tif')
    model = load_model(root / 'net.pth', 'cpu')
    # the figure streamed from the engine's blocks is the one read back from the written file
    again = model.score_raster(root / 'in' / 'g.tif', out / 'g_SeGSR_x4.tif')
    assert rec['lr_consistency_db'] == again['lr_consistency_db'] and rec['scored_pixels'] == again['scored_pixels']
    assert 0 < rec['scored_pixels'] < 40 * 36 and rec['map'] == 'g_SeGSR_x4_lrc.tif' and rec['input'].endswith('g.tif')
    with rasterio.open(out / 'g_SeGSR_x4_lrc.tif') as m, rasterio.open(root / 'in' / 'g.tif') as src:
        err = m.read(1)
        assert (m.width, m.height, m.crs, m.transform, m.dtypes[0]) == (36, 40, src.crs, src.transform, 'float32')
        assert math.isnan(m.nodata) and np.isnan(err[:6, :7]).all() and not np.isnan(err[10:, 10:]).any()
    # PNG: the whole output against the whole input, the map a plain float32 TIFF
    lr, sr = cv2.imread(str(root / 'in' / 'p.png')), cv2.imread(str(out / 'p_SeGSR_x4.png'))
    db, emap = quality.lr_consistency(sr, lr)
    assert Q.read_quality(out / 'p_SeGSR_x4.png')['lr_consistency_db'] == db and 15 < db < 60
    import tifffile
    np.testing.assert_allclose(tifffile.imread(out / 'p_SeGSR_x4_lrc.tif'), emap, rtol=1e-6)


def test_without_the_flag_outputs_are_unchanged_and_no_quality_file_is_written(job):
    root, _ = job
    plain = sorted(p.name for p in (root / 'plain').iterdir() if p.is_file())
    assert plain == ['g_SeGSR_x4.tif', 'p_SeGSR_x4.png']
    assert (root / 'plain' / 'p_SeGSR_x4.png').read_bytes() == (root / 'q' / 'p_SeGSR_x4.png').read_bytes()
    with rasterio.open(root / 'plain' / 'g_SeGSR_x4.tif') as a, rasterio.open(root / 'q' / 'g_SeGSR_x4.tif') as b:
        assert np.array_equal(a.read(), b.read()) and a.profile == b.profile


def test_a_rerun_keeps_finished_quality_and_redoes_a_scene_whose_quality_file_went(job, capsys):
    from segsr_basicsr.infer import main
    root, common = job
    out = root / 'q'
    capsys.readouterr()
    main([*common, '--output', str(out), '--quality-map'])
    assert '2 already done, skipped' in capsys.readouterr().out
    (out / 'g_SeGSR_x4.quality.json').unlink()
    main([*common, '--output', str(out), '--quality-map'])
    text = capsys.readouterr().out
    assert 'g.tif -> ' in text and 'LR-consistency' in text and '1 already done, skipped' in text
    assert Q.read_quality(out / 'g_SeGSR_x4.tif')['lr_consistency_db'] > 0


def test_two_ranks_sharing_a_scene_give_the_figures_and_map_of_one_process(job, tmp_path):
    root, common = job
    args = ['-m', 'segsr_basicsr.infer', *common[:2], '--input', str(root / 'in' / 'g.tif'), '--no-progress',
            '--tile', '8', '--tile-overlap', '2', '--quality-map']
    one = subprocess.run([PYTHON, *args, '--output', str(tmp_path / 'one')], env=env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([PYTHON, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args,
                          '--output', str(tmp_path / 'two')], env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-2000:]
    assert 'assembled from 2 strips, LR-consistency' in two.stdout
    a, b = (Q.read_quality(tmp_path / d / 'g_SeGSR_x4.tif') for d in ('one', 'two'))
    assert a['lr_consistency_db'] == b['lr_consistency_db'] and a['scored_pixels'] == b['scored_pixels']
    line = [ln for ln in one.stdout.splitlines() if ln.startswith('segsr-infer: 1 scene')][0]
    assert f'LR-consistency {a["lr_consistency_db"]:.2f} dB' in line and line.split('LR-')[1] in two.stdout
    with rasterio.open(tmp_path / 'one' / 'g_SeGSR_x4_lrc.tif') as x, \
            rasterio.open(tmp_path / 'two' / 'g_SeGSR_x4_lrc.tif') as y:
        px, py = dict(x.profile), dict(y.profile)
        assert math.isnan(px.pop('nodata')) and math.isnan(py.pop('nodata')) and px == py
        assert np.array_equal(x.read(), y.read(), equal_nan=True)


def test_the_report_tabulates_lr_consistency_sam_and_ergas_with_their_bicubic_row_and_best(tmp_path):
    from segsr_basicsr.data.prep import bicubic_lr
    from segsr_basicsr.results.results_json import pairs_digest
    from segsr_basicsr.results.tables import build_table, render_markdown
    hr = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (64, 48, 3), np.uint8), (5, 5), 0)
    cv2.imwrite(str(tmp_path / 'hr.png'), hr)
    cv2.imwrite(str(tmp_path / 'lr.png'), bicubic_lr(hr, 4))
    pairs = [(str(tmp_path / 'lr.png'), str(tmp_path / 'hr.png'))]
    opts = {'lr': {'type': 'calculate_segsr_lr_consistency'}, 'sam': {'type': 'calculate_segsr_sam', 'crop_border': 4},
            'ergas': {'type': 'calculate_segsr_ergas', 'crop_border': 4, 'scale': 4}}

    def run(name, lr, sam, ergas):
        return {'run': name, 'iter': 1, 'scale': 4, 'datasets': {'set': {
            'metrics': {'lr': lr, 'sam': sam, 'ergas': ergas}, 'metric_options': opts, 'pairs': pairs,
            'digest': pairs_digest(pairs)}}}
    header, rows, best = build_table([run('a', 40.0, 2.0, 5.0), run('b', 45.0, 3.0, 4.0)])
    assert header[3:] == ['set lr', 'set sam', 'set ergas']
    assert best == [45.0, 2.0, 4.0]  # LR-consistency: highest; SAM and ERGAS: lowest
    bicubic = rows[-1]
    assert bicubic[0] == 'bicubic' and all(isinstance(v, float) and v > 0 for v in bicubic[3:])
    assert '**2.0000**' in render_markdown(header, rows, best)


def test_seam_check_prints_tiled_against_untiled_in_levels_and_db(job, capsys):
    from segsr_basicsr.seams import main
    root, _ = job
    main(['--model', str(root / 'net.pth'), '--input', str(root / 'in' / 'p.png'), '--tile', '8', '12',
          '--tile-overlap', '2', '4', '--device', 'cpu'])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('| ') and ln[2].isdigit()]
    assert [ln.split('|')[1:3] for ln in lines] == [[' 8 ', ' 2 '], [' 12 ', ' 2 ']]  # 4*4 > 8, 4*4 > 12: out
    from segsr_basicsr.api import load_model
    model, img = load_model(root / 'net.pth', 'cpu'), np.ascontiguousarray(cv2.imread(str(root / 'in' / 'p.png'))[..., ::-1])
    diff = np.abs(model.upscale(img, tile=8, overlap=2).astype(float) - model.upscale(img, tile=0))
    cells = [c.strip() for c in lines[0].split('|')[3:7]]
    assert cells[:2] == [f'{diff.max():.0f}', f'{diff.mean():.4f}'] and diff.max() > 0
    assert float(lines[0].split('|')[6]) == pytest.approx(10 * np.log10(255 ** 2 / (diff ** 2).mean()), abs=0.005)
