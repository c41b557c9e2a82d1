"""SeGSRModel's GPU-speed changes, checked on CPU: fused EMA, ``train.tf32``, host syncs only on check steps."""
import copy
import logging

import pytest
import torch

import segsr_basicsr  # noqa: F401,I001  (compat first, then registers everything)
from basicsr.models import build_model
from segsr_basicsr.models.segsr_model import set_tf32
from segsr_basicsr.options import parse_finite_check_freq, parse_tf32
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT

GUIDED_HAT = dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE))
import tests.test_model  # noqa: E402
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (run `pytest -m cuda` there)')


def make_opt(tmp_path, network=None, num_gpu=0, logger=None, **train):
    """test_model's option dict, with EMA 0.9."""
    return tests.test_model.make_opt(tmp_path, network, num_gpu, logger, **{'ema_decay': 0.9, **train})


def batch(n=2, size=12, nan=False):
    g = torch.Generator().manual_seed(size)
    lq = torch.rand(n, 3, size, size, generator=g)
    gt = torch.nn.functional.interpolate(lq, scale_factor=4, mode='bicubic').clamp(0, 1)
    if nan:
        gt[0, 0, 0, 0] = float('nan')  # e.g. a corrupt training image
    return {'lq': lq, 'gt': gt}


@pytest.fixture(autouse=True)
def _restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------- EMA
def loop_ema(net_g, net_g_ema, decay):
    """The per-tensor EMA SeGSRModel had before the fused one (the reference it must equal bit for bit)."""
    ema_params = dict(net_g_ema.named_parameters())
    ema_buffers = dict(net_g_ema.named_buffers())
    with torch.no_grad():
        for k, p in net_g.named_parameters():
            if p.requires_grad:
                ema_params[k].mul_(decay).add_(p.detach(), alpha=1 - decay)
            elif decay == 0:
                ema_params[k].copy_(p.detach())
        for k, b in net_g.named_buffers():
            if k not in ema_buffers:
                continue
            if b.is_floating_point():
                ema_buffers[k].mul_(decay).add_(b.detach(), alpha=1 - decay)
            else:
                ema_buffers[k].copy_(b)


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g))
            else:
                t.add_(seed)  # integer buffers (indices, the CLIP digest): copied, never averaged


@pytest.mark.parametrize('decay', [0.999, 0.5, 0.0])
def test_fused_ema_equals_the_per_tensor_loop_exactly(tmp_path, decay):
    model = build_model(make_opt(tmp_path, GUIDED_HAT))
    net = model.net_g
    perturb(net, 1)
    perturb(model.net_g_ema, 2)  # the EMA net differs everywhere, frozen CLIP included
    reference = copy.deepcopy(model.net_g_ema)
    loop_ema(net, reference, decay)
    before = {k: v.clone() for k, v in model.net_g_ema.state_dict().items()}
    model.model_ema(decay)
    got, want = model.net_g_ema.state_dict(), reference.state_dict()
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    assert frozen and any(not p.is_floating_point() for p in net.buffers())
    for k in want:
        assert torch.equal(got[k], want[k]), k
        if k in frozen and decay > 0:
            assert torch.equal(got[k], before[k]), f'EMA touched frozen {k}'
    assert all(torch.equal(got[k], net.state_dict()[k]) for k in frozen if decay == 0)


# ----------------------------------------------------------------------------- TF32
def test_tf32_option_parsing():
    cpu, cuda = 'cpu', 'cuda'  # device types
    assert parse_tf32(None, cuda) is True and parse_tf32(None, cpu) is False
    assert parse_tf32(False, cuda) is False and parse_tf32(True, cpu) is True
    with pytest.raises(ValueError, match=r"train.tf32 must be true, false or ~.*'yes'"):
        parse_tf32('yes', cuda)


def test_set_tf32_sets_matmul_and_cudnn_flags():
    set_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    set_tf32(False)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_tf32_on_cpu_changes_nothing_and_says_so(tmp_path, caplog):
    set_tf32(False)
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger='basicsr'):
            model = build_model(make_opt(tmp_path, tf32=True))
    finally:
        logger.removeHandler(caplog.handler)
    assert model.tf32 is True
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert 'train.tf32 has no effect on cpu' in caplog.text
    assert build_model(make_opt(tmp_path)).tf32 is False  # default: on for CUDA only
    with pytest.raises(ValueError, match='train.tf32'):
        build_model(make_opt(tmp_path, tf32='on'))


# ----------------------------------------------------------------------------- host syncs
def test_finite_check_freq_defaults_and_bad_values():
    cpu, cuda = 'cpu', 'cuda'  # device types
    assert parse_finite_check_freq(None, cpu, 100) == 1  # a CPU "sync" is free: check every step
    assert parse_finite_check_freq(None, cuda, 50) == 50  # CUDA: on the steps BasicSR logs
    assert parse_finite_check_freq(None, cuda, None) == 100
    assert parse_finite_check_freq(7, cuda, 50) == 7
    for bad in (0, -3, 2.5, True, 'often'):
        with pytest.raises(ValueError, match='train.finite_check_freq'):
            parse_finite_check_freq(bad, cuda, 50)


DEVICES = ['cpu', pytest.param('cuda', marks=[pytest.mark.cuda, CUDA])]


@pytest.mark.parametrize('device', DEVICES)
def test_deferred_check_names_the_first_bad_iteration(tmp_path, device):
    """With the flag read every 4 iterations, a NaN at iteration 2 stops training at iteration 4, naming 2."""
    model = build_model(make_opt(tmp_path, num_gpu=int(device == 'cuda'), finite_check_freq=4))
    for it, nan in ((1, False), (2, True), (3, False)):
        model.feed_data(batch(nan=nan))
        model.optimize_parameters(it)  # no host check: training goes on
    model.feed_data(batch())
    with pytest.raises(FloatingPointError, match=r'Non-finite loss at iteration 2: l_pix=nan, found at iteration 4 '
                                                 r'.*every 4 iterations.*checkpoint .* is intact'):
        model.optimize_parameters(4)


@pytest.mark.parametrize('device', DEVICES)
def test_deferred_check_runs_before_every_save_and_validation(tmp_path, device):
    logger = {'print_freq': 100, 'save_checkpoint_freq': 3}
    model = build_model(make_opt(tmp_path, num_gpu=int(device == 'cuda'), logger=logger, finite_check_freq=50))
    model.feed_data(batch(nan=True))
    model.optimize_parameters(1)
    model.feed_data(batch())
    model.optimize_parameters(2)
    model.feed_data(batch())
    with pytest.raises(FloatingPointError, match='at iteration 1: .*found at iteration 3'):
        model.optimize_parameters(3)  # BasicSR saves after this step: it must not write NaN weights
    assert model._finite_check_due(3) and not model._finite_check_due(4)
    model.opt['val'] = {'val_freq': 5}
    model.opt['train']['total_iter'] = 7
    assert [it for it in range(1, 10) if model._finite_check_due(it)] == [3, 5, 6, 7, 8, 9]


def test_non_finite_gradient_norm_stops_before_the_step(tmp_path):
    model = build_model(make_opt(tmp_path, grad_clip=1.0))
    model.net_g.conv_last.weight.register_hook(lambda g: g * float('inf'))
    before = copy.deepcopy(model.net_g.state_dict())
    model.feed_data(batch())
    with pytest.raises(FloatingPointError, match=r'Non-finite gradient norm at iteration 1: grad_norm=inf.*not '
                                                 'updated'):
        model.optimize_parameters(1)
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_losses_are_read_back_only_when_logged(tmp_path):
    model = build_model(make_opt(tmp_path))
    data = batch()
    model.feed_data(data)
    model.optimize_parameters(1)
    keys, pending = model._pending_log
    assert keys == ['l_pix'] and torch.is_tensor(pending)  # still a tensor: no .item() in the step
    with torch.no_grad():
        expected = torch.nn.functional.l1_loss(model.output, model.gt).item()
    log = model.get_current_log()
    assert list(log) == ['l_pix'] and isinstance(log['l_pix'], float)
    assert log['l_pix'] == pytest.approx(expected, rel=1e-6)
    assert model.log_dict is log  # read back once
    model.log_dict = {'l_pix': 0.5}  # BasicSR-style assignment still works
    assert model.get_current_log() == {'l_pix': 0.5}
