"""SeGSRModel: training step extras (EMA, lr groups, clipping, AMP, NaN stop) and validation outputs."""
import copy

import cv2
import numpy as np
import pytest
import torch

import segsr_basicsr  # noqa: F401,I001  (compat first, then registers everything)
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.archs.edsr_arch import SeGSR_EDSR
from segsr_basicsr.io.checkpoint import load_checkpoint
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT

from segsr_basicsr.archs.tiny_configs import TINY_EDSR  # noqa: E402


if 'SeGSRTestFrozenEDSR' not in ARCH_REGISTRY:
    @ARCH_REGISTRY.register()
    class SeGSRTestFrozenEDSR(SeGSR_EDSR):
        """Tiny EDSR with a frozen stand-in for CLIP (conv_first) and a trainable 'lora' parameter."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.conv_first.requires_grad_(False)
            self.lora_scale = torch.nn.Parameter(torch.ones(1))
            self.register_buffer('running_stat', torch.zeros(1))

        def forward_head(self, x):
            feat, ctx = super().forward_head(x)
            if self.training:
                self.running_stat += 1
            return feat * self.lora_scale, ctx


def make_opt(tmp_path, network=None, num_gpu=0, logger=None, **train):
    """A complete SeGSRModel option dict (``train`` entries override the training section)."""
    exp = tmp_path / 'exp'
    opt = {
        'name': 'unit', 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': num_gpu, 'dist': False, 'rank': 0,
        'world_size': 1, 'is_train': True, 'manual_seed': 0,
        'network_g': dict(network or TINY_EDSR),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'experiments_root': str(exp),
                 'models': str(exp / 'models'), 'training_states': str(exp / 'training_states'),
                 'visualization': str(exp / 'visualization'), 'log': str(exp)},
        'train': {'ema_decay': 0.5, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
        'val': {'save_img': False, 'suffix': None,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
        'logger': logger or {'print_freq': 100, 'save_checkpoint_freq': 1000},
    }
    for k in ('models', 'training_states', 'visualization'):
        (exp / k).mkdir(parents=True, exist_ok=True)
    return opt


def batch(n=2, size=12):
    lq = torch.rand(n, 3, size, size)
    return {'lq': lq, 'gt': torch.nn.functional.interpolate(lq, scale_factor=4, mode='bicubic').clamp(0, 1)}


def val_loader(tmp_path, names=('a', 'b'), lr_size=(10, 13)):
    """A real BasicSR PairedImageDataset on PNGs: LR sizes that are not multiples of anything."""
    gt_dir, lq_dir = tmp_path / 'gt', tmp_path / 'lq'
    gt_dir.mkdir(exist_ok=True)
    lq_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = lr_size
    for n in names:
        gt = cv2.GaussianBlur(rng.integers(0, 256, (4 * h, 4 * w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(gt_dir / f'{n}.png'), gt)
        cv2.imwrite(str(lq_dir / f'{n}.png'), cv2.resize(gt, (w, h), interpolation=cv2.INTER_AREA))
    ds_opt = {'name': 'tiny_val', 'type': 'PairedImageDataset', 'dataroot_gt': str(gt_dir),
              'dataroot_lq': str(lq_dir), 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}
    return build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=0, dist=False, sampler=None, seed=0)


# ----------------------------------------------------------------------------- training step
def test_ema_skips_frozen_params_and_tracks_trainable_and_buffers(tmp_path):
    model = build_model(make_opt(tmp_path, dict(TINY_EDSR, type='SeGSRTestFrozenEDSR')))
    net, ema = model.net_g, model.net_g_ema
    # make the frozen weights differ between the nets: an EMA that walked them would move them
    with torch.no_grad():
        ema.conv_first.weight.add_(1.0)
    frozen_before = ema.conv_first.weight.clone()
    trainable_before = ema.conv_last.weight.clone()
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert torch.equal(ema.conv_first.weight, frozen_before), 'EMA touched a frozen parameter'
    expected = 0.5 * trainable_before + 0.5 * net.conv_last.weight.detach()
    torch.testing.assert_close(ema.conv_last.weight, expected)
    assert net.running_stat.item() == 1 and ema.running_stat.item() == 0.5  # float buffers are averaged too


def test_guidance_lr_mult_makes_a_separate_param_group(tmp_path):
    model = build_model(make_opt(tmp_path, dict(TINY_EDSR, type='SeGSRTestFrozenEDSR'), guidance_lr_mult=0.1))
    groups = {g['name']: g for g in model.optimizer_g.param_groups}
    assert groups['sr']['lr'] == pytest.approx(1e-3)
    assert groups['guidance_clip']['lr'] == pytest.approx(1e-4)
    assert [p is model.net_g.lora_scale for p in groups['guidance_clip']['params']] == [True]
    frozen = model.net_g.conv_first.weight
    assert all(p is not frozen for g in groups.values() for p in g['params'])
    # the warm-up/scheduler machinery keeps the ratio
    model.update_learning_rate(2, warmup_iter=4)
    lrs = model.get_current_learning_rate()
    assert lrs[1] == pytest.approx(lrs[0] * 0.1)


def test_grad_clip_bounds_the_gradient_norm(tmp_path):
    model = build_model(make_opt(tmp_path, grad_clip=1e-4))
    model.feed_data(batch())
    model.optimize_parameters(1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.net_g.parameters()]))
    assert norm.item() <= 1e-4 * 1.001


def test_amp_bf16_step_runs_on_cpu(tmp_path):
    model = build_model(make_opt(tmp_path, amp='bf16'))
    before = copy.deepcopy(model.net_g.state_dict())
    dtypes = []
    model.net_g.conv_last.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert dtypes == [torch.bfloat16]  # autocast really ran the convs in bf16
    assert model.scaler is None  # bf16 needs no GradScaler
    assert np.isfinite(model.get_current_log()['l_pix'])
    assert any(not torch.equal(before[k], v) for k, v in model.net_g.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # master weights stay fp32


def test_amp_fp16_uses_a_grad_scaler_and_clips_unscaled_grads(tmp_path):
    model = build_model(make_opt(tmp_path, amp='fp16', grad_clip=1e-3))
    assert model.scaler is not None and model.scaler.is_enabled()
    model.feed_data(batch())
    model.optimize_parameters(1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.net_g.parameters()]))
    assert norm.item() <= 1e-3 * 1.001  # clipped after unscale_, not in the scaled domain


def test_bad_amp_and_grad_clip_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"train.amp.*'fp8'"):
        build_model(make_opt(tmp_path, amp='fp8'))
    with pytest.raises(ValueError, match='train.grad_clip'):
        build_model(make_opt(tmp_path, grad_clip=-1))


def test_nan_loss_stops_before_the_step_and_last_checkpoint_stays_loadable(tmp_path):
    model = build_model(make_opt(tmp_path))
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    ckpt_path = tmp_path / 'exp' / 'models' / 'net_g_1.pth'
    saved = copy.deepcopy(model.net_g.state_dict())
    bad = batch()
    bad['gt'][0, 0, 0, 0] = float('nan')  # e.g. a corrupt training image
    model.feed_data(bad)
    with pytest.raises(FloatingPointError, match=r'Non-finite loss at iteration 2: l_pix=nan.*not updated'):
        model.optimize_parameters(2)
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, saved[k]), f'{k} changed by the failed step'
    ckpt = load_checkpoint(ckpt_path)
    assert set(ckpt) == {'params', 'params_ema', 'segsr_network'}  # + network_g (self-describing)
    for k, v in ckpt['params'].items():
        assert torch.equal(v, saved[k])
    assert not list((tmp_path / 'exp' / 'models').glob('.*'))  # no temp files left behind


# ----------------------------------------------------------------------------- validation
def test_validation_restores_train_mode_and_reports_metrics(tmp_path):
    opt = make_opt(tmp_path)
    opt['train']['ema_decay'] = 0  # validate net_g itself, the net BasicSR/HAT leave in eval mode
    model = build_model(opt)
    assert model.net_g.training
    model.validation(val_loader(tmp_path), 5, None, save_img=False)
    assert model.net_g.training
    assert np.isfinite(model.metric_results['psnr'])
    assert not any((tmp_path / 'exp' / 'visualization').iterdir())  # save_img off: nothing written


def test_validation_tiled_matches_untiled(tmp_path):
    """val.tile changes memory use, not results (EDSR has a bounded receptive field)."""
    loader = val_loader(tmp_path, lr_size=(30, 37))
    opt = make_opt(tmp_path)
    model = build_model(opt)
    model.validation(loader, 1, None, save_img=False)
    whole = model.metric_results['psnr']
    opt['val']['tile'] = {'size': 16, 'overlap': 12}
    tiled_model = build_model(opt)
    tiled_model.net_g_ema.load_state_dict(model.net_g_ema.state_dict())
    tiled_model.validation(loader, 1, None, save_img=False)
    assert tiled_model.metric_results['psnr'] == pytest.approx(whole, abs=1e-3)


def test_failed_tile_in_validation_propagates_and_restores_mode(tmp_path):
    opt = make_opt(tmp_path)
    opt['train']['ema_decay'] = 0
    opt['val']['tile'] = {'size': 8, 'overlap': 4}
    model = build_model(opt)

    def boom(*a, **k):
        raise RuntimeError('simulated failure')

    model.net_g.forward_tail = boom
    with pytest.raises(RuntimeError, match=r'tile row 1/.*LR rows 0:8.*simulated failure'):
        model.validation(val_loader(tmp_path), 1, None, save_img=False)
    assert model.net_g.training


# ----------------------------------------------------------------------------- with the real SeG-SR network
def segsr_hat():
    return dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))


def test_validation_save_img_writes_sr_and_semantic_heat_maps(tmp_path):
    opt = make_opt(tmp_path, segsr_hat())
    model = build_model(opt)
    loader = val_loader(tmp_path, names=('field',), lr_size=(10, 13))
    model.validation(loader, 7, None, save_img=True)
    folder = tmp_path / 'exp' / 'visualization' / 'field'
    names = sorted(p.name for p in folder.iterdir())
    assert names == ['field_7.png', 'field_7_semantic_unit1.png', 'field_7_semantic_unit2.png']
    sr = cv2.imread(str(folder / 'field_7.png'))
    assert sr.shape == (40, 52, 3)
    for k in (1, 2):
        heat = cv2.imread(str(folder / f'field_7_semantic_unit{k}.png'))
        assert heat.shape == sr.shape
        assert np.abs(heat.astype(int) - sr).mean() > 5  # a colour map really is overlaid
    net = model.net_g_ema
    assert net.record_semantic_maps is False and net.semantic_maps is None  # maps only during those forwards
    assert model.net_g.training


def test_semantic_maps_are_not_recorded_without_save_img(tmp_path):
    model = build_model(make_opt(tmp_path, segsr_hat()))
    seen = []
    orig = type(model.net_g_ema).forward

    def spy(net, x):
        seen.append(net.record_semantic_maps)
        return orig(net, x)

    model.net_g_ema.forward = spy.__get__(model.net_g_ema)
    model.validation(val_loader(tmp_path, names=('a',)), 1, None, save_img=False)
    assert seen == [False]
    model.validation(val_loader(tmp_path, names=('a',)), 1, None, save_img=True)
    assert seen == [False, True]


def test_real_guidance_ema_skips_frozen_clip_and_lora_gets_lr_mult(tmp_path):
    model = build_model(make_opt(tmp_path, segsr_hat(), guidance_lr_mult=0.25, amp='bf16'))
    net, ema = model.net_g, model.net_g_ema
    frozen = [k for k, p in net.named_parameters() if not p.requires_grad]
    lora = [k for k, p in net.named_parameters() if p.requires_grad and k.startswith('guidance.encoder.')]
    assert frozen and all(k.startswith('guidance.encoder.') for k in frozen) and lora
    groups = {g['name']: g for g in model.optimizer_g.param_groups}
    named = dict(net.named_parameters())
    assert {id(p) for p in groups['guidance_clip']['params']} == {id(named[k]) for k in lora}
    assert groups['guidance_clip']['lr'] == pytest.approx(0.25 * groups['sr']['lr'])
    with torch.no_grad():  # an EMA that walked frozen params would pull these back towards net_g
        for k in frozen:
            dict(ema.named_parameters())[k].add_(1.0)
    ema_frozen = {k: dict(ema.named_parameters())[k].clone() for k in frozen}
    model.feed_data(batch(1, 16))
    model.optimize_parameters(1)  # bf16 autocast on CPU, HAT + CLIP + LoRA
    assert np.isfinite(model.get_current_log()['l_pix'])
    for k in frozen:
        assert torch.equal(dict(ema.named_parameters())[k], ema_frozen[k]), k


def test_test_entry_point_reports_metrics_and_writes_images_and_maps(tmp_path, monkeypatch):
    """`python -m segsr_basicsr.test -opt X.yml` (basicsr's test_pipeline) with SeGSRModel, tiled."""
    import logging

    import yaml

    from basicsr.archs import build_network
    from segsr_basicsr.test import main as test_main
    net_opt = segsr_hat()
    torch.save({'params_ema': build_network(dict(net_opt)).state_dict()}, tmp_path / 'net.pth')
    val_loader(tmp_path, names=('farm', 'port'), lr_size=(18, 21))
    opt = {
        'name': 'tiny_test', 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'gt'),
                                'dataroot_lq': str(tmp_path / 'lq'), 'io_backend': {'type': 'disk'}}},
        'network_g': net_opt,
        'path': {'pretrain_network_g': str(tmp_path / 'net.pth'), 'param_key_g': 'params_ema',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'tile': {'size': 12, 'overlap': 4},
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
                            'ssim': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}}},
    }
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger('basicsr')  # basicsr's logger does not propagate: listen to it directly
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # another test may have initialised it without a log file (level unset)
    try:
        test_main(['-opt', str(tmp_path / 'test.yml')])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    log = '\n'.join(records)
    assert 'Validation tiny' in log and '# psnr:' in log and '# ssim:' in log
    vis = tmp_path / 'results' / 'tiny_test' / 'visualization' / 'tiny'
    for name in ('farm', 'port'):
        sr = cv2.imread(str(vis / f'{name}_tiny_test.png'))
        assert sr.shape == (72, 84, 3)
        for k in (1, 2):
            assert cv2.imread(str(vis / f'{name}_tiny_test_semantic_unit{k}.png')).shape == sr.shape
    # per-class tables next to the test log: classes from the file names here (no split lists)
    table = (tmp_path / 'results' / 'tiny_test' / 'per_class_tiny.md').read_text().splitlines()
    assert table[0] == '| class | images | psnr | ssim |' and [r.split(' | ')[0] for r in table[2:]] == \
        ['| farm', '| port', '| **mean**']
    assert (tmp_path / 'results' / 'tiny_test' / 'per_class_tiny.csv').is_file()


def test_heatmap_marks_the_strong_region_red_at_image_size():
    from segsr_basicsr.results.heatmaps import heatmap, semantic_overlays
    sem = torch.zeros(1, 8, 10)
    sem[0, :, 5:] = 30.0  # right half matches the unit's embedding
    heat = heatmap(sem, (32, 40))
    assert heat.shape == (32, 40, 3) and heat.dtype == np.uint8
    right, left = heat[:, 30:].reshape(-1, 3).mean(0), heat[:, :10].reshape(-1, 3).mean(0)  # BGR
    assert right[2] > 100 and right[0] < 30  # JET: red where the map is high
    assert left[0] > 100 and left[2] < 30  # blue where it is low
    img16 = np.full((32, 40, 3), 65535, np.uint16)
    (ov, ) = semantic_overlays(img16, [sem])
    assert ov.shape == (32, 40, 3) and ov.dtype == np.uint8
