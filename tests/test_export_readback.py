"""Every ONNX file segsr-export writes and verifies runs through segsr-infer and the API with their defaults.

One tiny guided checkpoint per backbone; each export variant users run is written once per module by the
CLI (the default 256 tile, --dynamic with --fp16, --maps, --deepness at --tile 64 with a wide overlap, and
a windowed HAT whose inputs need padding) and run on an image smaller than the tile, one whose sides are not
a multiple of the window, and a GeoTIFF wider than the default tile, with no tile flags anywhere.
"""
import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401  (compat layer before basicsr)

pytest.importorskip('onnxruntime', reason="the export extra is not installed: pip install '.[export]'")
pytest.importorskip('onnxscript', reason="the export extra is not installed: pip install '.[export]'")
rasterio = pytest.importorskip('rasterio')

import cv2  # noqa: E402
from basicsr.archs import build_network  # noqa: E402

from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE, TINY_HAT  # noqa: E402
from segsr_basicsr.io.checkpoint import network_metadata  # noqa: E402

NETS = {'EDSR': dict(TINY_EDSR, guidance=dict(TINY_GUIDANCE)),
        'HAT': dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))}
#: variant -> (backbone, segsr-export flags)
VARIANTS = {'default-tile': ('EDSR', []), 'dynamic-fp16': ('EDSR', ['--dynamic', '--tile', '16', '--fp16']),
            'maps': ('EDSR', ['--tile', '16', '--maps']),
            'deepness-tile64-overlap40': ('EDSR', ['--tile', '64', '--deepness', '--overlap', '40']),
            'hat-window4': ('HAT', ['--tile', '16'])}
#: LR (height, width): smaller than every tile; not a multiple of HAT's window 4; a scene wider than 256
SMALL, ODD, SCENE = (13, 10), (37, 45), (40, 300)


def _cli(main, argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """{'root', 'inputs', checkpoints by backbone, ONNX files by variant} written by the CLIs."""
    from segsr_basicsr.export import main
    root = tmp_path_factory.mktemp('readback')
    out = {'root': root, 'inputs': root / 'in'}
    for name, opt in NETS.items():
        torch.manual_seed(0)
        net = build_network(dict(opt))
        out[name] = root / f'{name}.pth'
        torch.save({'params': net.state_dict(), **network_metadata({'network_g': opt, 'scale': 4})}, out[name])
    for variant, (name, flags) in VARIANTS.items():
        out[variant] = root / f'{variant}.onnx'
        assert _cli(main, ['--model', out[name], '--output', out[variant], *flags]) == 0, variant
    rng = np.random.default_rng(0)
    out['inputs'].mkdir()
    for stem, shape in (('small', SMALL), ('odd', ODD)):
        cv2.imwrite(str(out['inputs'] / f'{stem}.png'), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    h, w = SCENE
    profile = dict(driver='GTiff', width=w, height=h, count=3, dtype='uint8', crs='EPSG:32633',
                   transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5))
    with rasterio.open(out['inputs'] / 'scene.tif', 'w', **profile) as dst:
        dst.write(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    return out


def _rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_an_exported_file_runs_through_segsr_infer_and_the_api_with_their_defaults(variant, files, tmp_path):
    """No tile flag anywhere: segsr-infer writes every output at x4 (maps too for a --maps file), the API gives
    the same pixels, and both stay close to the checkpoint the file came from."""
    from segsr_basicsr.infer import main
    onnx, ckpt = files[variant], files[VARIANTS[variant][0]]
    maps = ['--save-maps'] if variant == 'maps' else []
    code = _cli(main, ['--model', onnx, '--input', files['inputs'], '--output', tmp_path / 'cli', '--no-progress',
                       *maps])
    assert code == 0, variant
    model, reference = segsr_basicsr.load_model(onnx, device='cpu'), segsr_basicsr.load_model(ckpt, device='cpu')
    for stem, (h, w) in (('small', SMALL), ('odd', ODD)):
        lr = _rgb(files['inputs'] / f'{stem}.png')
        cli = _rgb(tmp_path / 'cli' / f'{stem}_SeGSR_x4.png')
        api = model.upscale(lr)
        assert cli.shape == api.shape == (4 * h, 4 * w, 3) and np.array_equal(cli, api), (variant, stem)
        diff = np.abs(api.astype(int) - reference.upscale(lr).astype(int))
        # a fixed file pads a small image to its tile and tiles a larger one (the checkpoint runs it whole):
        # measured 0.2-1.5 levels on average; a wrong channel order or scale would be tens
        assert diff.mean() < 2.0, (variant, stem, diff.mean())
    model.upscale_raster(files['inputs'] / 'scene.tif', tmp_path / 'api_scene.tif')
    with rasterio.open(tmp_path / 'cli' / 'scene_SeGSR_x4.tif') as a, rasterio.open(tmp_path / 'api_scene.tif') as b:
        assert (a.height, a.width) == (4 * SCENE[0], 4 * SCENE[1]) and a.crs == b.crs and a.transform == b.transform
        assert np.array_equal(a.read(), b.read())
    if variant == 'maps':
        assert len(list((tmp_path / 'cli').glob('*_semantic_unit*'))) == 3 * 2  # 3 inputs, 2 SR units
        _, got = model.upscale(_rgb(files['inputs'] / 'odd.png'), return_maps=True)
        _, want = reference.upscale(_rgb(files['inputs'] / 'odd.png'), return_maps=True)
        assert [m.shape for m in got] == [m.shape for m in want] == [(1, *ODD)] * 2


@pytest.mark.parametrize('tile,fits', [(18, 16), (4, 8), (6, 8)])
def test_export_refuses_a_fixed_tile_segsr_infer_could_not_run_and_names_one_that_works(tile, fits, files,
                                                                                        tmp_path, capsys):
    """HAT's window is 4: a fixed tile off the window, or with no step after the default overlap, is refused
    before any export work, in one line naming the tile that works; no file is left."""
    from segsr_basicsr.export import main
    code = _cli(main, ['--model', files['HAT'], '--output', tmp_path / 'm.onnx', '--tile', tile])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('segsr-export: error: ')]
    assert code == 2 and len(lines) == 1 and f'use --tile {fits}.' in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_the_default_raster_tile_fits_a_window_that_does_not_divide_256(tmp_path):
    """'auto' for a streamed raster is the tile nearest 256 that fits the network (258 for a window of 6),
    so a network with such a window runs a GeoTIFF with the API's defaults."""
    from segsr_basicsr.api import SeGSRUpscaler
    from segsr_basicsr.options import TileSpec, check_tile, fitting_tile
    assert [fitting_tile(256, w) for w in (1, 4, 6, 16, 112, 200)] == [256, 256, 258, 256, 224, 400]
    check_tile(TileSpec('auto').for_input(True, 6), 6, 'tile')
    torch.manual_seed(0)
    net = build_network(dict(type='SeGSR_SwinIR', img_size=12, window_size=6, depths=[1], embed_dim=12,
                             num_heads=[2], mlp_ratio=2, img_range=1., upsampler='pixelshuffle',
                             resi_connection='1conv', upscale=2))
    src = tmp_path / 'scene.tif'
    profile = dict(driver='GTiff', width=20, height=14, count=3, dtype='uint8')
    with rasterio.open(src, 'w', **profile) as dst:
        dst.write(np.random.default_rng(1).integers(0, 256, (3, 14, 20), dtype=np.uint8))
    SeGSRUpscaler(net.eval()).upscale_raster(src, tmp_path / 'out.tif')
    with rasterio.open(tmp_path / 'out.tif') as ds:
        assert (ds.height, ds.width) == (28, 40)
