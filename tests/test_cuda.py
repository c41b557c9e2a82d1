"""The CUDA paths, run on a GPU: ``pytest -m cuda`` (every CUDA test skips with a reason elsewhere).

CPU vs CUDA forward/backward of the guided HAT (fp32, TF32 off) and of the training attention
(SDPA's fused kernel with a trainable relative-position bias and the shift mask vs the CPU autograd
function); 50 AMP steps (bf16, fp16 + GradScaler); caches after device moves; a training step without
host syncs; the train entry point on CUDA with --auto_resume, its checkpoint loaded on CPU; torchrun on
nccl; tiled bf16 inference; torch.compile vs eager. Tiny networks (tests/tiny_configs.py): seconds on a GPU.
"""
import copy
import os
import subprocess

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import segsr_basicsr  # noqa: F401,I001  (compat first, then registers everything)
from basicsr.archs import build_network
from basicsr.models import build_model
from segsr_basicsr.archs.hat_blocks import attention, gather_bias, relative_position_index_oca, \
    relative_position_index_sa, shift_window_mask
from segsr_basicsr.models.segsr_model import set_tf32
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT
from train_opts import PYTHON, env, exp_logs, losses, run_train, train_opt, write_opt, write_pairs

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason='needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)')


def cuda_test(fn):
    return pytest.mark.cuda(needs_cuda(fn))


@pytest.fixture(autouse=True)
def _restore_tf32():
    """SeGSRModel sets the process-wide TF32 flags (train.tf32): put PyTorch's back after each test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def exact_fp32():
    """fp32 matmuls and convolutions without TF32: CPU and CUDA results comparable to ~1e-6."""
    set_tf32(False)


def cuda_env():
    """train_opts.env() hides GPUs from subprocesses; these need one."""
    return {'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES', '0')}


def guided_options():
    """The tiny guided HAT, deterministic in train mode (no drop-path, no LoRA dropout)."""
    return dict(type='SeGSR_HAT', **TINY_HAT, drop_path_rate=0.,
                guidance=dict(TINY_GUIDANCE, lora_dropout=0.))


def guided_net():
    """Tiny guided HAT whose zero-initialised tensors (LoRA B, ...) are made non-zero, so every parameter
    gets a gradient (a zero B would leave LoRA A's gradient exactly zero on both devices)."""
    net = build_network(guided_options())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return net


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: a scale-free error for tensors of any magnitude."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def forward_backward(net, x, target):
    """Output and {name: grad} of one L1 step (grads cleared first)."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    F.l1_loss(out, target).backward()
    return out.detach(), {k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, ref: dict, tol: float):
    assert got.keys() == ref.keys()
    errors = {k: rel_err(got[k], ref[k]) for k in ref}
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert worst[0][1] <= tol, f'gradients differ (max |diff| / max |grad|) beyond {tol}: {worst}'


def model_opt(tmp_path, network, **train):
    """A SeGSRModel option dict on one GPU (BasicSR's parsed form)."""
    exp = tmp_path / 'exp'
    for k in ('models', 'training_states', 'visualization'):
        (exp / k).mkdir(parents=True, exist_ok=True)
    return {
        'name': 'cuda', 'model_type': 'SeGSRModel', 'scale': 4, 'num_gpu': 1, 'dist': False, 'rank': 0,
        'world_size': 1, 'is_train': True, 'manual_seed': 0, 'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'experiments_root': str(exp),
                 'models': str(exp / 'models'), 'training_states': str(exp / 'training_states'),
                 'visualization': str(exp / 'visualization'), 'log': str(exp)},
        'train': {'ema_decay': 0.999, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
        'logger': {'print_freq': 100, 'save_checkpoint_freq': 1000},
    }


def fixed_batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = F.avg_pool2d(torch.rand(n, 3, size * 4, size * 4, generator=g), 5, 1, 2)  # smooth: learnable
    lq = F.interpolate(gt, scale_factor=0.25, mode='bicubic', antialias=True).clamp(0, 1)
    return {'lq': lq, 'gt': gt}


# ----------------------------------------------------------------------------- the network
@cuda_test
def test_guided_hat_forward_and_backward_match_cpu(exact_fp32):
    torch.manual_seed(0)
    net = guided_net().train()
    x = torch.rand(2, 3, 13, 18)  # not a window multiple: padded, shifted windows with a mask
    target = torch.rand(2, 3, 52, 72)
    out_cpu, grads_cpu = forward_backward(net, x, target)
    gpu = copy.deepcopy(net).cuda()
    out_gpu, grads_gpu = forward_backward(gpu, x.cuda(), target.cuda())
    assert (out_gpu.cpu() - out_cpu).abs().max().item() <= 1e-4
    assert len(grads_cpu) == sum(p.requires_grad for p in net.parameters())  # every trainable tensor got one
    assert_grads_close(grads_gpu, grads_cpu, 1e-4)


@cuda_test
@pytest.mark.parametrize('kind', ['shifted_sa', 'plain_sa', 'oca'])
@pytest.mark.parametrize('batch', [1, 2])
def test_training_attention_sdpa_matches_cpu_autograd_function(exact_fp32, kind, batch):
    """CUDA: fused SDPA (memory-efficient kernel, forced) differentiating the bias; CPU: BiasedWindowAttention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ws, heads, d, grid = 4, 2, 8, 16  # a 16 x 16 feature map: 16 windows per image
    n = ws * ws
    if kind == 'oca':
        ows = ws + ws // 2
        index, table_rows, m = relative_position_index_oca(ws, ows), (ws + ows - 1) ** 2, ows * ows
    else:
        index, table_rows, m = relative_position_index_sa(ws), (2 * ws - 1) ** 2, n
    g = torch.Generator().manual_seed(0)
    nw = (grid // ws) ** 2
    q = torch.randn(batch * nw, heads, n, d, generator=g)
    k, v = torch.randn(2, batch * nw, heads, m, d, generator=g)
    table = torch.randn(table_rows, heads, generator=g) * 0.5
    mask = shift_window_mask(grid, grid, ws, ws // 2, torch.float32, torch.device('cpu')) \
        if kind == 'shifted_sa' else None
    grad_out = torch.randn(batch * nw, heads, n, d, generator=g)

    def run(device, backends=None):
        leaves = [t.clone().to(device).requires_grad_() for t in (q, k, v, table)]
        bias = gather_bias(leaves[3], index.to(device))
        ctx = sdpa_kernel(backends) if backends else torch.enable_grad()
        with ctx:
            out = attention(*leaves[:3], bias, None if mask is None else mask.to(device), d ** -0.5, 0., batch)
            out.backward(grad_out.to(device))
        return out.detach(), {name: t.grad for name, t in zip(('q', 'k', 'v', 'bias_table'), leaves)}

    out_cpu, grads_cpu = run('cpu')
    out_gpu, grads_gpu = run('cuda', [SDPBackend.EFFICIENT_ATTENTION])
    assert rel_err(out_gpu, out_cpu) <= 1e-4
    assert_grads_close(grads_gpu, grads_cpu, 1e-4)


@cuda_test
def test_caches_follow_the_network_across_devices(exact_fp32):
    """Shift masks and the resized CLIP positional embedding are cached per size: a CPU-filled cache must not be
    served to CUDA inputs after ``.cuda()``, nor a CUDA one after ``.cpu()``."""
    net = guided_net().eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)  # fills both caches on the CPU
        assert net._shift_masks and net.guidance.encoder._pos_cache is not None
        net.cuda()
        out = net(x.cuda())
        assert all(m.is_cuda for m in net._shift_masks.values())
        assert all(t.is_cuda for t in net.guidance.encoder._pos_cache[2].values())
        assert (out.cpu() - ref).abs().max().item() <= 1e-4
        net.cpu()
        assert torch.equal(net(x), ref)


# ----------------------------------------------------------------------------- SeGSRModel on CUDA
@cuda_test
@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_fifty_amp_steps_are_finite_and_the_loss_falls(tmp_path, amp):
    model = build_model(model_opt(tmp_path, guided_options(), amp=amp))
    assert model.device.type == 'cuda' and next(model.net_g.parameters()).is_cuda
    assert (model.scaler is not None) == (amp == 'fp16')
    data = fixed_batch()
    seen = []
    for it in range(1, 51):
        model.feed_data(data)
        model.optimize_parameters(it)
        seen.append(model.get_current_log()['l_pix'])
    assert np.isfinite(seen).all(), seen
    assert np.mean(seen[-10:]) < 0.8 * np.mean(seen[:10]), seen
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.net_g.parameters())
    if amp == 'fp16':
        assert 0 < model.scaler.get_scale() < float('inf')


@cuda_test
@pytest.mark.parametrize('amp', [None, 'bf16'])
def test_a_training_step_does_not_sync_with_the_host(tmp_path, amp):
    """Between check steps the GPU runs ahead: no .item(), no blocking copy (torch's sync debug mode raises)."""
    model = build_model(model_opt(tmp_path, guided_options(), amp=amp, finite_check_freq=100))
    data = fixed_batch()
    model.feed_data(data)
    model.optimize_parameters(1)  # warm-up: lazy initialisations (optimizer state, caches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for it in (2, 3):
            model.feed_data(data)
            model.optimize_parameters(it)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert np.isfinite(model.get_current_log()['l_pix'])  # the log step reads it back


@cuda_test
def test_tf32_is_on_by_default_on_cuda_and_can_be_turned_off(tmp_path):
    model = build_model(model_opt(tmp_path, guided_options()))
    assert model.tf32 and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    model = build_model(model_opt(tmp_path, guided_options(), tf32=False))
    assert not model.tf32 and not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@cuda_test
def test_fused_ema_matches_a_per_tensor_update_on_cuda(tmp_path):
    model = build_model(model_opt(tmp_path, guided_options()))
    net, ema = model.net_g, model.net_g_ema
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    expected = {k: (e * 0.9 + p * 0.1) if p.requires_grad else e.clone()
                for (k, e), p in zip(ema.named_parameters(), net.parameters())}
    model.model_ema(0.9)
    for k, e in ema.named_parameters():
        torch.testing.assert_close(e, expected[k], rtol=1e-6, atol=1e-7, msg=k)


# ----------------------------------------------------------------------------- entry points on CUDA
def guided_train_opt(root, name, total_iter, save_freq, **kw):
    opt = train_opt(root / 'data', name=name, total_iter=total_iter, save_freq=save_freq, model_type='SeGSRModel',
                    network=guided_options(), gt_size=32, **kw)
    opt['num_gpu'] = 1
    return opt


@cuda_test
def test_train_on_cuda_auto_resume_then_load_the_checkpoint_on_cpu(tmp_path):
    write_pairs(tmp_path / 'data', n=4)
    opt = guided_train_opt(tmp_path, 'cuda_resume', total_iter=4, save_freq=2, val_freq=4)
    opt['train']['amp'] = 'bf16'
    opt_path = write_opt(tmp_path / 'train.yml', opt)
    run_train(tmp_path, opt_path, extra_env=cuda_env())  # stops at iteration 4 (its schedule's end)
    run_train(tmp_path, opt_path, '--auto_resume', '--force_yml', 'train:total_iter=8', extra_env=cuda_env())
    log = exp_logs(tmp_path, 'cuda_resume')
    assert 'Resuming training from epoch: 1, iter: 4.' in log
    assert 'TF32 matmuls and convolutions: on' in log and 'bfloat16 autocast on cuda' in log
    assert sorted(losses(log)) == list(range(1, 9))
    exp = tmp_path / 'experiments' / 'cuda_resume'
    state = torch.load(exp / 'training_states' / '8.state', map_location='cpu', weights_only=True)
    assert 'cuda' in state['rng_states'][0]  # CUDA RNG states are saved for an exact resume
    ckpt = torch.load(exp / 'models' / 'net_g_latest.pth', map_location='cpu', weights_only=True)
    net = build_network(guided_options())
    net.load_state_dict(ckpt['params_ema'], strict=True)
    with torch.no_grad():
        assert torch.isfinite(net.eval()(torch.rand(1, 3, 12, 12))).all()


@cuda_test
def test_torchrun_one_process_on_nccl(tmp_path):
    write_pairs(tmp_path / 'data', n=4)
    opt = guided_train_opt(tmp_path, 'nccl', total_iter=4, save_freq=2, val_freq=2, batch=2)
    opt_path = write_opt(tmp_path / 'nccl.yml', opt)
    cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m', 'segsr_basicsr.train',
           '-opt', opt_path, '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(NCCL_DEBUG='INFO', SEGSR_DIST_TIMEOUT=300, **cuda_env()),
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert 'segsr-train: rank 0/1 finished' in output
    assert 'NCCL INFO' in output  # the process group really is nccl (gloo prints no NCCL lines)
    log = exp_logs(tmp_path, 'nccl')
    assert 'World size (gpu number): 1' in log and sorted(losses(log)) == [1, 2, 3, 4]
    weights = torch.load(tmp_path / 'experiments' / 'nccl' / 'models' / 'net_g_latest.pth', map_location='cpu',
                         weights_only=True)['params']
    assert not any(k.startswith('module.') for k in weights)


@cuda_test
def test_infer_cuda_bf16_tiled_matches_cpu_fp32(tmp_path, exact_fp32):
    from segsr_basicsr.infer import main as infer_main
    torch.manual_seed(0)
    net = guided_net()
    (tmp_path / 'test.yml').write_text(yaml.safe_dump({'name': 'hat', 'scale': 4, 'network_g': guided_options()}))
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (45, 61, 3)).astype(np.uint8), (5, 5), 0)
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'scene.png'), scene)
    outs = {}
    for device, amp in (('cpu', 'none'), ('cuda', 'none'), ('cuda', 'bf16')):
        out_dir = tmp_path / f'{device}_{amp}'
        infer_main(['-opt', str(tmp_path / 'test.yml'), '--model', str(tmp_path / 'net.pth'), '--input',
                    str(tmp_path / 'in' / 'scene.png'), '--output', str(out_dir), '--tile', '24', '--tile-overlap',
                    '8', '--tile-batch', '2', '--device', device, '--amp', amp])
        outs[(device, amp)] = cv2.imread(str(out_dir / 'scene_SeGSR_x4.png')).astype(int)
    ref = outs[('cpu', 'none')]
    assert ref.shape == (180, 244, 3)
    assert np.abs(outs[('cuda', 'none')] - ref).max() <= 1  # fp32 on both: rounding only
    diff = np.abs(outs[('cuda', 'bf16')] - ref)
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())  # bf16: ~3 significant digits


@cuda_test
def test_torch_compile_equals_eager(exact_fp32):
    net = guided_net().cuda()
    compiled = torch.compile(copy.deepcopy(net), dynamic=False)
    x = torch.rand(2, 3, 16, 16, device='cuda')
    target = torch.rand(2, 3, 64, 64, device='cuda')
    with torch.no_grad():
        assert rel_err(compiled.eval()(x), net.eval()(x)) <= 1e-4
    out_c, grads_c = forward_backward(compiled.train(), x, target)
    out_e, grads_e = forward_backward(net.train(), x, target)
    assert rel_err(out_c, out_e) <= 1e-4
    assert_grads_close({k.replace('_orig_mod.', ''): v for k, v in grads_c.items()}, grads_e, 1e-3)


# ----------------------------------------------------------------------------- CPU part of the device moves
def test_cached_positional_embedding_follows_dtype_moves():
    """The CPU-checkable half of the cache test: ``.double()`` swaps the embedding's data in place; the resized
    copy must follow (before the fix, the float32 copy of the old data kept being served, and after ``.cuda()``
    a CPU tensor met CUDA tokens)."""
    net = guided_net().eval()
    enc = net.guidance.encoder
    grid = enc.token_grid(16, 16, net.upscale)
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
        assert enc.positional_embedding(grid).dtype == torch.float32
        net.double()
        assert enc.positional_embedding(grid).dtype == torch.float64
        net.to('meta')
        assert enc.positional_embedding(grid).device.type == 'meta'
