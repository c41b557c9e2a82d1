"""SeG-SR on BasicSR's own EDSR, RCAN and SwinIR (issue 7).

Without guidance each adapter must BE the BasicSR arch (keys and output, to
the bit), so BasicSR checkpoints load; with guidance every trainable
parameter must learn, on any LR size and scale.
"""
import segsr_basicsr  # noqa: F401,I001  (first: makes basicsr importable, registers the archs)

import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.swinir_arch import SwinIR
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY

from tests.tiny_configs import REPO, TINY_GUIDANCE

#: name -> (BasicSR class, tiny config without the scale); window 4 so LR sizes need padding
TINY = {
    'EDSR': (EDSR, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=4, res_scale=0.1, num_units=2)),
    'RCAN': (RCAN, dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_group=2, num_block=1, squeeze_factor=4)),
    'SwinIR': (SwinIR, dict(img_size=8, window_size=4, depths=[1, 1], embed_dim=12, num_heads=[2, 2], mlp_ratio=2,
                            img_range=1., upsampler='pixelshuffle', resi_connection='1conv')),
}
ADAPTER_ONLY = ('num_units', 'guidance')


def build(name, scale=4, guidance=None, **overrides):
    """The adapter through BasicSR's registry, as an option file would build it."""
    opt = dict(TINY[name][1], upscale=scale, **overrides)
    return build_network(dict(opt, type=f'SeGSR_{name}', guidance=guidance))


def build_basicsr(name, scale=4, **overrides):
    cls, opt = TINY[name]
    opt = {k: v for k, v in dict(opt, upscale=scale, **overrides).items() if k not in ADAPTER_ONLY}
    return cls(**opt)


def randomize_(net):
    """Random values in every parameter, so no zero/one init can hide a missed or swapped weight."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def twin(name, scale=4, **overrides):
    """(adapter without guidance, BasicSR arch) holding the same random weights."""
    ours = randomize_(build(name, scale, **overrides)).eval()
    theirs = build_basicsr(name, scale, **overrides).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


# --- guidance off: exactly the BasicSR arch --------------------------------------------------------

@pytest.mark.parametrize('name', TINY)
def test_state_dict_keys_are_basicsr_keys(name):
    ours, theirs = build(name), build_basicsr(name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', TINY)
def test_guidance_off_output_equals_basicsr(name, scale):
    ours, theirs = twin(name, scale)
    x = torch.rand(2, 3, 8, 12)  # a multiple of SwinIR's window: BasicSR's SwinIR needs that
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize('upsampler, scale', [('pixelshuffle', 3), ('pixelshuffledirect', 2), ('nearest+conv', 4),
                                              ('', 4), (None, 2)])
def test_swinir_every_basicsr_upsampler_is_exact(upsampler, scale):
    """BasicSR's SwinIR has four reconstruction tails; each must be reproduced, not approximated."""
    ours, theirs = twin('SwinIR', scale, upsampler=upsampler, resi_connection='3conv')
    x = torch.rand(1, 3, 8, 4)
    with torch.no_grad():
        y = ours(x)
        assert torch.equal(y, theirs(x))
    assert y.shape == (1, 3, 8 * ours.upscale, 4 * ours.upscale)


def test_swinir_odd_size_equals_basicsr_on_reflect_padded_input():
    """BasicSR's SwinIR needs window multiples (its model pads); the adapter pads itself, identically."""
    ours, theirs = twin('SwinIR', 3)
    assert ours.size_multiple == 4
    x = torch.rand(1, 3, 7, 10)
    with torch.no_grad():
        y = ours(x)
        ref = theirs(F.pad(x, (0, 2, 0, 1), mode='reflect'))[..., :21, :30]
    assert torch.equal(y, ref)


@pytest.mark.parametrize('name', ['EDSR', 'RCAN'])
def test_cnn_trunks_on_odd_sizes_equal_basicsr(name):
    ours, theirs = twin(name, 3)
    assert ours.size_multiple == 1
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_basicsr_checkpoint_file_loads(tmp_path):
    """A checkpoint saved by BasicSR (params / params_ema) loads strictly into the adapter."""
    theirs = randomize_(build_basicsr('RCAN'))
    torch.save({'params_ema': theirs.state_dict()}, tmp_path / 'net_g.pth')
    ours = build('RCAN')
    ours.load_state_dict(torch.load(tmp_path / 'net_g.pth')['params_ema'], strict=True)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


# --- how each backbone is cut into SR units --------------------------------------------------------

def test_edsr_units_group_consecutive_blocks():
    net = build('EDSR', num_block=6, num_units=3)
    units = net.sr_units
    assert len(units) == 3
    assert [b for u in units for b in u] == list(net.body)


def test_rcan_units_are_residual_groups_and_swinir_units_are_rstbs():
    rcan = build('RCAN')
    assert list(rcan.sr_units) == list(rcan.body) and len(rcan.sr_units) == 2
    swinir = build('SwinIR')
    assert list(swinir.sr_units) == list(swinir.layers) and swinir.feature_layout == 'tokens'
    assert swinir.unit_channels == 12 and rcan.unit_channels == 16 and rcan.feature_layout == 'image'


@pytest.mark.parametrize('num_units', [3, 0, 2.0, None, True])
def test_edsr_num_units_must_divide_num_block(num_units):
    with pytest.raises(ValueError, match=rf'num_units={num_units!r}.*num_block=4'):
        build('EDSR', num_units=num_units)


@pytest.mark.parametrize('overrides, message', [
    (dict(upsampler='pixelshufle'), r"upsampler='pixelshufle'"),
    (dict(upsampler='nearest+conv', upscale=2), r'upscale=2'),
])
def test_swinir_rejects_what_basicsr_swinir_does_not_support(overrides, message):
    opt = dict(TINY['SwinIR'][1], upscale=4)
    opt.update(overrides)
    with pytest.raises(ValueError, match=message):
        ARCH_REGISTRY.get('SeGSR_SwinIR')(**opt)


# --- guidance on ------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', TINY)
def test_guided_trains_and_every_trainable_parameter_gets_gradient(name):
    net = build(name, 3, guidance=TINY_GUIDANCE)
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith('guidance.encoder.') for n in frozen)  # the CLIP tower, not LoRA
    assert any('lora' in n for n in trainable) and any(n.startswith('modulations.') for n in trainable)
    x, target = torch.rand(2, 3, 7, 10), torch.rand(2, 3, 21, 30)
    loss_before = F.l1_loss(net.eval()(x), target).item()
    opt = torch.optim.Adam(trainable.values(), lr=1e-3)
    got_grad = set()
    net.train()
    for _ in range(3):  # LoRA B starts at 0, so LoRA A first gets a gradient on step 2
        opt.zero_grad()
        F.l1_loss(net(x), target).backward()
        got_grad |= {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
    assert sorted(set(trainable) - got_grad) == []
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    assert F.l1_loss(net.eval()(x), target).item() < loss_before


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', TINY)
def test_guided_any_lr_size_and_scale(name, scale):
    """LR sizes that are not window multiples; the maps land on the (padded) feature grid."""
    net = build(name, scale, guidance=TINY_GUIDANCE).eval()
    net.record_semantic_maps = True
    with torch.no_grad():
        y = net(torch.rand(2, 3, 7, 10))
    assert y.shape == (2, 3, 7 * scale, 10 * scale) and torch.isfinite(y).all()
    m = net.size_multiple
    grid = (-(-7 // m) * m, -(-10 // m) * m)
    assert [tuple(s.shape) for s in net.semantic_maps] == [(2, 1, *grid)] * len(net.sr_units)


@pytest.mark.parametrize('upsampler, scale', [('pixelshuffledirect', 3), ('nearest+conv', 4), ('', 1)])
def test_guided_swinir_other_upsamplers(upsampler, scale):
    net = build('SwinIR', 4 if upsampler == 'nearest+conv' else 3, guidance=TINY_GUIDANCE, upsampler=upsampler)
    assert net.upscale == scale  # '' keeps the size: guidance and cropping must know
    y = net(torch.rand(1, 3, 7, 10))
    assert y.shape == (1, 3, 7 * scale, 10 * scale)
    y.mean().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if n.startswith('modulations.'))


@pytest.mark.parametrize('name', TINY)
def test_basicsr_weights_load_into_guided_network(name):
    """The option files load plain BasicSR checkpoints with strict_load_g: false: only guidance keys are new."""
    theirs = randomize_(build_basicsr(name))
    ours = build(name, guidance=TINY_GUIDANCE)
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith(('guidance.', 'modulations.')) for k in result.missing_keys)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())


# --- option files ------------------------------------------------------------------------------------

def load_options(name):
    with open(REPO / 'options' / f'train_SeGSR_{name}_x4.yml') as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


@pytest.mark.parametrize('name', TINY)
def test_option_file_is_the_paper_recipe_on_ucmerced(name):
    opt = load_options(name)
    assert opt['model_type'] == 'SeGSRModel' and opt['scale'] == 4 == opt['network_g']['upscale']
    assert opt['network_g']['type'] == f'SeGSR_{name}' and f'SeGSR_{name}' in ARCH_REGISTRY
    for phase in ('train', 'val'):
        data = opt['datasets'][phase]
        assert data['type'] == 'PairedImageDataset'
        assert data['dataroot_gt'] == f'datasets/UCMerced/{phase}/HR_x4'  # what datasets_prep/make_bicubic.py writes
        assert data['dataroot_lq'] == f'datasets/UCMerced/{phase}/LR_x4'
    train = opt['train']
    assert (opt['datasets']['train']['gt_size'], opt['datasets']['train']['batch_size_per_gpu']) == (256, 4)
    assert (train['optim_g']['type'], train['optim_g']['lr'], train['optim_g']['betas']) == ('Adam', 2e-4, [0.9, 0.99])
    assert (train['scheduler']['milestones'], train['scheduler']['gamma'], train['total_iter']) == ([50000], 0.5, 64000)
    assert train['pixel_opt']['type'] == 'L1Loss' and train['ema_decay'] == 0.999
    assert all(m['crop_border'] == 4 and m['test_y_channel'] for m in opt['val']['metrics'].values())
    assert opt['network_g']['guidance'] == dict(clip_model='ViT-B-16', clip_pretrained='openai', tune='lora',
                                                lora_rank=32, lora_alpha=32, lora_dropout=0.05,
                                                embeddings_per_unit=1, logit_scale=100)


@pytest.mark.parametrize('name, params', [('EDSR', 43_089_923), ('RCAN', 15_592_355), ('SwinIR', 11_900_199)])
def test_option_file_network_is_the_published_backbone(name, params):
    """Without guidance the option file's network is the published model (EDSR 43.1 M, RCAN 15.6 M, SwinIR 11.9 M)."""
    net_opt = load_options(name)['network_g']
    net = build_network(dict(net_opt, guidance=None))
    assert sum(p.numel() for p in net.parameters()) == params
    # its guidance block as written, on the tiny CLIP (no download): every key is one the guidance takes
    guided = build_network(dict(net_opt, guidance=dict(net_opt['guidance'], clip_model='SeGSR-Tiny-ViT',
                                                        clip_pretrained=None))).eval()
    assert guided.guidance.options['lora_rank'] == 32 and guided.guidance.tune == 'lora'
    with torch.no_grad():
        assert net(torch.rand(1, 3, 9, 7)).shape == guided(torch.rand(1, 3, 9, 7)).shape == (1, 3, 36, 28)


def test_swinir_ape_is_exact_on_img_size_and_names_the_problem_elsewhere():
    ours, theirs = twin('SwinIR', 2, ape=True)
    x = torch.rand(1, 3, 8, 8)  # img_size
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        with pytest.raises(ValueError, match=r'ape=True.*img_size.*\(8, 12\)'):
            ours(torch.rand(1, 3, 8, 12))


def test_swinir_use_checkpoint_works_and_changes_nothing():
    """BasicSR 1.4.2's SwinIR crashes with use_checkpoint (drops x_size); ours recomputes RSTBs, same numbers."""
    plain = randomize_(build('SwinIR')).train()
    ckpt = build('SwinIR', use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 6, 9)
    outs = []
    for net in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path draws
        y = net(x)
        y.square().mean().backward()
        outs.append((y.detach(), [p.grad for p in net.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs[0][1], outs[1][1]))
    with pytest.raises(TypeError, match='x_size'):  # why the adapter does it itself
        build_basicsr('SwinIR', use_checkpoint=True).train()(torch.rand(1, 3, 8, 8))


def test_option_files_differ_only_in_the_network():
    """So the one end-to-end run below (SwinIR, the backbone that needs padding) stands for all three."""
    opts = {name: load_options(name) for name in TINY}
    for opt in opts.values():
        del opt['name'], opt['network_g']
    assert opts['EDSR'] == opts['RCAN'] == opts['SwinIR']


def test_option_file_trains_and_validates_with_basicsr_pipeline(tmp_path):
    """The option file as a user runs it (`python -m segsr_basicsr.train`), shrunk: tiny network and CLIP,
    two iterations, validation on LR sizes that are not window multiples."""
    import json
    import subprocess
    import sys

    import cv2
    import numpy as np
    name = 'SwinIR'
    opt = json.loads(json.dumps(load_options(name)))
    rng = np.random.default_rng(0)
    for phase, size in (('train', (32, 32)), ('val', (44, 36))):
        gt_dir, lq_dir = tmp_path / phase / 'HR_x4', tmp_path / phase / 'LR_x4'
        gt_dir.mkdir(parents=True)
        lq_dir.mkdir(parents=True)
        for i in range(2):
            gt = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (5, 5), 0)
            cv2.imwrite(str(gt_dir / f'{i}.png'), gt)
            cv2.imwrite(str(lq_dir / f'{i}.png'), cv2.resize(gt, (size[1] // 4, size[0] // 4), cv2.INTER_AREA))
        opt['datasets'][phase].update(dataroot_gt=str(gt_dir), dataroot_lq=str(lq_dir))
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0)
    guidance = dict(opt['network_g']['guidance'], clip_model='SeGSR-Tiny-ViT', clip_pretrained=None)
    opt['network_g'] = dict(TINY[name][1], type=f'SeGSR_{name}', upscale=4, guidance=guidance)
    opt.update(num_gpu=0)
    opt['train'].update(total_iter=2)
    opt['val']['val_freq'] = opt['logger']['save_checkpoint_freq'] = 2
    opt['logger'].update(print_freq=1, use_tb_logger=False)
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(opt))
    r = subprocess.run([sys.executable, '-m', 'segsr_basicsr.train', '-opt', 'train.yml'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / 'experiments' / opt['name']
    logs = ''.join(p.read_text() for p in exp.glob('*.log'))
    psnr = [line for line in logs.splitlines() if '# psnr:' in line]
    assert psnr and float(psnr[-1].split('# psnr:')[1].split()[0]) > 5, logs[-2000:]
    saved = torch.load(exp / 'models' / 'net_g_2.pth', map_location='cpu')
    fresh = build_network(opt['network_g'])
    fresh.load_state_dict(saved['params_ema'] if 'params_ema' in saved else saved['params'], strict=True)
