"""One inference engine: validation, segsr_basicsr.test, segsr-infer and SeGSRUpscaler give the same pixels,
and every property the engine's docs promise is pinned by a test that fails when that property alone breaks."""
import cv2
import numpy as np
import pytest
import torch
import yaml

import segsr_basicsr  # noqa: F401,I001
from basicsr.archs import build_network
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from segsr_basicsr.io.checkpoint import network_metadata
from segsr_basicsr.inference.engine import Engine, forward_padded
from segsr_basicsr.inference.tiling import TileSpec, axis_weights, tile_starts
from tests.test_model import make_opt
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT

NET = dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))
LR_SIZE = (18, 23)  # not multiples of the window (4) nor of the tile


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny guided checkpoint whose LoRA, modulation and guidance weights are all non-zero, and one LR/HR pair."""
    root = tmp_path_factory.mktemp('engine')
    torch.manual_seed(0)
    net = build_network(dict(NET))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # LoRA B and the zero-initialised modulation convs become live
    ckpt = root / 'net_g.pth'
    torch.save({'params': net.state_dict(), **network_metadata({'network_g': NET, 'scale': 4})}, ckpt)
    rng = np.random.default_rng(0)
    h, w = LR_SIZE
    gt = cv2.GaussianBlur(rng.integers(0, 256, (4 * h, 4 * w, 3), dtype=np.uint8), (5, 5), 0)
    for sub, img in (('gt', gt), ('lq', cv2.resize(gt, (w, h), interpolation=cv2.INTER_AREA))):
        (root / sub).mkdir()
        cv2.imwrite(str(root / sub / 'field.png'), img)
    return root, ckpt


def _val_opt(tile, ensemble):
    return {'tile': tile, 'self_ensemble': ensemble, 'save_img': True, 'suffix': None}


def via_validation(root, ckpt, tile, ensemble, tmp_path):
    opt = make_opt(tmp_path, network=dict(NET), ema_decay=0)
    opt['path'].update(pretrain_network_g=str(ckpt), param_key_g='params')
    opt['val'] = _val_opt(tile, ensemble)
    model = build_model(opt)
    ds_opt = {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'gt'),
              'dataroot_lq': str(root / 'lq'), 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}
    loader = build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=0, dist=False, sampler=None, seed=0)
    model.validation(loader, 1, None, save_img=True)
    assert model.get_bare_model(model.net_g).training  # validation restores train mode
    return cv2.imread(str(tmp_path / 'exp' / 'visualization' / 'field' / 'field_1.png'))


def via_test(root, ckpt, tile, ensemble, tmp_path, monkeypatch):
    from segsr_basicsr.test import main
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    opt = {'name': 'eq', 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 0, 'network_g': NET,
           'path': {'pretrain_network_g': str(ckpt), 'param_key_g': 'params', 'strict_load_g': True},
           'datasets': {'test_1': {'name': 'set', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'gt'),
                                   'dataroot_lq': str(root / 'lq'), 'io_backend': {'type': 'disk'}}},
           'val': _val_opt(tile, ensemble)}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    main(['-opt', str(tmp_path / 'test.yml')])
    return cv2.imread(str(tmp_path / 'results' / 'eq' / 'visualization' / 'set' / 'field_eq.png'))


def via_infer(root, ckpt, tile, ensemble, tmp_path):
    from segsr_basicsr.infer import main
    args = ['--model', str(ckpt), '--input', str(root / 'lq' / 'field.png'), '--output', str(tmp_path / 'o'),
            '--device', 'cpu', '--no-progress', '--tile', str(tile['size'] if tile else 0)]
    if tile:
        args += ['--tile-overlap', str(tile['overlap'])]
    main(args + (['--self-ensemble'] if ensemble else []))
    return cv2.imread(str(tmp_path / 'o' / 'field_SeGSR_x4.png'))


def via_api(root, ckpt, tile, ensemble):
    model = segsr_basicsr.load_model(ckpt, device='cpu', self_ensemble=ensemble)
    rgb = cv2.imread(str(root / 'lq' / 'field.png'))[..., ::-1]
    sr = model.upscale(rgb, tile=tile['size'] if tile else None, overlap=tile['overlap'] if tile else None)
    return np.ascontiguousarray(sr[..., ::-1])


@pytest.mark.parametrize('ensemble', [False, True], ids=['plain', 'self_ensemble'])
@pytest.mark.parametrize('tile', [None, {'size': 8, 'overlap': 4}], ids=['whole', 'tiled'])
def test_the_four_entry_points_give_identical_pixels(setup, tile, ensemble, tmp_path, monkeypatch):
    root, ckpt = setup
    outs = {
        'validation': via_validation(root, ckpt, tile, ensemble, tmp_path / 'val'),
        'segsr_basicsr.test': via_test(root, ckpt, tile, ensemble, tmp_path / 'test', monkeypatch),
        'segsr-infer': via_infer(root, ckpt, tile, ensemble, tmp_path / 'infer'),
        'SeGSRUpscaler.upscale': via_api(root, ckpt, tile, ensemble),
    }
    h, w = LR_SIZE
    ref = outs['validation']
    assert ref is not None and ref.shape == (4 * h, 4 * w, 3)
    for name, out in outs.items():
        assert out is not None and out.shape == ref.shape, name
        diff = np.abs(out.astype(int) - ref).max()
        assert diff == 0, f'{name} differs from validation by up to {diff} grey levels'


def test_tiles_and_self_ensemble_really_change_the_pixels(setup):
    """Guard that the equality test can fail: each setting changes the output of this network."""
    root, ckpt = setup
    outs = [via_api(root, ckpt, t, e) for t in (None, {'size': 8, 'overlap': 4}) for e in (False, True)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(outs[i].astype(int) - outs[j]).max() > 0, (i, j)


def test_merged_lora_is_opt_in_and_close(setup):
    root, ckpt = setup
    rgb = cv2.imread(str(root / 'lq' / 'field.png'))[..., ::-1]
    plain = segsr_basicsr.load_model(ckpt, device='cpu').upscale(rgb, tile=None)
    merged = segsr_basicsr.load_model(ckpt, device='cpu', merge_lora=True).upscale(rgb, tile=None)
    assert np.abs(plain.astype(int) - merged).max() <= 1


# ----------------------------------------------------------------------------- the engine's promises
@pytest.mark.parametrize('length,tile,overlap,margin,scale', [(53, 16, 8, 2, 4), (40, 12, 6, 0, 2), (100, 32, 16, 4, 3)])
def test_blend_weights_sum_to_one_and_vanish_within_the_margin(length, tile, overlap, margin, scale):
    starts = tile_starts(length, tile, overlap)
    weights = axis_weights(starts, tile, length, scale, overlap, margin)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for s, w in zip(starts, weights):
        total[s * scale:(s + tile) * scale] += w.double()
        assert (w >= 0).all() and (w <= 1 + 1e-6).all()
        inner_lo, inner_hi = s > 0, s + tile < length
        if inner_lo:
            assert (w[:margin * scale] == 0).all()  # zero within `margin` LR px of an inner edge
        if inner_hi and margin:
            assert (w[-margin * scale:] == 0).all()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_the_feathered_ramp_is_linear_over_the_overlap_less_the_margins():
    starts = tile_starts(40, 16, 8)  # [0, 12, 24]: overlaps of 4 px
    w = axis_weights(starts, 16, 40, 1, 8, 1)[1]  # the middle tile, ramps on both sides
    left = w[:8]
    assert left[0] == 0 and torch.all(left[1:] >= left[:-1])  # rising, from exactly zero
    inside = left[(left > 0) & (left < 1)]
    assert len(inside) >= 2 and torch.allclose(inside.diff(), inside.diff()[0].expand_as(inside.diff()), atol=1e-6)


def test_padding_to_the_window_is_cropped_back_exactly():
    """forward_padded pads bottom/right to size_multiple and crops: equal to padding by hand."""
    from segsr_basicsr.archs.backbone import pad_to_multiple
    net = build_network(dict(type='SeGSR_HAT', **TINY_HAT)).eval()
    x = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        out = forward_padded(net, x)
        by_hand = net(pad_to_multiple(x, 4))[..., :40, :52]
    assert out.shape == (1, 3, 40, 52) and torch.equal(out, by_hand)


def test_self_ensemble_inverse_transforms_undo_the_views_for_an_equivariant_network():
    """A pixel-wise network commutes with flips/rotations, so the ensemble of a tile equals one pass."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Upsample(scale_factor=4)).eval()
    net.upscale = 4
    x = torch.rand(1, 3, 9, 14)
    plain = Engine(net).upscale_tensor(x, TileSpec(8, 4))
    ens = Engine(net, self_ensemble=True).upscale_tensor(x, TileSpec(8, 4))
    torch.testing.assert_close(ens, plain, atol=1e-6, rtol=0)


def test_tiles_without_a_valid_pixel_are_not_run():
    class Counting(torch.nn.Module):
        upscale = 2

        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):
            self.seen += x.shape[0]
            return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    net = Counting()
    stack = torch.zeros(1, 4, 16, 32)
    stack[:, -1, :, :16] = 1  # left half valid
    out = Engine(net)._tiled(stack, TileSpec(16, 0), False, None, None, torch.device('cpu'))
    assert net.seen == 1 and out.shape == (1, 4, 32, 64)


def test_a_plain_basicsr_network_asked_for_maps_gives_none():
    """SeGSRModel's validation asks for maps when save_img is on; a plain backbone has none (it crashed)."""
    net = build_network(dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4))
    lq = torch.rand(1, 3, 12, 12)
    for tile in (TileSpec(), TileSpec(size=8, overlap=2)):
        sr, maps = Engine(net).upscale_tensor(lq, tile=tile, record_maps=True)
        assert sr.shape == (1, 3, 48, 48) and maps == []
        assert torch.equal(sr, Engine(net).upscale_tensor(lq, tile=tile))
