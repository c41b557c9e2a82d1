"""SeG-SR semantic guidance: SFEM (CLIP image tower + LoRA) and SLM (semantic localisation).

Backbone-agnostic: it sees only the LR image and the number K of SR units, and
returns K semantic maps at the LR size.  ``GuidedBackbone`` applies them with
:class:`~segsr_basicsr.archs.modulation.SemanticModulation` after every unit.

Checkpoints: frozen CLIP weights that come from a named source (an open_clip tag
or a file) are *not* in the state_dict (they are reloaded from their source when
the network is built); ``clip_source_digest`` identifies the source, and loading
a checkpoint made with another source fails.  With ``clip_pretrained: null`` (or
``tune: full``) the CLIP weights are ordinary state.
"""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from segsr_basicsr.archs.clip_tower import CLIPImageEncoder, build_clip_visual, check_quick_gelu
from segsr_basicsr.archs.lora import add_lora_to_vit, lora_layers
from segsr_basicsr.archs.modulation import MODULATION_INITS
from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest

#: the paper's settings (ViT-B/16 OpenAI CLIP, LoRA r=32 alpha=32 dropout=0.05 on qkv/c_fc/c_proj, tau=100);
#: quick_gelu 'auto' takes the activation from the weights' source; modulation_init: see docs/deviations.md
GUIDANCE_DEFAULTS = dict(clip_model='ViT-B-16', clip_pretrained='openai', tune='lora', lora_rank=32, lora_alpha=32,
                         lora_dropout=0.05, embeddings_per_unit=1, logit_scale=100., quick_gelu='auto',
                         modulation_init='zero')
TUNE_MODES = ('lora', 'frozen', 'full')


def _number(value, key, minimum, integer=False, open_min=False, below=None):
    kind = int if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kind) or value < minimum or (open_min and value == minimum)
    bad = bad or (below is not None and value >= below)
    if bad:
        what = 'an integer' if integer else 'a number'
        rng = f'> {minimum}' if open_min else f'>= {minimum}'
        rng += f' and < {below}' if below is not None else ''
        raise OptionError(f'guidance.{key} must be {what} {rng}, got {value!r} '
                         f'(the paper uses {GUIDANCE_DEFAULTS[key]!r})')
    return value


def guidance_options(options: dict) -> dict:
    """Options of a ``network_g.guidance`` block, validated, with the paper's values for keys not given."""
    unknown = sorted(set(options) - set(GUIDANCE_DEFAULTS))
    if unknown:
        raise OptionError(f'guidance.{unknown[0]} is not a guidance option{suggest(unknown[0], GUIDANCE_DEFAULTS)}; '
                          f'known: {", ".join(GUIDANCE_DEFAULTS)}')
    opts = {**GUIDANCE_DEFAULTS, **options}
    if opts['tune'] not in TUNE_MODES:
        raise OptionError(f"guidance.tune must be one of {', '.join(TUNE_MODES)}, got {opts['tune']!r}"
                          f"{suggest(opts['tune'], TUNE_MODES)}")
    _number(opts['lora_rank'], 'lora_rank', 1, integer=True)
    _number(opts['lora_alpha'], 'lora_alpha', 0, open_min=True)
    _number(opts['lora_dropout'], 'lora_dropout', 0, below=1)
    _number(opts['embeddings_per_unit'], 'embeddings_per_unit', 1, integer=True)
    _number(opts['logit_scale'], 'logit_scale', 0, open_min=True)
    check_quick_gelu(opts['quick_gelu'])
    if opts['modulation_init'] not in MODULATION_INITS:
        raise OptionError(f"guidance.modulation_init must be one of {', '.join(MODULATION_INITS)}, got "
                          f"{opts['modulation_init']!r}{suggest(opts['modulation_init'], MODULATION_INITS)}")
    return opts


class EmbeddingSelfAttention(nn.Module):
    """Multi-head self-attention over the semantic embeddings [p~_g, p_1..p_KE]: (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'CLIP embed dim {dim} is not divisible by {num_heads} attention heads')
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class GatedFusion(nn.Module):
    """Per unit k: e = W_o(sigmoid(W_x q) * (W_y q_g)) for each of its E local embeddings q (K fusions, batched)."""

    def __init__(self, num_units: int, dim: int):
        super().__init__()
        bound = 1 / math.sqrt(dim)  # nn.Linear's default init, per unit
        for name in ('x', 'y', 'o'):  # weight_* (K, D_out, D_in), bias_* (K, D_out)
            setattr(self, f'weight_{name}', nn.Parameter(torch.empty(num_units, dim, dim).uniform_(-bound, bound)))
            setattr(self, f'bias_{name}', nn.Parameter(torch.empty(num_units, dim).uniform_(-bound, bound)))

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """local (B, K, E, D), global_ (B, D) -> (B, K, E, D)."""
        gate = torch.sigmoid(torch.einsum('bked,kod->bkeo', local, self.weight_x) + self.bias_x[:, None])
        value = torch.einsum('bd,kod->bko', global_, self.weight_y) + self.bias_y
        return torch.einsum('bkeo,kpo->bkep', gate * value[:, :, None], self.weight_o) + self.bias_o[:, None]


class MapUpsampler(nn.Module):
    """Semantic maps from the CLIP grid to the LR size: (B, K*E, gh, gw) -> (B, K*E, H, W).

    ``factor`` = patch / upscale LR pixels per CLIP token.  A power of two: learned x2 pixel-shuffle
    steps (3x3 conv C -> 4C, shuffle); otherwise bilinear interpolation + a 3x3 conv.  A final
    bilinear resize makes the size exact.  Convs are grouped per unit, so units stay independent.
    """

    def __init__(self, channels: int, groups: int, factor: float):
        super().__init__()
        steps = math.log2(factor) if factor >= 1 else -1
        self.shuffle = steps >= 0 and steps == int(steps)
        if self.shuffle:
            self.body = nn.Sequential(*[m for _ in range(int(steps)) for m in (
                nn.Conv2d(channels, 4 * channels, 3, 1, 1, groups=groups), nn.PixelShuffle(2))])
        else:
            self.body = nn.Conv2d(channels, channels, 3, 1, 1, groups=groups)

    def forward(self, maps: torch.Tensor, size) -> torch.Tensor:
        size = tuple(size)
        if not self.shuffle:
            return self.body(F.interpolate(maps, size=size, mode='bilinear', align_corners=False))
        maps = self.body(maps)
        if maps.shape[-2:] != size:
            maps = F.interpolate(maps, size=size, mode='bilinear', align_corners=False)
        return maps


class SemanticGuidance(nn.Module):
    """SFEM + SLM: LR image (B, 3, H, W) in [0, 1] -> K semantic maps (B, E, H, W), one per SR unit.

    SLM: learnable p_g (D,) and p_k (K*E, D); p_g conditioned on I_g (MetaNet D -> max(32, D/16) -> D, then
    FiLM); one self-attention over [p~_g, p_1..p_KE]; per unit e = GatedFusion(q_k, q_g); map
    S = tau * cos(I_l, e) on the CLIP grid, then learned upsampling to (H, W).

    Options (``network_g.guidance``; missing keys take the paper's values, see GUIDANCE_DEFAULTS):
    clip_model, clip_pretrained, tune (lora|frozen|full), lora_rank, lora_alpha, lora_dropout,
    embeddings_per_unit (E), logit_scale (tau), quick_gelu (auto|true|false: the CLIP's activation),
    modulation_init (zero|default: how the LMM's gamma/beta conv starts).
    """

    def __init__(self, num_units: int, upscale: int, **options):
        super().__init__()
        opts = guidance_options(options)
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise OptionError(f'SemanticGuidance needs num_units >= 1 SR units, got {num_units!r}')
        self.options = opts
        self.num_units, self.upscale = num_units, upscale
        self.map_channels = e = opts['embeddings_per_unit']
        self.logit_scale = float(opts['logit_scale'])
        self.tune = opts['tune']

        clip = build_clip_visual(opts['clip_model'], opts['clip_pretrained'], opts['quick_gelu'])
        self.clip_description = clip.description
        self.encoder = CLIPImageEncoder(clip.visual, clip.mean, clip.std)
        self.register_buffer('clip_source_digest', torch.tensor(list(clip.digest), dtype=torch.uint8))
        for p in self.encoder.visual.parameters():
            p.requires_grad = self.tune == 'full'
        #: frozen CLIP tensors that are reloaded from their source instead of being saved
        self._unsaved_clip = clip.source != 'random' and self.tune != 'full'
        self._unsaved_names = [n for n, _ in self.encoder.visual.named_parameters()] if self._unsaved_clip else []
        if self.tune == 'lora':
            add_lora_to_vit(self.encoder.visual.transformer, opts['lora_rank'], opts['lora_alpha'],
                            opts['lora_dropout'])

        d = self.encoder.embed_dim
        scale = d ** -0.5
        self.global_embedding = nn.Parameter(scale * torch.randn(d))  # p_g
        self.unit_embeddings = nn.Parameter(scale * torch.randn(num_units * e, d))  # p_1..p_K (E each)
        hidden = max(32, d // 16)  # the paper's 512 -> 32; no narrower for small CLIPs (dead ReLUs)
        self.meta_net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d))
        self.film = nn.Linear(d, 2 * d)  # [gamma, beta] from MetaNet(I_g)
        self.film_out = nn.Linear(d, d)
        self.attention = EmbeddingSelfAttention(d, num_heads=8)
        self.fusion = GatedFusion(num_units, d)
        patch = self.encoder.patch_size[0]
        self.upsampler = MapUpsampler(num_units * e, num_units, patch / upscale)

        self.register_state_dict_post_hook(_drop_frozen_clip)
        self.register_load_state_dict_pre_hook(_restore_frozen_clip)

    def unit_semantic_embeddings(self, global_feat: torch.Tensor) -> torch.Tensor:
        """I_g (B, D) -> e (B, K, E, D), L2-normalised."""
        b = global_feat.shape[0]
        gamma, beta = self.film(self.meta_net(global_feat)).chunk(2, dim=-1)
        global_emb = self.film_out(gamma * self.global_embedding + beta)  # p~_g (B, D)
        units = self.unit_embeddings.to(global_emb.dtype).expand(b, -1, -1)
        q = self.attention(torch.cat([global_emb[:, None], units], dim=1))
        local = q[:, 1:].reshape(b, self.num_units, self.map_channels, -1)
        return F.normalize(self.fusion(local, q[:, 0]), dim=-1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x (B, 3, H, W) in [0, 1] -> K maps (B, E, H, W)."""
        global_feat, local_feat, (gh, gw) = self.encoder(x, self.upscale)
        emb = self.unit_semantic_embeddings(global_feat).flatten(1, 2)  # (B, K*E, D)
        maps = self.logit_scale * torch.einsum('bnd,bcd->bcn', local_feat, emb.to(local_feat.dtype))
        maps = self.upsampler(maps.reshape(maps.shape[0], -1, gh, gw), x.shape[-2:])
        return list(maps.split(self.map_channels, dim=1))

    def is_clip_parameter(self, name: str) -> bool:
        """True for a parameter name (relative to this module) of the CLIP tower, LoRA included."""
        return name.startswith('encoder.')

    # --- LoRA merging (inference) -------------------------------------------------------
    def merge_lora(self) -> None:
        """Fold LoRA into the CLIP weights: same output, no low-rank path per forward."""
        for layer in lora_layers(self):
            layer.merge()

    def unmerge_lora(self) -> None:
        for layer in lora_layers(self):
            layer.unmerge()


def _drop_frozen_clip(module: SemanticGuidance, state_dict, prefix, local_metadata) -> None:
    for name in module._unsaved_names:
        state_dict.pop(f'{prefix}encoder.visual.{name}', None)


def _restore_frozen_clip(module: SemanticGuidance, state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs) -> None:
    digest = state_dict.get(prefix + 'clip_source_digest')
    if digest is not None and not torch.equal(digest.cpu(), module.clip_source_digest.cpu()):
        raise RuntimeError(
            f'checkpoint does not match this network\'s CLIP source ({module.clip_description}): it was saved from a '
            'network built with another guidance.clip_model / clip_pretrained / quick_gelu (other weights, '
            'architecture or activation). Build the network with the same guidance.clip_model, clip_pretrained and '
            'quick_gelu as when it was saved (checkpoints from before quick_gelu existed used GELU for files: '
            'quick_gelu: false).')
    if module._unsaved_clip:  # not in checkpoints: keep the weights loaded from the source
        own = module.encoder.visual.state_dict(keep_vars=True)
        for name in module._unsaved_names:
            state_dict.setdefault(f'{prefix}encoder.visual.{name}', own[name].detach())
