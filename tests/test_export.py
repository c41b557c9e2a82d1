"""segsr-export (issue 24): ONNX files verified against PyTorch, Deepness metadata, OnnxNetwork, safetensors.

Tiny guided networks with every part active (LoRA B != 0, modulation convs not zero), exported once per
module at small tiles; each test compares onnxruntime with the PyTorch network itself.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401  (compat layer before basicsr)

ort = pytest.importorskip('onnxruntime', reason="the export extra is not installed: pip install '.[export]'")
pytest.importorskip('onnxscript', reason="the export extra is not installed: pip install '.[export]'")

from basicsr.archs import build_network  # noqa: E402

from segsr_basicsr.archs.tiny_configs import TINY_EDSR, TINY_GUIDANCE, TINY_HAT  # noqa: E402
from segsr_basicsr.io.checkpoint import META_KEY, network_metadata, save_safetensors  # noqa: E402
from tests.tiny_configs import RS_SAMPLES  # noqa: E402

GUIDANCE = dict(TINY_GUIDANCE, modulation_init='default')
TINY_SWINIR = dict(type='SeGSR_SwinIR', img_size=8, window_size=4, depths=[1, 1], embed_dim=12, num_heads=[2, 2],
                   mlp_ratio=2, img_range=1., upsampler='pixelshuffle', resi_connection='1conv')
NETS = {'HAT': dict(type='SeGSR_HAT', **TINY_HAT), 'EDSR': dict(TINY_EDSR), 'SwinIR': TINY_SWINIR}
TILE = 16
#: (backbone, scale, dynamic): every backbone at x2 and x4 with a fixed tile; dynamic HAT (shifted windows, OCAB,
#: CLIP grid) and EDSR. SwinIR exports dynamic too (docs/export.md) but takes 14 s: left out to keep this file fast
CASES = [(n, s, False) for n in NETS for s in (2, 4)] + [('HAT', 4, True), ('EDSR', 2, True)]


def _net_opt(name, scale):
    return dict(NETS[name], upscale=scale, guidance=dict(GUIDANCE))


def _build(net_opt, seed=0):
    """A network whose LoRA and modulations change the output (B = 0 / zero convs would hide them)."""
    torch.manual_seed(seed)
    net = build_network(dict(net_opt))
    for m in net.modules():
        if hasattr(m, 'lora_B'):
            torch.nn.init.normal_(m.lora_B, std=0.05)
    return net.eval()


def _real_image():
    """A real aerial image (H, W, 3) float32 RGB in [0, 1] when the shared samples are here, else None."""
    files = sorted(p for p in RS_SAMPLES.rglob('*') if p.suffix.lower() in ('.png', '.jpg', '.tif', '.tiff'))
    if not files:
        return None
    from segsr_basicsr.io.images import read_image
    return np.ascontiguousarray(read_image(files[0])[..., ::-1], dtype=np.float32) / 255


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(backbone, scale, dynamic) -> (merged PyTorch net, checkpoint, onnx path, export report)."""
    from segsr_basicsr.inference.onnx_export import export_onnx
    root = tmp_path_factory.mktemp('export')
    real, out = _real_image(), {}
    for name, scale, dynamic in CASES:
        opt = _net_opt(name, scale)
        net = _build(opt)
        ckpt = root / f'{name}_x{scale}.pth'
        torch.save({'params': net.state_dict(), **network_metadata({'network_g': opt, 'scale': scale})}, ckpt)
        net.merge_lora()
        path = root / f'{name}_x{scale}{"_dyn" if dynamic else ""}.onnx'
        report = export_onnx(net, path, tile=TILE, dynamic=dynamic, check_image=real)
        out[name, scale, dynamic] = net, ckpt, path, report
    return out


def _ort(path, x):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {'input': x.numpy()})[0]


@pytest.mark.parametrize('case', CASES, ids=[f'{n}-x{s}{"-dynamic" if d else ""}' for n, s, d in CASES])
def test_export_matches_pytorch(case, exported):
    net, _, path, report = exported[case]
    name, scale, dynamic = case
    assert [c['max_abs_diff'] <= 1e-4 for c in report['checks']] == [True] * (3 if dynamic else 2)
    print(case, [(c['check'], f'{c["max_abs_diff"]:.2g}') for c in report['checks']])
    sizes = [(TILE, TILE)] + ([(TILE + 8, 2 * TILE)] if dynamic else [])
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            ref = net(x).numpy()
        got = _ort(path, x)
        assert got.shape == (1, 3, h * scale, w * scale)
        assert np.abs(got - ref).max() <= 1e-4


def test_fixed_tile_file_refuses_other_sizes(exported):
    path = exported['HAT', 4, False][2]
    with pytest.raises(Exception, match='(?i)dimension|shape'):
        _ort(path, torch.rand(1, 3, TILE + 4, TILE))


def test_export_leaves_the_pytorch_network_unchanged(exported):
    """The export-only encoder path is taken out again: same outputs, no instance overrides, no fake caches."""
    net = exported['HAT', 4, True][0]
    enc = net.guidance.encoder
    assert 'positional_embedding' not in vars(enc) and 'token_grid' not in vars(enc)
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        first = net(x)
        fresh = _build(_net_opt('HAT', 4))
        fresh.merge_lora()
        assert torch.equal(first, fresh(x))


# ----------------------------------------------------------------------------- OnnxNetwork in the engine
@pytest.mark.parametrize('dynamic', [False, True], ids=['fixed', 'dynamic'])
def test_onnx_network_through_the_engine_equals_pytorch(dynamic, exported):
    from segsr_basicsr.inference.engine import Engine
    from segsr_basicsr.inference.onnx_net import OnnxNetwork
    from segsr_basicsr.options import tile_spec
    net, _, path, _ = exported['HAT', 4, dynamic]
    onnx_net = OnnxNetwork(path)
    assert (onnx_net.upscale, onnx_net.size_multiple, onnx_net.fixed_tile) == (4, 4, None if dynamic else TILE)
    assert onnx_net.eval() is onnx_net and onnx_net.train() is onnx_net and not onnx_net.training
    lq = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
    spec = tile_spec({'size': TILE, 'overlap': 4}, 'tile')
    ref = Engine(net).upscale_tensor(lq, spec)
    got = Engine(onnx_net).upscale_tensor(lq, spec)
    assert got.shape == ref.shape == (2, 3, 37 * 4, 45 * 4)
    assert (got - ref).abs().max() <= 1e-4


def test_onnx_network_pads_a_small_input_to_its_tile_and_refuses_a_larger_one(exported):
    from segsr_basicsr.errors import InferError
    from segsr_basicsr.inference.onnx_net import OnnxNetwork
    onnx_net = OnnxNetwork(exported['EDSR', 2, False][2])
    assert onnx_net(torch.rand(1, 3, 10, 13)).shape == (1, 3, 20, 26)
    with pytest.raises(InferError, match=f'takes {TILE}x{TILE} LR tiles, got 17x8'):
        onnx_net(torch.rand(1, 3, 17, 8))


def test_fp16_and_maps(tmp_path, exported):
    from segsr_basicsr.inference.onnx_export import export_onnx
    net = exported['EDSR', 4, False][0]
    report = export_onnx(net, tmp_path / 'half.onnx', tile=TILE, fp16=True)
    assert max(c['max_abs_diff'] for c in report['checks']) <= 2e-2 and report['tolerance'] == 2e-2
    session = ort.InferenceSession(str(tmp_path / 'half.onnx'), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == 'tensor(float)'  # I/O stay float32
    export_onnx(net, tmp_path / 'maps.onnx', tile=TILE, maps=True)
    x = torch.rand(1, 3, TILE, TILE)
    sr, maps = ort.InferenceSession(str(tmp_path / 'maps.onnx')).run(None, {'input': x.numpy()})
    net.record_semantic_maps = True
    with torch.no_grad():
        ref = net(x)
    ref_maps, net.record_semantic_maps, net.semantic_maps = torch.cat(net.semantic_maps, 1), False, None
    assert maps.shape == (1, 2, TILE, TILE) and np.abs(sr - ref.numpy()).max() <= 1e-4
    assert np.abs(maps - ref_maps.numpy()).max() <= 1e-4 * max(1.0, float(ref_maps.abs().max()))


# ----------------------------------------------------------------------------- the CLI, Deepness
def _cli(argv, capsys):
    from segsr_basicsr.export import main
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_deepness_metadata_and_shape_rules(exported, tmp_path, capsys):
    ckpt = exported['HAT', 4, False][1]
    out = tmp_path / 'deepness.onnx'
    code, stdout, err = _cli(['--model', ckpt, '--output', out, '--tile', TILE, '--deepness', '--resolution', 30],
                             capsys)
    assert code == 0, err
    assert 'onnxruntime (CPU) vs PyTorch max |diff|' in stdout
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    # what Deepness' ModelBase reads (json.loads of each value; the type is capitalize()d)
    assert str(meta['model_type']).capitalize() == 'Superresolution'
    assert meta['tile_size'] == TILE and meta['tiles_overlap'] == 25 and meta['resolution'] == 30.0
    assert meta['standardization_mean'] == [0.0] * 3 and meta['standardization_std'] == [1.0] * 3
    assert meta['segsr_scale'] == 4 and meta['segsr_network_g']['type'] == 'SeGSR_HAT'
    (inp, ), (outp, ) = session.get_inputs(), session.get_outputs()
    assert inp.shape == [1, 3, TILE, TILE] and outp.shape == [1, 3, 4 * TILE, 4 * TILE]
    assert inp.type == outp.type == 'tensor(float)'


@pytest.mark.parametrize('extra,fragment', [
    (['--deepness', '--dynamic'], '--deepness needs a fixed --tile'),
    (['--deepness', '--maps'], 'Deepness accepts super-resolution models with one output only'),
    (['--tolerance', '1e-12'], 'is above the tolerance 1e-12'),
    (['--dynamic', '--tile', '18'], 'must be a multiple of 4'),
], ids=['deepness-dynamic', 'deepness-maps', 'verification-fails', 'dynamic-size'])
def test_cli_refuses_with_one_line_and_leaves_no_file(extra, fragment, exported, tmp_path, capsys):
    ckpt = exported['EDSR', 4, False][1]
    argv = ['--model', ckpt, '--output', tmp_path / 'm.onnx'] + (extra if '--tile' in extra else extra + ['--tile', TILE])
    code, _, err = _cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith('segsr-export: error: ')]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_cli_refuses_an_onnx_file_as_the_checkpoint(exported, tmp_path, capsys):
    code, _, err = _cli(['--model', exported['EDSR', 4, False][2], '--output', tmp_path / 'm.onnx'], capsys)
    assert code == 2 and 'is already an ONNX file; segsr-export reads a .pth or .safetensors' in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_never_overwrites_without_overwrite_and_never_the_checkpoint(exported, tmp_path, capsys):
    ckpt = exported['EDSR', 2, False][1]
    (tmp_path / 'm.onnx').write_bytes(b'old')
    code, _, err = _cli(['--model', ckpt, '--output', tmp_path / 'm.onnx', '--tile', TILE], capsys)
    assert code == 2 and 'refusing to overwrite existing output' in err
    assert (tmp_path / 'm.onnx').read_bytes() == b'old'
    code, _, err = _cli(['--model', ckpt, '--safetensors', ckpt, '--overwrite'], capsys)
    assert code == 2 and 'name a .safetensors file' in err
    st = tmp_path / 'w.safetensors'
    st.write_bytes(b'x')
    code, _, err = _cli(['--model', st, '--safetensors', st, '--overwrite'], capsys)
    assert code == 2 and 'refusing to overwrite it' in err and st.read_bytes() == b'x'


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_equals_the_pth(exported, tmp_path, capsys):
    ckpt = exported['HAT', 4, False][1]
    out = tmp_path / 'w.safetensors'
    code, stdout, err = _cli(['--model', ckpt, '--safetensors', out], capsys)
    assert code == 0 and 'wrote' in stdout, err
    from segsr_basicsr.io.checkpoint import load_checkpoint
    loaded, original = load_checkpoint(out), torch.load(ckpt, weights_only=True)
    assert loaded[META_KEY] == json.loads(json.dumps(original[META_KEY]))
    assert loaded['params'].keys() == original['params'].keys()
    assert all(torch.equal(loaded['params'][k], v) for k, v in original['params'].items())
    img = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    a, b = segsr_basicsr.load_model(ckpt, device='cpu'), segsr_basicsr.load_model(out, device='cpu')
    assert np.array_equal(a.upscale(img, tile=None), b.upscale(img, tile=None))


def _bad_safetensors(tmp_path, ckpt, edit):
    original = torch.load(ckpt, weights_only=True)
    state = dict(original['params'])
    edit(state)
    path = tmp_path / 'bad.safetensors'
    save_safetensors(state, original[META_KEY], path)
    return path


@pytest.mark.parametrize('edit,fragments', [
    (lambda s: s.update({'conv_first.weight': torch.zeros(9, 3, 3, 3)}),
     ['bad.safetensors [params] does not fit network_g', 'size mismatch for conv_first.weight']),
    (lambda s: s.pop('conv_first.weight'), ['bad.safetensors', '1 missing key(s)', 'conv_first.weight']),
], ids=['wrong-shape', 'missing-key'])
def test_bad_safetensors_is_refused_in_one_line(edit, fragments, exported, tmp_path, capsys):
    path = _bad_safetensors(tmp_path, exported['EDSR', 4, False][1], edit)
    code, _, err = _cli(['--model', path, '--output', tmp_path / 'm.onnx', '--tile', TILE], capsys)
    lines = [line for line in err.splitlines() if line.startswith('segsr-export: error: ')]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / 'm.onnx').exists()


@pytest.mark.parametrize('damage', ['truncated', 'text'])
def test_unreadable_safetensors_is_a_checkpoint_error(damage, exported, tmp_path):
    from segsr_basicsr.errors import CheckpointError
    from segsr_basicsr.io.checkpoint import load_checkpoint
    good = _bad_safetensors(tmp_path, exported['EDSR', 2, False][1], lambda s: None)
    data = good.read_bytes()
    bad = tmp_path / f'{damage}.safetensors'
    bad.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'not weights\n')
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(bad)
    assert '\n' not in str(exc.value) and f'Cannot read safetensors file {bad}' in str(exc.value)
    assert 'truncated or not a safetensors file' in str(exc.value)


def _geotiff(path, h=40, w=36):
    rasterio = pytest.importorskip('rasterio')
    data = np.random.default_rng(3).integers(0, 256, (3, h, w), dtype=np.uint8)
    profile = dict(driver='GTiff', width=w, height=h, count=3, dtype='uint8', crs='EPSG:32633',
                   transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5))
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)
    return rasterio


def test_segsr_infer_runs_the_exported_file_like_the_checkpoint(exported, tmp_path, capsys):
    """--backend onnxruntime: same tiler, streaming and georeferencing; pixels within one level of PyTorch's."""
    from segsr_basicsr.infer import main
    _, ckpt, path, _ = exported['HAT', 4, False]
    (tmp_path / 'in').mkdir()
    rasterio = _geotiff(tmp_path / 'in' / 'scene.tif')
    common = ['--input', str(tmp_path / 'in'), '--no-progress', '--tile', str(TILE)]
    main(['--model', str(ckpt), '--merge-lora', '--output', str(tmp_path / 'torch'), *common])
    main(['--model', str(path), '--backend', 'onnxruntime', '--output', str(tmp_path / 'onnx'), *common])
    with rasterio.open(tmp_path / 'torch' / 'scene_SeGSR_x4.tif') as a, \
            rasterio.open(tmp_path / 'onnx' / 'scene_SeGSR_x4.tif') as b:
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
        assert a.profile == b.profile and a.transform == b.transform and a.crs == b.crs
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


@pytest.mark.parametrize('extra,fragment', [
    (['--tile', '32'], 'HAT_x4.onnx takes 16x16 LR tiles only'),
    (['--backend', 'torch'], 'is an ONNX file; run it with --backend onnxruntime'),
    (['--amp', 'bf16'], 'amp apply to PyTorch checkpoints'),
], ids=['other-tile', 'torch-backend', 'amp'])
def test_segsr_infer_refuses_what_an_onnx_file_cannot_do(extra, fragment, exported, tmp_path, capsys):
    from segsr_basicsr.infer import main
    (tmp_path / 'in').mkdir()
    _geotiff(tmp_path / 'in' / 'scene.tif')
    with pytest.raises(SystemExit) as exc:
        main(['--model', str(exported['HAT', 4, False][2]), '--input', str(tmp_path / 'in'), '--output',
              str(tmp_path / 'out'), '--no-progress', *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('segsr-infer: error: ')]
    assert exc.value.code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not list(tmp_path.glob('out/*.tif'))
