"""LoRA for open_clip's ViT blocks, without peft.

Each adapted layer keeps the frozen weight under its original name (so the
state_dict keys of the tower stay open_clip's) and adds ``lora_A`` (r, in) and
``lora_B`` (out, r):  y = W x + b + (alpha / r) * B A dropout(x).  B starts at
zero, so an adapted tower computes exactly the pretrained one at step 0.
``merge()`` folds (alpha / r) B A into W for inference (the low-rank path is
then skipped); ``unmerge()`` takes it out again.
"""
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from segsr_basicsr.errors import OptionError

__all__ = ['LoRALinear', 'LoRASelfAttention', 'add_lora_to_vit', 'lora_layers']


class _LowRankUpdate(nn.Module):
    """The trainable part shared by the adapted layers: (alpha / r) B A x."""

    def _init_lora(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        if rank < 1:
            raise OptionError(f'LoRA rank must be >= 1, got {rank}')
        weight = self.base_weight
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / the LoRA paper; B = 0
        self.lora_scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def base_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def add_lora_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out + (alpha / r) B A dropout(x) for x (..., in), out (..., out): the low-rank update on the activations
        (cheaper than on W for few tokens), accumulated into ``out`` by one GEMM (scale and sum fused)."""
        low = F.linear(self.lora_dropout(x), self.lora_A).flatten(0, -2)  # (tokens, r)
        return torch.addmm(out.flatten(0, -2), low, self.lora_B.t(), alpha=self.lora_scale).view(out.shape)

    def delta_weight(self) -> torch.Tensor:
        """(out, in) = (alpha / r) B A."""
        return (self.lora_B @ self.lora_A) * self.lora_scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_weight.add_(self.delta_weight().to(self.base_weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_weight.sub_(self.delta_weight().to(self.base_weight.dtype))
            self.merged = False

    # A merged layer still saves/loads the *unmerged* weight, so a checkpoint never holds B A twice.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + self._base_weight_name
        if self.merged and key in destination:
            destination[key] = (self.base_weight - self.delta_weight()).detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.unmerge()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LoRALinear(_LowRankUpdate):
    """Drop-in for an ``nn.Linear`` (same ``weight``/``bias``), plus LoRA. (..., in) -> (..., out)."""

    _base_weight_name = 'weight'

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._init_lora(self.in_features, self.out_features, rank, alpha, dropout)

    @property
    def base_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out if self.merged else self.add_lora_delta(out, x)

    def extra_repr(self) -> str:
        return f'in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[0]}, merged={self.merged}'


class LoRASelfAttention(_LowRankUpdate):
    """Self-attention replacing open_clip's ``nn.MultiheadAttention`` (same parameter names), LoRA on the fused qkv.

    Called as open_clip's blocks call it: ``attn(x, x, x, need_weights=False, attn_mask=None)[0]``;
    x (B, N, C) when ``batch_first`` (open_clip's default) else (N, B, C).  Uses SDPA.
    """

    _base_weight_name = 'in_proj_weight'

    def __init__(self, attn: nn.MultiheadAttention, rank: int, alpha: float, dropout: float):
        super().__init__()
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            raise ValueError('LoRA needs a self-attention with a fused in_proj_weight (open_clip ViT blocks)')
        self.embed_dim, self.num_heads, self.batch_first = attn.embed_dim, attn.num_heads, attn.batch_first
        self.attn_dropout = attn.dropout
        self.in_proj_weight = attn.in_proj_weight
        self.in_proj_bias = attn.in_proj_bias
        self.out_proj = attn.out_proj
        self._init_lora(self.embed_dim, 3 * self.embed_dim, rank, alpha, dropout)

    @property
    def base_weight(self) -> torch.Tensor:
        return self.in_proj_weight

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **unused):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError('LoRASelfAttention only does self-attention (key and value must be the query)')
        if need_weights:
            raise ValueError('LoRASelfAttention does not return attention weights (need_weights=False)')
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, C)
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        if not self.merged:
            qkv = self.add_lora_delta(qkv, x)
        q, k, v = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype) if attn_mask.dtype != torch.bool else attn_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, c))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def extra_repr(self) -> str:
        return f'embed_dim={self.embed_dim}, heads={self.num_heads}, rank={self.lora_A.shape[0]}, merged={self.merged}'


def add_lora_to_vit(transformer: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    """In place: LoRA on attn (qkv), mlp.c_fc and mlp.c_proj of every block of an open_clip ``Transformer``."""
    for i, block in enumerate(transformer.resblocks):
        attn, mlp = getattr(block, 'attn', None), getattr(block, 'mlp', None)
        if not isinstance(attn, nn.MultiheadAttention) or not all(
                isinstance(getattr(mlp, n, None), nn.Linear) for n in ('c_fc', 'c_proj')):
            raise ValueError(f'block {i} of the CLIP tower is not an open_clip ResidualAttentionBlock '
                             '(nn.MultiheadAttention + mlp.c_fc/c_proj); LoRA cannot be added to it')
        block.attn = LoRASelfAttention(attn, rank, alpha, dropout)
        block.mlp.c_fc = LoRALinear(mlp.c_fc, rank, alpha, dropout)
        block.mlp.c_proj = LoRALinear(mlp.c_proj, rank, alpha, dropout)


def lora_layers(module: nn.Module) -> Iterator[_LowRankUpdate]:
    return (m for m in module.modules() if isinstance(m, _LowRankUpdate))
