"""Compute restructured for speed gives the same numbers as the plain formulas it replaces.

Batched modulation (all units' convs in one grouped call, '1 +' folded into the bias), the fused
LoRA update and the guided forward are checked against straightforward per-unit / per-layer code,
in outputs and gradients.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segsr_basicsr  # noqa: F401  (registers the archs)
from segsr_basicsr.archs import backbone as guided
from segsr_basicsr.archs.hat_arch import SeGSR_HAT
from segsr_basicsr.archs.lora import LoRALinear
from segsr_basicsr.archs.modulation import SemanticModulation, modulation_scale_shift
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT


def noised_(module: nn.Module, std: float = 0.1) -> nn.Module:
    """Every parameter moved off its init (LoRA B, zero biases, LayerNorm 1/0), so no term vanishes."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


def reference_gamma_beta(mod: SemanticModulation, semantic_map: torch.Tensor):
    """The LMM's convs as written in the paper, unit by unit: (B, C, H, W) gamma and beta."""
    return mod.to_gamma_beta(mod.shared(semantic_map)).chunk(2, dim=1)


def reference_modulate(mod: SemanticModulation, feat, semantic_map, layout):
    gamma, beta = reference_gamma_beta(mod, semantic_map)
    if layout == 'tokens':
        gamma, beta = gamma.flatten(2).transpose(1, 2), beta.flatten(2).transpose(1, 2)
        return mod.norm(feat) * (1 + gamma) + beta
    return mod.norm(feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * (1 + gamma) + beta


def reference_forward(net, x):
    """SeGSR_HAT's forward with one modulation call per unit (the formula, no batching)."""
    h, w = x.shape[-2:]
    x = guided.pad_to_multiple(x, net.size_multiple)
    maps = net.guidance(x)
    feat, ctx = net.forward_head(x)
    for k in range(len(net.sr_units)):
        feat = reference_modulate(net.modulations[k], net.forward_unit(k, feat, ctx), maps[k], net.feature_layout)
    return net.forward_tail(feat, ctx)[..., :h * net.upscale, :w * net.upscale]


def guided_net(**guidance):
    torch.manual_seed(0)
    net = SeGSR_HAT(**{**TINY_HAT, 'depths': [1, 1, 1], 'num_heads': [2, 2, 2], 'drop_path_rate': 0.},
                    guidance={**TINY_GUIDANCE, 'lora_dropout': 0., **guidance})
    net.guidance.encoder.visual.transformer.resblocks[0].attn.lora_B.data.normal_(0, 0.05)
    return noised_(net, std=0.02)


@pytest.mark.parametrize('embeddings', [1, 2])
def test_batched_modulation_equals_unit_by_unit(embeddings):
    torch.manual_seed(0)
    units, channels = 3, 8
    mods = [noised_(SemanticModulation(channels, embeddings, hidden=16)) for _ in range(units)]
    maps = torch.randn(2, units * embeddings, 6, 5)
    batched = modulation_scale_shift(mods, maps)
    for k, mod in enumerate(mods):
        unit_map = maps[:, k * embeddings:(k + 1) * embeddings]
        (scale, shift), = modulation_scale_shift([mod], unit_map)
        gamma, beta = reference_gamma_beta(mod, unit_map)
        assert batched[k][0].shape == (2, 6, 5, channels)
        for got in (batched[k], (scale, shift)):
            assert torch.allclose(got[0], 1 + gamma.permute(0, 2, 3, 1), atol=1e-5)
            assert torch.allclose(got[1], beta.permute(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize('layout', ['tokens', 'image'])
def test_modulated_features_equal_the_formula_and_keep_the_backbone_layout(layout):
    """Tokens come back contiguous, maps channels-last: the next unit's LayerNorm/convs copy nothing."""
    torch.manual_seed(0)
    mod = noised_(SemanticModulation(8, 1, hidden=16))
    semantic_map = torch.randn(2, 1, 6, 5)
    feat = torch.randn(2, 30, 8) if layout == 'tokens' else torch.randn(2, 8, 6, 5)
    out = mod(feat, semantic_map, layout)
    assert torch.allclose(out, reference_modulate(mod, feat, semantic_map, layout), atol=1e-5)
    if layout == 'tokens':
        assert out.is_contiguous()
    else:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_guided_forward_and_gradients_equal_unit_by_unit_formula():
    net = guided_net().train()
    x, target = torch.rand(2, 3, 10, 9), torch.rand(2, 3, 40, 36)
    results = []
    for forward in (net, lambda t: reference_forward(net, t)):
        net.zero_grad(set_to_none=True)
        out = forward(x)
        F.l1_loss(out, target).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and any(n.startswith('modulations.2.') for n in grads)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize('batch_bytes', [1, 1 << 40])
def test_inference_equal_whether_units_are_batched_or_one_by_one(monkeypatch, batch_bytes):
    """Inference batches as many units' modulation convs as MODULATION_BATCH_BYTES allows; any split is the same."""
    net = guided_net().eval()
    x = torch.rand(2, 3, 12, 12)
    monkeypatch.setattr(guided, 'MODULATION_BATCH_BYTES', batch_bytes)
    with torch.no_grad():
        ref = reference_forward(net, x)
        net.merge_lora()
        merged = net(x)
        net.unmerge_lora()
        unmerged = net(x)
    assert torch.allclose(merged, ref, rtol=1e-5, atol=1e-5) and torch.allclose(unmerged, ref, rtol=1e-5, atol=1e-5)


def test_fused_lora_update_equals_the_low_rank_formula():
    """y = W x + b + (alpha / r) B A x, outputs and gradients (of A, B and x), for alpha != r."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 20), rank=3, alpha=6., dropout=0.)
    noised_(layer)
    x = torch.randn(2, 7, 12, requires_grad=True)
    grad_out = torch.randn(2, 7, 20)
    results = []
    for fn in (layer, lambda t: F.linear(t, layer.weight, layer.bias) + 2. * (t @ layer.lora_A.t() @ layer.lora_B.t())):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = fn(x)
        out.backward(grad_out)
        results.append((out.detach(), x.grad.clone(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()))
    for got, want in zip(*results):
        assert torch.allclose(got, want, atol=1e-5)
