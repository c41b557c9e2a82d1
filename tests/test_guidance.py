"""SeG-SR semantic guidance (SFEM + SLM) and modulation (LMM) on SeGSR_HAT, on tiny configs.

CLIP checkpoints are files the tests write themselves from a random open_clip model (no downloads).
"""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

import segsr_basicsr  # noqa: F401  (registers the archs)
from segsr_basicsr.archs.clip_tower import CLIP_CONFIG_DIR, is_torchscript_archive, resize_positional_embedding
from segsr_basicsr.archs.guidance import GUIDANCE_DEFAULTS, SemanticGuidance
from segsr_basicsr.archs.hat_arch import SeGSR_HAT
from segsr_basicsr.archs.lora import LoRALinear, LoRASelfAttention
from segsr_basicsr.archs.modulation import SemanticModulation
from tests.tiny_configs import TINY_GUIDANCE, TINY_HAT

TINY_CLIP = 'SeGSR-Tiny-ViT'
VISUAL = 'guidance.encoder.visual.'


def write_clip_checkpoint(path, seed=1):
    """A tiny open_clip CLIP with random weights (noised, so no tensor keeps its default value), saved to ``path``."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = model.state_dict()
    if str(path).endswith('.pth'):  # an open_clip training checkpoint: DDP 'module.' keys under 'state_dict'
        torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)
    elif str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return model.eval()


def guided_hat(scale=4, hat=None, **guidance):
    return SeGSR_HAT(**{**TINY_HAT, **(hat or {}), 'upscale': scale}, guidance={**TINY_GUIDANCE, **guidance})


def train_steps(net, steps=3, size=(12, 10), lr=1e-2):
    """A few L1 steps with Adam, so LoRA's B (zero at init) and everything else move."""
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        x = torch.rand(2, 3, *size)
        loss = (net(x) - torch.rand(2, 3, size[0] * net.upscale, size[1] * net.upscale)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / 'tiny_clip.pt'
    return path, write_clip_checkpoint(path)


# --- SFEM: CLIP weights, features, positional embedding ----------------------------------------

@pytest.mark.parametrize('suffix', ['.pt', '.pth', '.safetensors'])
def test_clip_weights_from_file_equal_the_file_and_are_frozen(tmp_path, suffix):
    path = tmp_path / f'clip{suffix}'
    write_clip_checkpoint(path)
    if suffix == '.pt':
        ref = torch.load(path, weights_only=True)
    elif suffix == '.pth':
        ref = {k[len('module.'):]: v for k, v in torch.load(path, weights_only=True)['state_dict'].items()}
    else:
        from safetensors.torch import load_file
        ref = load_file(str(path))
    net = guided_hat(clip_pretrained=str(path))
    visual = net.guidance.encoder.visual.state_dict()
    base = {k: v for k, v in visual.items() if 'lora_' not in k}
    assert len(base) == len([k for k in ref if k.startswith('visual.')]) > 20
    for name, tensor in base.items():
        assert torch.equal(tensor, ref[f'visual.{name}']), name
    for name, p in net.guidance.encoder.visual.named_parameters():
        assert p.requires_grad == ('lora_' in name), name


def test_features_at_init_equal_plain_open_clip_any_grid(clip_file):
    """LoRA starts as the identity; the [CLS] -> I_g, patch tokens -> I_l; the positional embedding is resized on
    its 2-D grid exactly as open_clip resizes it when loading a checkpoint at another image size."""
    path, _ = clip_file
    net = guided_hat(clip_pretrained=str(path)).eval()
    encoder = net.guidance.encoder
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    for lr_size, grid in [((56, 56), (14, 14)), ((20, 37), (5, 9))]:  # 37*4/16 = 9.25 -> 9 tokens
        ref = open_clip.create_model(TINY_CLIP, pretrained=str(path), force_image_size=(grid[0] * 16, grid[1] * 16))
        ref.visual.output_tokens = True
        x = torch.rand(2, 3, *lr_size)
        up = F.interpolate(x, size=(grid[0] * 16, grid[1] * 16), mode='bilinear', align_corners=False)
        with torch.no_grad():
            pooled, tokens = ref.eval().visual((up - mean) / std)
            ours_global, ours_local, ours_grid = encoder(x, 4)
        assert ours_grid == grid
        assert ours_local.shape == (2, grid[0] * grid[1], 64)
        assert (ours_global - F.normalize(pooled, dim=-1)).abs().max() < 1e-5
        assert (ours_local - F.normalize(tokens @ ref.visual.proj, dim=-1)).abs().max() < 1e-5


def test_global_feature_is_cls_token_not_a_patch_token():
    net = guided_hat().eval()
    visual = net.guidance.encoder.visual
    seen = {}
    visual.transformer.register_forward_hook(lambda m, i, out: seen.update(tokens=out))
    with torch.no_grad():
        global_feat, local_feat, _ = net.guidance.encoder(torch.rand(1, 3, 16, 16), 4)
        cls = F.normalize(visual.ln_post(seen['tokens'][:, 0]) @ visual.proj, dim=-1)
    assert torch.allclose(global_feat, cls, atol=1e-6)
    distance_to_patches = (local_feat[0] - global_feat[0]).norm(dim=-1)
    assert distance_to_patches.min() > 1e-3  # the official code took patch token 0 as "global"


def test_positional_embedding_resized_on_2d_grid_and_cached():
    pos = torch.randn(1 + 14 * 14, 8)
    assert torch.equal(resize_positional_embedding(pos, (14, 14), (14, 14)), pos)
    # a 2-D grid resize keeps "row" channels constant along rows and "column" channels along columns
    rows, cols = torch.meshgrid(torch.arange(14.), torch.arange(14.), indexing='ij')
    pos[1:, 0], pos[1:, 1] = rows.flatten(), cols.flatten()
    out = resize_positional_embedding(pos, (14, 14), (7, 28))
    assert out.shape == (1 + 7 * 28, 8) and torch.equal(out[0], pos[0])
    grid = out[1:].reshape(7, 28, 8)
    assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(7, 28), atol=1e-5)
    assert torch.allclose(grid[:, :, 1], grid[:1, :, 1].expand(7, 28), atol=1e-5)
    assert grid[:, 0, 0].diff().min() > 0 and grid[0, :, 1].diff().min() > 0

    encoder = guided_hat().guidance.encoder
    assert encoder.positional_embedding((14, 14)) is encoder.visual.positional_embedding
    first = encoder.positional_embedding((3, 5))
    assert encoder.positional_embedding((3, 5)) is first  # built once per grid
    with torch.no_grad():
        encoder.visual.positional_embedding.add_(1.)  # e.g. load_state_dict: the cache follows the new values
    assert torch.allclose(encoder.positional_embedding((3, 5)), first + 1., atol=1e-5)


# --- LoRA ----------------------------------------------------------------------------------

def test_lora_targets_qkv_and_both_mlp_linears_of_every_block():
    net = guided_hat(lora_rank=3, lora_alpha=6)
    blocks = net.guidance.encoder.visual.transformer.resblocks
    assert len(blocks) == 2
    for block in blocks:
        assert isinstance(block.attn, LoRASelfAttention) and block.attn.lora_A.shape == (3, 64)
        assert block.attn.lora_B.shape == (3 * 64, 3) and not block.attn.lora_B.any()
        assert isinstance(block.mlp.c_fc, LoRALinear) and isinstance(block.mlp.c_proj, LoRALinear)
        assert block.mlp.c_fc.lora_scale == 2.
    keys = net.guidance.encoder.visual.state_dict().keys()
    assert 'transformer.resblocks.0.attn.in_proj_weight' in keys  # open_clip's names are kept
    assert 'transformer.resblocks.0.mlp.c_fc.weight' in keys


def test_merged_lora_equals_unmerged_after_training():
    net = train_steps(guided_hat())
    lora = net.guidance.encoder.visual.transformer.resblocks[0].mlp.c_fc
    assert lora.lora_B.abs().max() > 0
    before = lora.weight.detach().clone()
    unmerged_state = copy.deepcopy(net.state_dict())
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        out = net(x)
        with net.merged_lora():
            assert lora.merged and not torch.equal(lora.weight, before)
            merged_out = net(x)
            merged_state = net.state_dict()  # checkpoints always hold the unmerged weights
        after = net(x)
    assert (merged_out - out).abs().max() < 1e-5
    assert (after - out).abs().max() < 1e-5 and not lora.merged
    assert torch.allclose(lora.weight, before, atol=1e-6)
    assert merged_state.keys() == unmerged_state.keys()
    for k, v in unmerged_state.items():
        assert torch.allclose(merged_state[k].float(), v.float(), atol=1e-6), k
    net.merge_lora()
    net.load_state_dict(unmerged_state)  # loading into a merged net unmerges first: no B A applied twice
    with torch.no_grad():
        assert not lora.merged and (net(x) - out).abs().max() < 1e-5


# --- training: gradients, what is trainable ------------------------------------------------------

@pytest.mark.parametrize('scale, tune', [(3, 'lora'), (4, 'lora'), (2, 'full')])
def test_every_trainable_parameter_gets_a_gradient(scale, tune):
    """No unused parameters (DDP without find_unused_parameters). With the zero-initialised modulation the
    guidance gets its first gradient at step 2 (once gamma/beta's conv has left zero), LoRA's A at step 3
    (once B has left zero, as for any LoRA)."""
    net = train_steps(guided_hat(scale=scale, embeddings_per_unit=2, tune=tune), steps=2).train()
    x = torch.rand(2, 3, 9, 10)
    (net(x) - torch.rand(2, 3, 9 * scale, 10 * scale)).abs().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []


@pytest.mark.parametrize('tune', ['lora', 'frozen', 'full'])
def test_tune_mode_decides_trainable_clip_parameters(tune):
    net = guided_hat(tune=tune)
    clip = {n: p for n, p in net.named_parameters() if n.startswith(VISUAL)}
    trainable = {n for n, p in clip.items() if p.requires_grad}
    lora = {n for n in clip if '.lora_' in n}
    if tune == 'lora':
        assert trainable == lora and len(lora) == 2 * 3 * 2  # A, B x (qkv, c_fc, c_proj) x 2 blocks
    elif tune == 'frozen':
        assert trainable == set() and not lora
    else:
        assert trainable == set(clip) and not lora
    others = [n for n, p in net.named_parameters() if not n.startswith(VISUAL)]
    assert all(dict(net.named_parameters())[n].requires_grad for n in others)
    assert all(net.guidance.is_clip_parameter(n[len('guidance.'):]) for n in clip)
    assert not net.guidance.is_clip_parameter('unit_embeddings')


def test_semantic_embeddings_are_registered_parameters():
    net = guided_hat(embeddings_per_unit=3)
    params = dict(net.named_parameters())
    assert params['guidance.unit_embeddings'].shape == (2 * 3, 64)  # K units x E, CLIP embed dim
    assert params['guidance.global_embedding'].shape == (64,)
    assert 'guidance.unit_embeddings' in net.state_dict()
    assert net.guidance.map_channels == 3 and net.modulations[0].shared[0].in_channels == 3


# --- SLM maps and LMM ------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_any_scale_any_lr_size(scale):
    net = guided_hat(scale=scale, embeddings_per_unit=2).eval()
    net.record_semantic_maps = True
    grid_maps = []
    net.guidance.upsampler.register_forward_pre_hook(lambda m, args: grid_maps.append(args[0]))
    x = torch.rand(2, 3, 13, 18)  # not multiples of the window (4) nor of 16 / scale
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 13 * scale, 18 * scale) and torch.isfinite(out).all()
    maps = net.semantic_maps
    assert len(maps) == 2 and all(m.shape == (2, 2, 16, 20) for m in maps)  # padded LR grid, E = 2 channels
    gh, gw = net.guidance.encoder.token_grid(16, 20, scale)
    assert grid_maps[0].shape == (2, 2 * 2, gh, gw)
    # S = tau * cos(I_l, e): bounded by tau, and not constant
    assert grid_maps[0].abs().max() <= net.guidance.logit_scale + 1e-3 and grid_maps[0].std() > 0


def test_modulation_is_layernorm_scale_shift_in_both_layouts():
    mod = SemanticModulation(channels=6, map_channels=2, hidden=8, init='default')
    feat, smap = torch.randn(2, 6, 5, 7), torch.randn(2, 2, 5, 7)
    gamma, beta = mod.to_gamma_beta(mod.shared(smap)).chunk(2, dim=1)
    normed = F.layer_norm(feat.permute(0, 2, 3, 1), (6,), mod.norm.weight, mod.norm.bias).permute(0, 3, 1, 2)
    expected = normed * (1 + gamma) + beta
    assert mod.shared[0].kernel_size == (3, 3) and mod.to_gamma_beta.kernel_size == (3, 3)
    assert torch.allclose(mod(feat, smap, 'image'), expected, atol=1e-6)
    tokens = mod(feat.flatten(2).transpose(1, 2), smap, 'tokens')
    assert torch.allclose(tokens, expected.flatten(2).transpose(1, 2), atol=1e-6)
    with pytest.raises(ValueError, match='does not match'):
        mod(torch.randn(2, 34, 6), smap, 'tokens')


# --- checkpoints ------------------------------------------------------------------------------------

def build_from_options(guidance):
    from basicsr.archs import build_network
    return build_network({'type': 'SeGSR_HAT', **TINY_HAT, 'guidance': guidance})


def basicsr_load(net, path):
    """BasicSR's own BaseModel.load_network (strict=True, param_key 'params')."""
    from basicsr.models.base_model import BaseModel
    BaseModel.load_network(BaseModel.__new__(BaseModel), net, str(path), strict=True, param_key='params')


def test_save_rebuild_load_identical_without_frozen_clip_weights(clip_file, tmp_path):
    path, _ = clip_file
    options = {**TINY_GUIDANCE, 'clip_pretrained': str(path)}
    net = train_steps(build_from_options(options))
    state = net.state_dict()
    clip_keys = [k for k in state if k.startswith(VISUAL)]
    assert clip_keys and all('.lora_' in k for k in clip_keys)  # frozen CLIP weights come from the file
    torch.save({'params': state}, tmp_path / 'net_g.pth')

    torch.manual_seed(123)
    rebuilt = build_from_options(options)
    basicsr_load(rebuilt, tmp_path / 'net_g.pth')
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), net(x))


def test_random_clip_is_saved_so_a_checkpoint_rebuilds_the_same_network(tmp_path):
    net = train_steps(build_from_options(dict(TINY_GUIDANCE)))
    state = net.state_dict()
    assert f'{VISUAL}transformer.resblocks.0.attn.in_proj_weight' in state
    torch.save({'params': state}, tmp_path / 'net_g.pth')
    torch.manual_seed(123)  # other random CLIP weights
    rebuilt = build_from_options(dict(TINY_GUIDANCE))
    basicsr_load(rebuilt, tmp_path / 'net_g.pth')
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), net(x))


def test_full_tuning_saves_the_clip_weights(clip_file):
    path, _ = clip_file
    state = guided_hat(clip_pretrained=str(path), tune='full').state_dict()
    assert f'{VISUAL}conv1.weight' in state and f'{VISUAL}proj' in state


def test_checkpoint_from_another_clip_source_fails_clearly(clip_file, tmp_path):
    path, _ = clip_file
    state = guided_hat(clip_pretrained=str(path)).state_dict()
    other = tmp_path / 'other_clip.pt'
    write_clip_checkpoint(other, seed=2)
    with pytest.raises(RuntimeError, match='does not match this network.s CLIP source'):
        guided_hat(clip_pretrained=str(other)).load_state_dict(state)
    with pytest.raises(RuntimeError, match='CLIP source'):
        guided_hat().load_state_dict(state)  # random CLIP vs file CLIP


def test_clip_model_config_json_and_torchscript_file(tmp_path):
    config = tmp_path / 'MyTinyViT.json'
    config.write_text((CLIP_CONFIG_DIR / f'{TINY_CLIP}.json').read_text().replace('"layers": 2', '"layers": 1'))
    net = guided_hat(clip_model=str(config))
    assert len(net.guidance.encoder.visual.transformer.resblocks) == 1

    model = write_clip_checkpoint(tmp_path / 'unused.pt')
    scripted = tmp_path / 'tiny_jit.pt'
    torch.jit.script(model).save(str(scripted))
    assert is_torchscript_archive(str(scripted)) and not is_torchscript_archive(str(tmp_path / 'unused.pt'))
    net = guided_hat(clip_pretrained=str(scripted))  # explicit local path: allowed
    assert torch.equal(net.guidance.encoder.visual.conv1.weight, model.visual.conv1.weight)


# --- guidance off, options and errors ---------------------------------------------------------------

def test_guidance_disabled_is_plain_hat():
    spandrel_hat = pytest.importorskip('spandrel.architectures.HAT')
    guided = guided_hat()
    backbone_state = {k: v for k, v in guided.state_dict().items() if not k.startswith(('guidance.', 'modulations.'))}
    plain = SeGSR_HAT(**TINY_HAT, guidance=None)
    plain.load_state_dict(backbone_state, strict=True)
    ref = spandrel_hat.HAT(**TINY_HAT)
    ref.load_state_dict(backbone_state, strict=True)
    assert plain.guidance is None and not any(k.startswith(('guidance', 'modulations')) for k in plain.state_dict())
    x = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        out, expected, with_guidance = plain.eval()(x), ref.eval()(x), guided.eval()(x)
    assert (out - expected).abs().max() < 1e-5
    assert (with_guidance - out).abs().max() > 1e-3  # guidance does change the output


def test_defaults_are_the_papers():
    assert GUIDANCE_DEFAULTS == dict(clip_model='ViT-B-16', clip_pretrained='openai', tune='lora', lora_rank=32,
                                     lora_alpha=32, lora_dropout=0.05, embeddings_per_unit=1, logit_scale=100.,
                                     quick_gelu='auto', modulation_init='zero')
    g = SemanticGuidance(num_units=3, upscale=4, clip_model=TINY_CLIP, clip_pretrained=None)
    lora = g.encoder.visual.transformer.resblocks[0].mlp.c_proj
    assert lora.lora_A.shape[0] == 32 and lora.lora_scale == 1. and lora.lora_dropout.p == 0.05
    assert g.logit_scale == 100. and g.map_channels == 1 and g.unit_embeddings.shape == (3, 64)


@pytest.mark.parametrize('bad, message', [
    (dict(lora_rnak=4), r"guidance.lora_rnak is not a guidance option \(did you mean 'lora_rank'\?\)"),
    (dict(tune='lorra'), "guidance.tune must be one of"),
    (dict(lora_rank=0), 'guidance.lora_rank must be an integer >= 1, got 0'),
    (dict(lora_rank=2.5), 'guidance.lora_rank must be an integer'),
    (dict(lora_dropout=1.0), 'guidance.lora_dropout must be a number >= 0 and < 1'),
    (dict(embeddings_per_unit=0), 'guidance.embeddings_per_unit must be an integer >= 1'),
    (dict(logit_scale=-1), 'guidance.logit_scale must be a number > 0'),
    (dict(clip_model='ViT-Q-99'), "guidance.clip_model: 'ViT-Q-99' is not an open_clip model"),
    (dict(clip_model='RN50'), "'RN50' is not an open_clip ViT"),
    (dict(clip_model='/nowhere/cfg.json'), 'does not exist'),
    (dict(clip_model='local-dir:/some/folder'), 'local-dir: sources are not supported'),
    (dict(modulation_init='identity'), r"guidance.modulation_init must be one of zero, default, got 'identity'"),
    (dict(clip_pretrained='no_such_tag'), "neither an open_clip pretrained tag of 'SeGSR-Tiny-ViT'"),
])
def test_bad_options_raise_clear_errors(bad, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        guided_hat(**bad)


def test_guidance_block_must_be_a_mapping():
    with pytest.raises(ValueError, match='network_g.guidance must be a mapping'):
        SeGSR_HAT(**TINY_HAT, guidance=True)


def test_checkpoint_of_other_architecture_fails(tmp_path):
    path = tmp_path / 'vit_b_32_like.pt'
    write_clip_checkpoint(path)
    with pytest.raises(RuntimeError, match="could not load the CLIP checkpoint .* into open_clip model 'ViT-S-32'"):
        guided_hat(clip_model='ViT-S-32', clip_pretrained=str(path))


def test_offline_tag_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError('We could not connect to huggingface.co')
    monkeypatch.setattr(open_clip, 'download_pretrained', offline)
    with pytest.raises(RuntimeError, match='(?s)Offline.*guidance.clip_pretrained: /path/to/.*quick_gelu: true'):
        guided_hat(clip_model='ViT-B-16', clip_pretrained='openai')
    # a tag that resolves to a TorchScript archive is refused (only an explicit local path may be one)
    scripted = tmp_path / 'ViT-B-16.pt'
    torch.jit.script(open_clip.create_model(TINY_CLIP)).save(str(scripted))
    monkeypatch.setattr(open_clip, 'download_pretrained', lambda *a, **k: str(scripted))
    with pytest.raises(RuntimeError, match='TorchScript archive'):
        guided_hat(clip_model='ViT-B-16', clip_pretrained='openai')


# --- LMM at initialisation (guidance.modulation_init) ---------------------------------------------

def backbone_with_layernorms(net, x):
    """What a zero-initialised guided net computes: the backbone with each LMM's LayerNorm after its unit."""
    feat, ctx = net.forward_head(x)
    for k in range(len(net.sr_units)):
        feat = net.modulations[k].norm(net.forward_unit(k, feat, ctx))
    return net.forward_tail(feat, ctx)


def test_zero_modulation_init_starts_as_the_backbone_with_its_layernorms():
    net = guided_hat().eval()  # the default: modulation_init zero
    assert GUIDANCE_DEFAULTS['modulation_init'] == 'zero'
    for mod in net.modulations:
        assert not mod.to_gamma_beta.weight.any() and not mod.to_gamma_beta.bias.any()
    x = torch.rand(2, 3, 12, 16)  # a multiple of the window: no padding
    with torch.no_grad():
        out = net(x)
        assert (out - backbone_with_layernorms(net, x)).abs().max() < 1e-6  # float rounding of the layouts
        net.guidance.unit_embeddings.add_(1.)  # the maps do not matter yet
        assert torch.equal(net(x), out)
    # ... but the modulation learns from the first step: gamma/beta's conv gets a gradient
    net.train()
    (net(x) - torch.rand(2, 3, 48, 64)).abs().mean().backward()
    assert all(mod.to_gamma_beta.weight.grad.abs().max() > 0 for mod in net.modulations)


def test_default_modulation_init_rescales_features_from_step_0():
    """The official code's init: with tau = 100 cosine maps, gamma is far from 0 at step 0."""
    torch.manual_seed(0)
    net = guided_hat(modulation_init='default').eval()
    x = torch.rand(2, 3, 12, 16)
    net.record_semantic_maps = True
    with torch.no_grad():
        out = net(x)
        assert (out - backbone_with_layernorms(net, x)).abs().max() > 1e-2
        mod = net.modulations[0]  # gamma of unit 1 from its recorded map (the batched path runs its own conv)
        gamma = mod.to_gamma_beta(mod.shared(net.semantic_maps[0])).chunk(2, 1)[0]
    assert gamma.std() > 0.2


# --- caches follow .to() / .double() ------------------------------------------------------------------

def test_resized_positional_embedding_follows_dtype_moves():
    net = guided_hat().eval()
    encoder = net.guidance.encoder
    x = torch.rand(1, 3, 12, 20)  # CLIP grid 3 x 5, not the base 14 x 14: the resized copy is cached
    with torch.no_grad():
        out = net(x)
        net.double()
        out64 = net(x.double())
        cached = list(encoder._pos_cache[1].values())
        assert cached and all(t.dtype == torch.float64 for t in cached)
        expected = resize_positional_embedding(encoder.visual.positional_embedding, encoder.base_grid, (3, 5))
        assert torch.equal(encoder.positional_embedding((3, 5)), expected)
        # the CLIP tower alone moved (not through the encoder): still no stale copy
        encoder.visual.float()
        assert encoder.positional_embedding((3, 5)).dtype == torch.float32
    assert out64.dtype == torch.float64 and (out64 - out.double()).abs().max() < 1e-4


def test_shift_masks_follow_dtype_moves():
    net = SeGSR_HAT(**TINY_HAT).eval()
    assert net.shift_size > 0
    x = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        out = net(x)
        assert [m.dtype for m in net._shift_masks.values()] == [torch.float32]
        net.double()
        assert not net._shift_masks  # dropped on the move, rebuilt for the new dtype
        out64 = net(x.double())
    assert [m.dtype for m in net._shift_masks.values()] == [torch.float64]
    assert net.relative_position_index_SA.dtype == torch.int64  # index buffers are not cast
    assert (out64 - out.double()).abs().max() < 1e-4


# --- HAT's final norm under guidance ---------------------------------------------------------------------

def test_guided_final_norm_false_skips_hats_norm_as_the_official_code():
    kept = guided_hat().eval()
    skipped = guided_hat(hat=dict(guided_final_norm=False)).eval()
    skipped.load_state_dict(kept.state_dict())  # same keys: official checkpoints load either way
    assert not any(p.requires_grad for p in skipped.norm.parameters())  # unused: not trained (DDP-safe)
    with torch.no_grad():
        kept.norm.weight.mul_(2.)
        skipped.norm.weight.mul_(2.)
        x = torch.rand(1, 3, 12, 12)
        assert (kept(x) - skipped(x)).abs().max() > 1e-3
    plain = SeGSR_HAT(**TINY_HAT, guided_final_norm=False)  # no guidance: plain HAT, norm kept
    assert plain.final_norm and all(p.requires_grad for p in plain.norm.parameters())
    with pytest.raises(ValueError, match='guided_final_norm must be true or false'):
        guided_hat(hat=dict(guided_final_norm='no'))


# --- multi-GPU: DataParallel refused for guided networks ------------------------------------------------

def test_dataparallel_is_refused_for_guided_networks_with_the_torchrun_command(tmp_path):
    from basicsr.models import build_model
    from tests.test_model import make_opt
    opt = make_opt(tmp_path, dict(type='SeGSR_HAT', **TINY_HAT, guidance=dict(TINY_GUIDANCE)))
    opt['num_gpu'] = 4  # what num_gpu: auto resolves to on a 4-GPU machine; no --launcher: dist False
    with pytest.raises(ValueError) as err:
        build_model(opt)
    message = str(err.value)
    assert '\n' not in message and 'DataParallel' in message
    assert 'torchrun --nproc_per_node=4 -m segsr_basicsr.train -opt YOUR_OPTIONS.yml --launcher pytorch' in message
    opt['num_gpu'] = 0
    assert build_model(opt).net_g.guidance is not None  # one device: built as before


def test_shipped_option_files_use_one_gpu_and_say_multi_gpu_means_torchrun():
    import yaml
    from tests.tiny_configs import REPO
    files = sorted((REPO / 'options').rglob('*.yml'))
    assert len(files) >= 8
    for path in files:
        text = path.read_text()
        lines = text.splitlines()
        at = next(i for i, l in enumerate(lines) if l.startswith('num_gpu:'))
        comment = '\n'.join([lines[at]] + [l for l in lines[at + 1:at + 4] if l.startswith(' ' * 10 + '#')])
        demo = path.parent.name == 'demo'  # the offline CPU demo
        train = path.name.startswith('train')
        expected = 0 if demo else (1 if train else 'auto')  # test files: auto (0 on a CPU machine)
        assert yaml.safe_load(text)['num_gpu'] == expected, path
        if train:
            assert 'torchrun' in comment, path
