"""Whole scenes as remote-sensing products: streamed GeoTIFFs, masks, radiometry, COG, the API, bad inputs.

Every raster is written by the test itself (rasterio), georeferenced, small enough for seconds on CPU
but larger than the tile in both directions.
"""
import errno
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segsr_basicsr  # noqa: F401,I001
from basicsr.archs import build_network
from segsr_basicsr.api import SeGSRUpscaler, load_model
from segsr_basicsr.errors import SceneWarning
from segsr_basicsr.io.checkpoint import META_KEY, network_metadata
from segsr_basicsr.infer import main

rasterio = pytest.importorskip('rasterio')
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from segsr_basicsr.archs.tiny_configs import TINY_EDSR  # noqa: E402
TRANSFORM = from_origin(500000.0, 4200000.0, 10.0, 10.0)  # 10 m pixels, UTM 33N


class NearestX4(nn.Module):
    """A 'network' that only repeats pixels: the output must give back the input's values exactly."""
    upscale = 4

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode='nearest')


class MustNotRun(NearestX4):
    def forward(self, x):
        raise AssertionError('the network ran on a scene without a valid pixel')


def smooth(rng, shape, lo, hi):
    """Smooth random bands (bands, h, w) in [lo, hi]: image-like, so SR outputs are sensible."""
    import cv2
    bands = [cv2.GaussianBlur(rng.random(shape[1:]).astype(np.float32), (0, 0), 2) for _ in range(shape[0])]
    bands = np.stack(bands)
    bands = (bands - bands.min()) / (bands.max() - bands.min())
    return lo + bands * (hi - lo)


def write_raster(path, data, nodata=None, colorinterp=None, descriptions=None, tags=None, transform=TRANSFORM,
                 crs='EPSG:32633', **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    count, h, w = data.shape
    prof = dict(driver='GTiff', width=w, height=h, count=count, dtype=data.dtype.name, nodata=nodata, **kw)
    if transform is not None:
        prof.update(crs=crs, transform=transform)
    elif 'gcps' in kw:
        prof.update(crs=crs)
    with rasterio.open(path, 'w', **prof) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        for b, d in enumerate(descriptions or []):
            dst.set_band_description(b + 1, d)
        if tags:
            dst.update_tags(**tags)
    return path


@pytest.fixture
def ckpt(tmp_path):
    """A self-describing checkpoint (as training writes it) and the network in it."""
    torch.manual_seed(1)
    net = build_network(dict(TINY_EDSR)).eval()
    path = tmp_path / 'net_g_latest.pth'
    torch.save({'params': net.state_dict(), **network_metadata({'network_g': TINY_EDSR, 'scale': 4})}, path)
    return path, net


def run(ckpt_path, *args):
    main(['--model', str(ckpt_path), '--device', 'cpu', '--no-progress', *map(str, args)])


def up(a, s=4):
    """Nearest upsampling of (..., h, w)."""
    return np.repeat(np.repeat(a, s, -2), s, -1)


# ----------------------------------------------------------------------------- round trips
def test_8bit_rgb_streamed_equals_in_memory_and_keeps_georeferencing(tmp_path, ckpt):
    path, net = ckpt
    rng = np.random.default_rng(0)
    rgb = smooth(rng, (3, 70, 90), 0, 255).round().astype(np.uint8)
    src = write_raster(tmp_path / 'in' / 'scene.tif', rgb, tags={'ACQUISITION': '2024-06-01'},
                       descriptions=['red', 'green', 'blue'])
    run(path, '--input', src, '--output', tmp_path / 'out', '--tile', 32, '--tile-overlap', 8, '--tile-batch', 3)
    with rasterio.open(tmp_path / 'out' / 'scene_SeGSR_x4.tif') as out:
        assert (out.count, out.dtypes[0], out.width, out.height) == (3, 'uint8', 360, 280)
        assert out.crs.to_epsg() == 32633
        assert out.transform.almost_equals(from_origin(500000.0, 4200000.0, 2.5, 2.5))
        assert out.bounds == pytest.approx(rasterio.open(src).bounds)
        assert out.tags()['ACQUISITION'] == '2024-06-01' and out.descriptions == ('red', 'green', 'blue')
        assert out.profile['tiled'] and out.profile['blockxsize'] == 256
        streamed = np.moveaxis(out.read(), 0, -1)
    model = load_model(path, device='cpu')
    in_memory = model.upscale(np.moveaxis(rgb, 0, -1), tile=32, overlap=8, batch=3)
    assert np.array_equal(streamed, in_memory)  # same tiles, same blending, same rounding
    with torch.no_grad():  # and the tiled scene is the whole-image network output up to blending rounding
        whole = net(torch.from_numpy(rgb[None].astype(np.float32) / 255)).clamp(0, 1).mul(255).round()
    whole = whole[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(streamed.astype(int) - whole)[16:-16, 16:-16].max() <= 1


def test_nodata_border_is_filled_before_the_network_and_stays_nodata(tmp_path, ckpt):
    """The same valid pixels with a nodata border of 0 or of 255 give the same output: the border never
    reaches the network, and comes back as nodata (mask upsampled by nearest)."""
    path, _ = ckpt
    rng = np.random.default_rng(1)
    rgb = smooth(rng, (3, 60, 80), 20, 230).round().astype(np.uint8)
    valid = np.zeros((60, 80), bool)
    valid[7:52, 5:71] = True
    outs = []
    for nd in (0, 255):
        data = np.where(valid, rgb, nd).astype(np.uint8)
        src = write_raster(tmp_path / f'in{nd}' / 'border.tif', data, nodata=nd)
        run(path, '--input', src, '--output', tmp_path / f'out{nd}', '--tile', 24, '--tile-overlap', 8)
        with rasterio.open(tmp_path / f'out{nd}' / 'border_SeGSR_x4.tif') as out:
            assert out.nodata == nd and out.count == 3 and out.dtypes[0] == 'uint8'
            assert np.array_equal(out.dataset_mask() > 0, up(valid))
            data = out.read()
            assert (data[:, ~up(valid)] == nd).all()
            outs.append(data[:, up(valid)])
    assert np.array_equal(outs[0], outs[1])


def test_alpha_band_is_upsampled_by_nearest_and_transparent_pixels_are_not_an_error(tmp_path, ckpt):
    path, _ = ckpt
    rng = np.random.default_rng(2)
    rgba = smooth(rng, (4, 40, 50), 0, 255).round().astype(np.uint8)
    alpha = np.full((40, 50), 255, np.uint8)
    alpha[:, :9] = 0
    alpha[30:, 20:30] = 128  # partial transparency survives as it is
    rgba[3] = alpha
    src = write_raster(tmp_path / 'in' / 'rgba.tif', rgba, photometric='RGB', alpha='YES')
    assert rasterio.open(src).colorinterp[3] == ColorInterp.alpha
    run(path, '--input', src, '--output', tmp_path / 'out', '--tile', 24, '--tile-overlap', 8)
    with rasterio.open(tmp_path / 'out' / 'rgba_SeGSR_x4.tif') as out:
        assert out.count == 4 and out.colorinterp[3] == ColorInterp.alpha
        data = out.read()
    assert np.array_equal(data[3], up(alpha))
    assert (data[:3, up(alpha) == 0] == 0).all()


def test_16bit_four_band_product_keeps_dtype_range_band_layout_and_metadata(tmp_path, ckpt):
    """12-bit-in-16 RGB + NIR: uint16 out, values within 0..4095, NIR carried through bicubic."""
    path, _ = ckpt
    rng = np.random.default_rng(3)
    data = smooth(rng, (4, 50, 70), 100, 4000).round().astype(np.uint16)
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    src = write_raster(tmp_path / 'in' / 'rgbn.tif', data, nodata=0, colorinterp=interp,
                       descriptions=['B4', 'B3', 'B2', 'B8'])
    run(path, '--input', src, '--output', tmp_path / 'out', '--tile', 32, '--tile-overlap', 16,
        '--max-value', 4095)
    with rasterio.open(tmp_path / 'out' / 'rgbn_SeGSR_x4.tif') as out:
        assert (out.count, out.dtypes[0], out.nodata) == (4, 'uint16', 0)
        assert out.descriptions == ('B4', 'B3', 'B2', 'B8') and list(out.colorinterp) == interp
        sr = out.read()
    assert sr[:3].max() <= 4095 and sr[:3].min() >= 0
    nir = F.interpolate(torch.from_numpy(data[3:].astype(np.float32))[None], scale_factor=4, mode='bicubic',
                        align_corners=False)[0, 0].round().clamp(0, 65535).numpy()
    assert np.abs(sr[3].astype(int) - nir.astype(int))[8:-8, 8:-8].max() <= 1


@pytest.mark.parametrize('dtype,args', [(np.uint8, {}), (np.uint16, {'max_value': 4095}),
                                        (np.uint16, {'stretch': (2, 98)}), (np.float32, {'max_value': 1.0})])
def test_radiometry_is_mapped_and_mapped_back_exactly(tmp_path, dtype, args):
    """With a pixel-repeating 'network' the output is the input repeated, in its dtype: the mapping to
    [0, 1] (max value, or a percentile stretch with values beyond the percentiles) is inverted exactly."""
    rng = np.random.default_rng(4)
    hi = {np.uint8: 255, np.uint16: 4095, np.float32: 1.0}[dtype]
    data = smooth(rng, (3, 36, 44), 0, hi).astype(dtype) if dtype == np.float32 else \
        smooth(rng, (3, 36, 44), 0, hi).round().astype(dtype)
    src = write_raster(tmp_path / 'in.tif', data)
    model = SeGSRUpscaler(NearestX4())
    model.upscale_raster(src, tmp_path / 'out.tif', tile=16, overlap=4, progress=False, **args)
    with rasterio.open(tmp_path / 'out.tif') as out:
        assert out.dtypes[0] == np.dtype(dtype).name
        sr = out.read()
    if dtype == np.float32:
        np.testing.assert_allclose(sr, up(data), atol=1e-6)
    else:
        assert np.array_equal(sr, up(data))


@pytest.mark.parametrize('driver,ext,opts', [('VRT', '.vrt', {}),
                                              ('JP2OpenJPEG', '.jp2', {'QUALITY': '100', 'REVERSIBLE': 'YES'})])
def test_vrt_and_jp2_inputs_stream_like_geotiff(tmp_path, driver, ext, opts):
    from rasterio.shutil import copy as gdal_copy
    if driver not in rasterio.drivers.raster_driver_extensions().values():
        pytest.skip(f'GDAL here has no {driver} driver')
    data = smooth(np.random.default_rng(12), (3, 30, 40), 0, 255).round().astype(np.uint8)
    tif = write_raster(tmp_path / 'scene.tif', data)
    other = tmp_path / f'scene{ext}'
    gdal_copy(str(tif), str(other), driver=driver, **opts)
    SeGSRUpscaler(NearestX4()).upscale_raster(other, tmp_path / 'o.tif', tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / 'o.tif') as out:
        assert out.crs.to_epsg() == 32633 and out.transform.almost_equals(from_origin(500000, 4200000, 2.5, 2.5))
        assert np.array_equal(out.read(), up(data))


def test_gray_band_stays_one_band(tmp_path):
    data = smooth(np.random.default_rng(5), (1, 30, 20), 0, 255).round().astype(np.uint8)
    src = write_raster(tmp_path / 'gray.tif', data)
    SeGSRUpscaler(NearestX4()).upscale_raster(src, tmp_path / 'o.tif', tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / 'o.tif') as out:
        assert out.count == 1 and np.array_equal(out.read(), up(data))


def test_gcps_and_rpcs_are_carried_with_scaled_image_coordinates(tmp_path):
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC
    data = smooth(np.random.default_rng(6), (3, 24, 32), 0, 255).round().astype(np.uint8)
    gcps = [GroundControlPoint(row=0, col=0, x=10.0, y=50.0), GroundControlPoint(row=24, col=32, x=10.1, y=49.9),
            GroundControlPoint(row=0, col=32, x=10.1, y=50.0)]
    src = write_raster(tmp_path / 'gcp.tif', data, transform=None, gcps=gcps, crs='EPSG:4326')
    model = SeGSRUpscaler(NearestX4())
    model.upscale_raster(src, tmp_path / 'gcp_x4.tif', tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / 'gcp_x4.tif') as out:
        got, crs = out.gcps
    assert crs.to_epsg() == 4326
    assert [(g.row, g.col, g.x, g.y) for g in got] == [(4 * g.row, 4 * g.col, g.x, g.y) for g in gcps]

    rpc = RPC(height_off=100, height_scale=500, lat_off=50, lat_scale=0.05, line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_off=12, line_scale=12, long_off=10, long_scale=0.05,
              samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=16, samp_scale=16)
    src = write_raster(tmp_path / 'rpc.tif', data, transform=None, rpcs=rpc)
    model.upscale_raster(src, tmp_path / 'rpc_x4.tif', tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / 'rpc_x4.tif') as out:
        r = out.rpcs
    assert (r.line_off, r.line_scale, r.samp_off, r.samp_scale) == pytest.approx((12 * 4 + 1.5, 48, 16 * 4 + 1.5, 64))
    assert r.lat_off == pytest.approx(50) and r.long_off == pytest.approx(10)


def test_all_nodata_scene_is_written_through_with_a_warning_without_running_the_network(tmp_path):
    src = write_raster(tmp_path / 'empty.tif', np.zeros((3, 30, 40), np.uint8), nodata=0)
    with pytest.warns(SceneWarning, match='every pixel is nodata'):
        SeGSRUpscaler(MustNotRun()).upscale_raster(src, tmp_path / 'o.tif', tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / 'o.tif') as out:
        assert out.shape == (120, 160) and out.nodata == 0 and not out.dataset_mask().any()


# ----------------------------------------------------------------------------- COG and memory
def test_cog_output_is_tiled_with_overviews_and_ifds_first(tmp_path, ckpt):
    import tifffile
    path, _ = ckpt
    data = smooth(np.random.default_rng(7), (3, 260, 300), 0, 255).round().astype(np.uint8)
    src = write_raster(tmp_path / 'in' / 'big.tif', data, nodata=0)
    run(path, '--input', src, '--output', tmp_path / 'out', '--cog', '--tile', 128, '--tile-overlap', 16)
    out_path = tmp_path / 'out' / 'big_SeGSR_x4.tif'
    assert sorted(p.name for p in out_path.parent.iterdir()) == ['.segsr-done', out_path.name]  # no intermediate
    with rasterio.open(out_path) as out:
        assert out.tags(ns='IMAGE_STRUCTURE').get('LAYOUT') == 'COG'
        assert out.profile['tiled'] and out.profile['blockxsize'] == 512
        assert out.overviews(1) == [2, 4] and out.crs.to_epsg() == 32633 and out.nodata == 0
        assert out.transform.almost_equals(from_origin(500000.0, 4200000.0, 2.5, 2.5))
    with tifffile.TiffFile(out_path) as tif:
        pages = [p for p in tif.pages if not p.is_mask] if hasattr(tif.pages[0], 'is_mask') else list(tif.pages)
        ifd_offsets = [p.offset for p in tif.pages]
        assert ifd_offsets == sorted(ifd_offsets)  # all IFDs ...
        first_data = min(min(o for o in p.dataoffsets if o) for p in tif.pages)
        assert max(ifd_offsets) < first_data  # ... before any image data
        # smallest overview's data first, full resolution last
        assert max(pages[-1].dataoffsets) < min(o for o in pages[0].dataoffsets if o)


def test_scene_larger_than_the_tile_streams_with_a_small_memory_budget(tmp_path, ckpt):
    """Tiles in both directions; the numpy memory of a run does not grow with the scene's height and stays
    a fraction of the output's size (the in-memory path held the whole output array)."""
    path, _ = ckpt
    model = load_model(path, device='cpu')
    peaks = {}
    for h in (160, 640):
        data = smooth(np.random.default_rng(8), (3, h, 120), 0, 255).round().astype(np.uint8)
        src = write_raster(tmp_path / f'tall{h}.tif', data, tiled=True, blockxsize=64, blockysize=64)
        tracemalloc.start()
        try:
            st = model.upscale_raster(src, tmp_path / f'tall{h}_x4.tif', tile=32, overlap=8, progress=False)
            peaks[h] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert st['tiles'] >= (h // 32) * 4
    full = {h: 3 * (h * 4) * (120 * 4) for h in peaks}  # bytes of the whole output, which is never held
    # holding the output would grow the peak by the whole output's growth; streaming grows it by a few
    # small Python objects per tile row (measured: ~0.09 of it)
    assert peaks[640] - peaks[160] < 0.2 * (full[640] - full[160]) and peaks[640] < 0.5 * full[640], (peaks, full)
    ref = model.upscale(np.moveaxis(data, 0, -1), tile=32, overlap=8)
    with rasterio.open(tmp_path / 'tall640_x4.tif') as out:
        assert np.array_equal(np.moveaxis(out.read(), 0, -1), ref)


# ----------------------------------------------------------------------------- API
def test_api_upscale_keeps_dtype_and_layout_and_needs_a_mapping_for_16bit():
    model = SeGSRUpscaler(NearestX4())
    rgb16 = (np.random.default_rng(9).random((10, 12, 3)) * 4000).astype(np.uint16)
    with pytest.raises(ValueError, match='16-bit.*--max-value'):
        model.upscale(rgb16)
    assert np.array_equal(model.upscale(rgb16, max_value=4095), up(np.moveaxis(rgb16, -1, 0)).transpose(1, 2, 0))
    rgba = np.random.default_rng(9).integers(0, 256, (10, 12, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, 3] = 0
    sr = model.upscale(rgba, tile=8, overlap=2)
    assert sr.shape == (40, 48, 4) and sr.dtype == np.uint8
    assert (sr[:12, :, :] == 0).all() and np.array_equal(sr[12:], up(np.moveaxis(rgba, -1, 0)).transpose(1, 2, 0)[12:])


def test_training_writes_self_describing_checkpoints_that_infer_loads_without_opt(tmp_path):
    """SeGSRModel.save adds network_g + scale to net_g_*.pth; BasicSR's own loader still reads it."""
    from basicsr.models import build_model

    from tests.test_model import batch, make_opt
    model = build_model(make_opt(tmp_path))
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    path = tmp_path / 'exp' / 'models' / 'net_g_1.pth'
    saved = torch.load(path, weights_only=True)
    assert saved[META_KEY] == {'network_g': TINY_EDSR, 'scale': 4, 'iter': 1}  # + the iteration (results.json)
    model.load_network(model.net_g, str(path), strict=True, param_key='params')  # the extra key is ignored
    x = torch.rand(1, 3, 12, 14)
    with torch.no_grad():
        assert torch.equal(load_model(path, device='cpu').net(x), model.net_g_ema.eval()(x))  # params_ema


# ----------------------------------------------------------------------------- bad inputs
def _bad(tmp_path, capsys, ckpt_path, *args, out='out'):
    with pytest.raises(SystemExit) as e:
        run(ckpt_path, *args, '--output', tmp_path / out)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1, err
    leftovers = list((tmp_path / out).iterdir()) if (tmp_path / out).exists() else []
    assert leftovers == [], leftovers  # nothing under the output name, no temporaries
    return err


def scene_file(tmp_path, name='scene.tif', shape=(3, 64, 80), dtype=np.uint8, **kw):
    data = smooth(np.random.default_rng(10), shape, 0, 255 if dtype == np.uint8 else 4095).round().astype(dtype)
    return write_raster(tmp_path / 'in' / name, data, **kw)


def test_truncated_geotiff_is_one_line_naming_the_file(tmp_path, ckpt, capsys):
    src = scene_file(tmp_path, tiled=True, blockxsize=16, blockysize=16)
    raw = src.read_bytes()
    src.write_bytes(raw[:len(raw) * 2 // 3])
    err = _bad(tmp_path, capsys, ckpt[0], '--input', src, '--tile', 32, '--tile-overlap', 8)
    assert str(src) in err and 'truncated' in err


def test_unreadable_window_mid_scene(tmp_path, ckpt, capsys, monkeypatch):
    from segsr_basicsr.io.raster import RasterScene
    src = scene_file(tmp_path)
    orig = RasterScene.read_window

    def flaky(self, y0, y1, x0, x1):
        if y0 > 0 and x0 > 0:
            raise rasterio.errors.RasterioIOError('TIFFReadEncodedStrip() failed (simulated bad sector)')
        return orig(self, y0, y1, x0, x1)

    monkeypatch.setattr(RasterScene, 'read_window', flaky)
    err = _bad(tmp_path, capsys, ckpt[0], '--input', src, '--tile', 32, '--tile-overlap', 8)
    assert str(src) in err and 'rows' in err and 'simulated bad sector' in err


def test_output_disk_full(tmp_path, ckpt, capsys, monkeypatch):
    from segsr_basicsr.io.raster import BlockWriter
    src = scene_file(tmp_path, shape=(3, 140, 150))
    calls = []

    def full(self, data, window):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return self.dst.write(data, window=window)

    monkeypatch.setattr(BlockWriter, 'write_block', full)
    err = _bad(tmp_path, capsys, ckpt[0], '--input', src, '--tile', 48, '--tile-overlap', 8)
    assert 'scene_SeGSR_x4.tif' in err and 'No space left on device' in err


def test_interrupted_run_leaves_nothing_under_the_final_name(tmp_path, ckpt, monkeypatch):
    from segsr_basicsr.io.raster import BlockWriter
    src = scene_file(tmp_path, shape=(3, 140, 150))

    def interrupt(self, data, window):
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockWriter, 'write_block', interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(ckpt[0], '--input', src, '--output', tmp_path / 'out', '--tile', 48, '--tile-overlap', 8)
    assert not (tmp_path / 'out').exists()  # nothing: the folder the job made goes with its job lock


def test_bands_out_of_range(tmp_path, ckpt, capsys):
    src = scene_file(tmp_path, shape=(4, 20, 20))
    err = _bad(tmp_path, capsys, ckpt[0], '--input', src, '--bands', 1, 2, 5)
    assert str(src) in err and 'does not pick 3 of its 4 bands' in err


def test_16bit_without_a_mapping(tmp_path, ckpt, capsys):
    src = scene_file(tmp_path, dtype=np.uint16)
    err = _bad(tmp_path, capsys, ckpt[0], '--input', src)
    assert str(src) in err and '16-bit' in err and '--max-value' in err and '--stretch' in err


def test_output_inside_the_input_folder(tmp_path, ckpt, capsys):
    src = scene_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(ckpt[0], '--input', src, '--output', src.parent)
    assert e.value.code == 2 and 'is the folder of the input' in capsys.readouterr().err
    assert [p.name for p in src.parent.iterdir()] == ['scene.tif']


def test_old_checkpoint_without_opt_says_what_to_pass(tmp_path, capsys):
    net = build_network(dict(TINY_EDSR))
    old = tmp_path / 'old.pth'
    torch.save({'params': net.state_dict()}, old)
    src = scene_file(tmp_path)
    err = _bad(tmp_path, capsys, old, '--input', src)
    assert str(old) in err and '-opt' in err


# ----------------------------------------------------------------------------- maps and progress
def test_semantic_maps_of_a_raster_are_georeferenced_geotiffs_on_the_lr_grid(tmp_path):
    from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT
    net = build_network(dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))).eval()
    model = SeGSRUpscaler(net)
    data = smooth(np.random.default_rng(11), (3, 24, 36), 0, 255).round().astype(np.uint8)
    src = write_raster(tmp_path / 'in.tif', data)
    maps = [tmp_path / 'unit1.tif', tmp_path / 'unit2.tif']
    model.upscale_raster(src, tmp_path / 'sr.tif', tile=16, overlap=4, maps_dst=maps, progress=False)
    _, ref = model.upscale(np.moveaxis(data, 0, -1), tile=16, overlap=4, return_maps=True)
    for path, m in zip(maps, ref):
        with rasterio.open(path) as out:
            assert out.shape == (24, 36) and out.dtypes[0] == 'float32' and out.transform == TRANSFORM
            np.testing.assert_allclose(out.read(), m, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif', 'sr.tif', 'unit1.tif', 'unit2.tif']


def test_progress_without_a_terminal_prints_plain_lines_with_tiles_megapixels_and_eta():
    import io
    from segsr_basicsr.utils.progress import Progress
    stream = io.StringIO()
    bar = Progress(10, 'scene.tif', 'tiles', megapixels=4.0, every=0, stream=stream)
    bar(5)
    bar.close()
    line = stream.getvalue().strip()
    assert line.startswith('scene.tif: 5/10 tiles, 2.0/4.0 MP') and 'MP/s' in line and 'ETA' in line


def test_api_self_ensemble_is_the_mean_of_the_eight_transforms_through_the_network(ckpt):
    """segsr-infer --self-ensemble / load_model(..., self_ensemble=True): per tile, the 8 views averaged."""
    from segsr_basicsr.inference.engine import forward_padded
    from segsr_basicsr.inference.self_ensemble import dihedral, dihedral_inverse
    _, net = ckpt
    img = np.random.default_rng(3).random((12, 14, 3)).astype(np.float32)
    got = SeGSRUpscaler(net, self_ensemble=True).upscale(img, tile=None)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        mean = torch.stack([dihedral_inverse(forward_padded(net, dihedral(x, k)), k) for k in range(8)]).mean(0)
    expected = np.clip(mean[0].permute(1, 2, 0).numpy(), 0, 1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - SeGSRUpscaler(net).upscale(img, tile=None)).max() > 1e-4


def test_tile_off_the_window_grid_is_refused_before_any_image_is_read(tmp_path, capsys):
    """--tile 6 on a window-4 HAT would pad each tile and lose the overlap (seams); one line, exit 2."""
    from segsr_basicsr.archs.tiny_configs import TINY_HAT
    net_opt = dict(type='SeGSR_HAT', **TINY_HAT)
    path = tmp_path / 'net_g_latest.pth'
    torch.save({'params': build_network(dict(net_opt)).state_dict(),
                **network_metadata({'network_g': net_opt, 'scale': 4})}, path)
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        run(path, '--input', src, '--output', tmp_path / 'out', '--tile', 6, '--tile-overlap', 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith('segsr-infer: error: tile size 6 is not a multiple of') and 'Use 8' in err[0]
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('cog', [False, True], ids=['gtiff', 'cog'])
def test_a_scene_in_bands_assembles_to_the_file_one_call_writes(tmp_path, cog):
    """How ranks share one raster: each band written as a part, then assembled, gives the file (and semantic maps)
    of one upscale_raster call: same pixels, internal mask, georeferencing, tags; COG layout too."""
    from tests.tiny_configs import TINY_GUIDANCE
    torch.manual_seed(2)
    net = build_network(dict(TINY_EDSR, guidance=dict(TINY_GUIDANCE))).eval()
    model = SeGSRUpscaler(net)
    data = smooth(np.random.default_rng(5), (3, 70, 30), 0, 255).round().astype(np.uint8)
    src = write_raster(tmp_path / 'in.tif', data, tags={'SENSOR': 'x'})
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(src, 'r+') as ds:
        mask = np.full((70, 30), 255, np.uint8)
        mask[:9, :7] = 0
        ds.write_mask(mask)
    kw = dict(tile=16, overlap=4, cog=cog)
    maps = [tmp_path / f'one_unit{k}.tif' for k in (1, 2)]
    model.upscale_raster(src, tmp_path / 'one.tif', maps_dst=maps, progress=False, **kw)
    n = model.scene_strips(src, 3, 16, 4)
    parts = [[tmp_path / f'p{k}{name}.tif' for name in ('', '_u1', '_u2')] for k in range(n)]
    for k, (part, *map_parts) in enumerate(parts):
        model.upscale_raster(src, part, maps_dst=map_parts, progress=False, strip=(k, n), **kw)
    two_maps = [tmp_path / f'two_unit{k}.tif' for k in (1, 2)]
    model.assemble_raster(src, [p[0] for p in parts], tmp_path / 'two.tif', cog=cog,
                        map_parts=[p[1:] for p in parts], maps_dst=two_maps)
    assert n == 3
    with rasterio.open(tmp_path / 'two.tif') as out:
        assert (out.dataset_mask()[:36, :28] == 0).all() and out.dataset_mask()[36:].all()  # the mask came through
    for a, b in [('one.tif', 'two.tif')] + [(m.name, t.name) for m, t in zip(maps, two_maps)]:
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert np.array_equal(x.read(), y.read()) and np.array_equal(x.dataset_mask(), y.dataset_mask()), a
            assert x.profile == y.profile and x.tags() == y.tags() and x.overviews(1) == y.overviews(1), a
