"""SeGSR_HAT without guidance is official HAT: same keys, same output (spandrel as the oracle), any input size."""
import ast
import copy
import gzip
from pathlib import Path

import pytest
import torch

import segsr_basicsr  # noqa: F401  (registers the archs)
from segsr_basicsr.archs import hat_arch
from segsr_basicsr.errors import CheckpointError
from segsr_basicsr.archs.hat_arch import HAT_COMMON, HAT_SIZES, SeGSR_HAT, load_hat_checkpoint
from tests.tiny_configs import TINY_HAT

spandrel_hat = pytest.importorskip('spandrel.architectures.HAT')

#: official HAT key listings: gzipped copies ship with the tests (so CI checks them); ../shared has the originals
REFERENCE = Path(__file__).parent / 'reference'
CONFIGS = {
    'tiny': TINY_HAT,
    'tiny-shifted': dict(TINY_HAT, depths=[2, 2]),  # TINY_HAT's single-block groups never shift
    'tiny-noshift': dict(TINY_HAT, img_size=4),  # official HAT drops the shift when img_size <= window_size
    'HAT-S': dict(HAT_COMMON, **HAT_SIZES['HAT-S']),
    'HAT': dict(HAT_COMMON, **HAT_SIZES['HAT']),
}


def pair(cfg, **overrides):
    """Our net and spandrel's HAT with one shared random state_dict (official init + noise on every float)."""
    cfg = dict(cfg, **overrides)
    theirs = spandrel_hat.HAT(**cfg)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state)
    ours = SeGSR_HAT(**cfg)
    ours.load_state_dict(state, strict=True)
    return ours, theirs


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_output_equals_spandrel_hat(name, scale):
    ours, theirs = pair(CONFIGS[name], upscale=scale)
    ours.eval(), theirs.eval()
    ws = CONFIGS[name]['window_size']
    sizes = [(ws, ws), (ws + 4, ws - 4)] if ws > 4 else [(16, 16), (18, 13)]
    for h, w in sizes:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            out, ref = ours(x), theirs(x)
        assert out.shape == (2, 3, h * scale, w * scale)
        assert (out - ref).abs().max() < 1e-5, (name, scale, h, w)


@pytest.mark.parametrize('overrides', [dict(depths=[2, 2]), dict(depths=[2, 2], embed_dim=60, compress_ratio=3,
                                                                  squeeze_factor=6)],
                         ids=['tiny-shifted', 'head-dim-30-padded'])
def test_gradients_equal_spandrel_hat(overrides, monkeypatch):
    from segsr_basicsr.archs import hat_blocks
    monkeypatch.setattr(hat_blocks, 'ATTENTION_CHUNK_BYTES', 1)  # one window per step: exercise the chunking
    ours, theirs = pair(TINY_HAT, drop_path_rate=0., **overrides)
    ours.train(), theirs.train()
    x, y = torch.rand(2, 3, 18, 13), torch.rand(2, 3, 72, 52)
    for net in (ours, theirs):
        torch.nn.functional.l1_loss(net(x), y).backward()
    ref_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name].grad, atol=1e-6, rtol=1e-4), name


def read_listing(path):
    """Reference listing: '# ...' header (param count, constructor dict), then 'key<TAB>(shape)' lines."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    n_params = int(lines[0].split(' keys, ')[1].split()[0])
    constructor = ast.literal_eval(lines[1].split('constructor:', 1)[1].strip())
    shapes = {}
    for line in lines[2:]:
        if line.strip():
            key, shape = line.split('\t')
            shapes[key] = tuple(ast.literal_eval(shape))
    return constructor, shapes, n_params


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('size', ['HAT-S', 'HAT', 'HAT-L'])
def test_state_dict_matches_official_listing(size, scale):
    path = REFERENCE / f'official_hat_keys_{size}_x{scale}.txt.gz'
    constructor, shapes, n_params = read_listing(path)
    assert constructor == dict(HAT_COMMON, **HAT_SIZES[size], upscale=scale)
    with torch.device('meta'):  # shapes only: no memory, no init cost
        net = SeGSR_HAT(**constructor)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(ours) == list(shapes)  # same keys, same order
    assert ours == shapes
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_shift_mask_built_once_per_size_and_correct_for_new_size(monkeypatch):
    net = SeGSR_HAT(**TINY_HAT).eval()
    built = []
    real = hat_arch.shift_window_mask
    monkeypatch.setattr(hat_arch, 'shift_window_mask', lambda *a, **k: built.append(a[:2]) or real(*a, **k))
    ref = spandrel_hat.HAT(**TINY_HAT)
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
        first = net.shift_mask(16, 16, torch.device('cpu'), torch.float32)
        net(torch.rand(2, 3, 13, 15))  # padded to 16 x 16: same grid, same mask
        net(torch.rand(1, 3, 24, 8))
    assert built == [(16, 16), (24, 8)]
    assert net.shift_mask(16, 16, torch.device('cpu'), torch.float32) is first
    new = net.shift_mask(24, 8, torch.device('cpu'), torch.float32)
    assert torch.equal(new[:, 0], ref.calculate_mask((24, 8), torch.float32))
    assert torch.equal(first[:, 0], ref.calculate_mask((16, 16), torch.float32))


def test_shift_mask_cache_follows_dtype_and_is_bounded():
    net = SeGSR_HAT(**TINY_HAT)
    assert net.shift_mask(8, 8, torch.device('cpu'), torch.float64).dtype == torch.float64
    for i in range(hat_arch.MASK_CACHE_SIZE + 3):
        net.shift_mask(4 * (i + 2), 4, torch.device('cpu'), torch.float32)
    assert 0 < len(net._shift_masks) <= hat_arch.MASK_CACHE_SIZE
    net.double()  # moving the net drops masks built for the old dtype/device
    assert len(net._shift_masks) == 0


def test_use_checkpoint_same_output_and_gradients():
    plain = SeGSR_HAT(**TINY_HAT).train()  # drop_path_rate 0.1: checkpoint must replay the same random paths
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    x, y = torch.rand(2, 3, 16, 12), torch.rand(2, 3, 64, 48)
    outs = []
    for net in (plain, ckpt):
        torch.manual_seed(1)
        out = net(x)
        torch.nn.functional.l1_loss(out, y).backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-7), name


def test_backbone_interface_composes_to_forward():
    net = SeGSR_HAT(**TINY_HAT).eval()
    assert net.feature_layout == 'tokens' and net.unit_channels == 16 and net.upscale == 4
    assert net.size_multiple == 4 and len(net.sr_units) == 2 and net.guidance is None
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        feat, ctx = net.forward_head(x)
        assert feat.shape == (2, 8 * 12, 16) and ctx['size'] == (8, 12)
        for k in range(len(net.sr_units)):
            feat = net.forward_unit(k, feat, ctx)
            assert feat.shape == (2, 96, 16)
        assert torch.equal(net.forward_tail(feat, ctx), net(x))
        with pytest.raises(ValueError, match='multiples of window_size=4'):
            net.forward_head(torch.rand(1, 3, 6, 8))


def test_registered_in_basicsr():
    from basicsr.archs import build_network
    net = build_network(dict(type='SeGSR_HAT', **TINY_HAT))
    assert isinstance(net, SeGSR_HAT)


@pytest.mark.parametrize('bad, message', [
    (dict(embed_dim=15), r'embed_dim=15 is not divisible by num_heads\[0\]=2'),
    (dict(num_heads=[2]), r'len\(depths\)=2 != len\(num_heads\)=1'),
    (dict(upsampler='pixelshuffledirect'), "upsampler='pixelshuffledirect' is not supported"),
    (dict(resi_connection='3conv'), "resi_connection='3conv' is not supported"),
    (dict(upscale=5), 'upscale=5 is not supported'),
    (dict(img_size=3), r'smaller than window_size=4'),
    (dict(window_size=6, overlap_ratio=0.5), 'must be even'),
])
def test_bad_options_raise_clear_errors(bad, message):
    cfg = dict(TINY_HAT, **bad)
    with pytest.raises(ValueError, match=message):
        SeGSR_HAT(**cfg)


def test_ape_rejects_other_sizes():
    net = SeGSR_HAT(**dict(TINY_HAT, ape=True))
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match='ape=True'):
        net(torch.rand(1, 3, 8, 8))


def test_load_hat_checkpoint_prefers_params_ema(tmp_path):
    net = SeGSR_HAT(**TINY_HAT)
    ema, params = SeGSR_HAT(**TINY_HAT).state_dict(), SeGSR_HAT(**TINY_HAT).state_dict()
    torch.save({'params': params, 'params_ema': ema}, tmp_path / 'both.pth')
    torch.save({'params': params}, tmp_path / 'params.pth')
    torch.save({f'module.{k}': v for k, v in ema.items()}, tmp_path / 'raw.pth')
    for file, expected in [('both.pth', ema), ('params.pth', params), ('raw.pth', ema)]:
        load_hat_checkpoint(net, tmp_path / file)
        for k, v in net.state_dict().items():
            assert torch.equal(v, expected[k]), (file, k)
    load_hat_checkpoint(net, tmp_path / 'both.pth', param_key='params')
    assert torch.equal(net.conv_first.weight, params['conv_first.weight'])


def test_load_hat_checkpoint_mismatch_names_file_and_keys(tmp_path):
    other = SeGSR_HAT(**dict(TINY_HAT, upscale=2, depths=[1, 1, 1], num_heads=[2, 2, 2]))
    path = tmp_path / 'HAT_SRx2.pth'
    torch.save({'params_ema': other.state_dict()}, path)
    with pytest.raises(ValueError) as err:
        load_hat_checkpoint(SeGSR_HAT(**TINY_HAT), path)
    text = str(err.value)
    assert str(path) in text and 'layers.2.conv.weight' in text and 'upsample.2.weight' in text
    with pytest.raises(CheckpointError, match='no .params_g.'):
        load_hat_checkpoint(SeGSR_HAT(**TINY_HAT), path, param_key='params_g')


@pytest.mark.parametrize('chunk_bytes', [1, 1 << 20])
@pytest.mark.parametrize('shifted', [False, True])
def test_biased_window_attention_gradients(shifted, chunk_bytes, monkeypatch):
    """The hand-written backward (used in CPU training) against numerical gradients; 2 images x 3 windows."""
    from segsr_basicsr.archs import hat_blocks
    from segsr_basicsr.archs.hat_blocks import BiasedWindowAttention
    monkeypatch.setattr(hat_blocks, 'ATTENTION_CHUNK_BYTES', chunk_bytes)
    q = torch.randn(6, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(6, 2, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    shift_mask = -100. * (torch.rand(3, 1, 5, 7) > 0.6).double() if shifted else None
    assert torch.autograd.gradcheck(lambda *t: BiasedWindowAttention.apply(*t, shift_mask, 0.3), (q, k, v, bias))
    out = BiasedWindowAttention.apply(q, k, v, bias, shift_mask, 0.3)
    mask = bias if shift_mask is None else (bias + shift_mask).repeat(2, 1, 1, 1)
    ref = torch.softmax(0.3 * q @ k.transpose(-2, -1) + mask, -1) @ v
    assert torch.allclose(out, ref)
