"""Building blocks of HAT (Chen et al., CVPR 2023), key-compatible with the official code.

Module and parameter names mirror official ``hat/archs/hat_arch.py`` so an
official checkpoint loads with ``strict=True``; the computation is rewritten
for speed on CPU (same results to float rounding):

* qkv/proj act per token, so they run on the whole grid, before the window
  partition / after the merge; window partition + head split is one copy;
* inference attention is ``F.scaled_dot_product_attention`` (fused kernel)
  with relative-position bias (+ shift mask) as a 4-D float ``attn_mask``;
  in training, a hand-written autograd function also returns the bias grad
  (SDPA's fused kernels cannot, and its generic path is slow);
* head dim 30 (HAT, HAT-L) runs zero-padded to 32: much faster CPU GEMMs;
* OCAB cuts its overlapping key/value windows with ``Tensor.unfold`` views;
* convs see channels-last views of the (B, H*W, C) tokens: no copies.

Token features are (B, H*W, C) throughout, as in official HAT.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import trunc_normal_
from basicsr.archs.rcan_arch import ChannelAttention
from basicsr.archs.swinir_arch import DropPath, Mlp
from torch import nn


def relative_position_index_sa(window_size: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into a (2*ws-1)**2 bias table, official HAT's ``calculate_rpi_sa``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # N, N, 2
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def relative_position_index_oca(window_size: int, overlap_window_size: int) -> torch.Tensor:
    """(ws*ws, ows*ows) index into a (ws+ows-1)**2 bias table, official HAT's ``calculate_rpi_oca``."""
    def grid(n):
        return torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')).flatten(1)

    rel = (grid(overlap_window_size)[:, None, :] - grid(window_size)[:, :, None]).permute(1, 2, 0)
    rel = rel + (window_size - overlap_window_size + 1)
    return rel[..., 0] * (window_size + overlap_window_size - 1) + rel[..., 1]


def shift_window_mask(h: int, w: int, window_size: int, shift_size: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """(nW, 1, N, N) additive mask (0 / -100, as official HAT) for shifted-window attention on an h x w grid."""
    region = torch.zeros(h, w, device=device)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[hs, ws] = label
            label += 1
    windows = region.view(h // window_size, window_size, w // window_size, window_size).transpose(1, 2)
    windows = windows.reshape(-1, window_size * window_size)  # nW, N
    mask = (windows[:, None, :] != windows[:, :, None]).to(dtype) * -100.0
    return mask.unsqueeze(1)


def padded_head_dim(head_dim: int) -> int:
    """Head dim the attention matmuls run at: rounded up to a multiple of 16 when that costs <= 10 % more work.

    CPU GEMMs whose output has ~30 columns run far below those with 32 (HAT: 180 / 6 heads = 30);
    zero columns in q, k, v change no score and give zero output columns, which are dropped.
    """
    rounded = -(-head_dim // 16) * 16
    return rounded if rounded <= 1.1 * head_dim else head_dim


def window_heads(x: torch.Tensor, parts: int, window_size: int, num_heads: int, head_dim: int) -> torch.Tensor:
    """(B, H, W, parts*C) -> (parts, B*nW, heads, ws*ws, head_dim), zero-padded to ``head_dim``; one copy."""
    b, h, w, pc = x.shape
    ws, d = window_size, pc // parts // num_heads
    x = x.view(b, h // ws, ws, w // ws, ws, parts, num_heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
    if head_dim > d:
        x = F.pad(x, (0, head_dim - d))
    return x.reshape(parts, -1, num_heads, ws * ws, head_dim)


def merge_window_heads(x: torch.Tensor, b: int, h: int, w: int, window_size: int, head_dim: int) -> torch.Tensor:
    """(B*nW, heads, ws*ws, >= head_dim) -> (B, H, W, heads*head_dim), padding dropped; one copy."""
    nh, ws = x.shape[1], window_size
    x = x[..., :head_dim].view(b, h // ws, w // ws, nh, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, h, w, nh * head_dim)


def gather_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Relative-position bias (1, heads, N, M) from a (T, heads) table and an (N, M) index."""
    return table.t()[:, index].unsqueeze(0)


#: bytes of (heads, N, M) attention scores handled per step in CPU training: small enough to stay in cache
ATTENTION_CHUNK_BYTES = 4 << 20


class BiasedWindowAttention(torch.autograd.Function):
    """softmax(scale * q k^T + bias [+ shift_mask]) v, with a hand-written backward that also returns d(bias).

    SDPA's fused CPU kernels do not differentiate ``attn_mask``, so with a
    trainable bias SDPA falls back to its slow generic path. This keeps what
    autograd of official HAT keeps (the probabilities), adds bias and shift
    mask in place (never building their (nW, heads, N, M) sum or its
    gradient), and works through a few windows at a time so the N x M
    temporaries stay in cache.
    q (B*nW, heads, N, d), k/v (B*nW, heads, M, d), bias (1, heads, N, M),
    shift_mask None or (nW, 1, N, M).
    """

    @staticmethod
    def chunks(num_windows: int, shift_mask: Optional[torch.Tensor], bytes_per_window: int):
        """Slices of the B*nW windows; with a shift mask each stays inside one image (size divides nW)."""
        size = max(1, ATTENTION_CHUNK_BYTES // bytes_per_window)
        if shift_mask is not None:
            per_image = shift_mask.shape[0]
            size = max(d for d in range(1, min(size, per_image) + 1) if per_image % d == 0)
        return [slice(i, min(i + size, num_windows)) for i in range(0, num_windows, size)]

    @staticmethod
    def forward(ctx, q, k, v, bias, shift_mask, scale):
        q = q * scale
        probs = q.new_empty(q.shape[:-1] + k.shape[-2:-1])  # B*nW, heads, N, M
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        chunks = BiasedWindowAttention.chunks(q.shape[0], shift_mask, probs[0].numel() * probs.element_size())
        for rows in chunks:
            scores = torch.matmul(q[rows], k[rows].transpose(-2, -1), out=probs[rows])
            scores += bias
            if shift_mask is not None:
                first = rows.start % shift_mask.shape[0]
                scores += shift_mask[first:first + scores.shape[0]]
            torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            torch.matmul(scores, v[rows], out=out[rows])
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.scale, ctx.chunks = scale, chunks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_bias = torch.zeros((1, ) + probs.shape[1:], dtype=probs.dtype, device=probs.device)
        row_dot = (grad_out * out).sum(-1, keepdim=True)  # softmax backward: sum_j p_j dp_j = (dO . O)
        for rows in ctx.chunks:
            torch.matmul(probs[rows].transpose(-2, -1), grad_out[rows], out=grad_v[rows])
            grad_scores = grad_out[rows] @ v[rows].transpose(-2, -1)  # d probs, made d scores in place
            grad_scores.sub_(row_dot[rows]).mul_(probs[rows])
            grad_bias += grad_scores.sum(0, keepdim=True)
            torch.matmul(grad_scores, k[rows], out=grad_q[rows])
            torch.matmul(grad_scores.transpose(-2, -1), q[rows], out=grad_k[rows])
        return grad_q.mul_(ctx.scale), grad_k, grad_v, grad_bias, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              shift_mask: Optional[torch.Tensor], scale: float, dropout: float, batch: int) -> torch.Tensor:
    """Attention of (B*nW, heads, N, d) windows with bias (1, heads, N, M) and optional shift_mask (nW, 1, N, M).

    On CUDA, SDPA's memory-efficient kernel differentiates the mask itself, so it is used throughout.
    """
    if dropout == 0 and bias.requires_grad and torch.is_grad_enabled() and q.device.type == 'cpu':
        return BiasedWindowAttention.apply(q, k, v, bias, shift_mask, scale)
    # fused SDPA; its CPU kernel needs a 4-D mask that broadcasts over dim 0 (3-D/5-D -> slow path)
    mask = bias if shift_mask is None else bias + shift_mask
    if mask.shape[0] > 1 and batch > 1:  # per-window mask: one call per image
        q, k, v = (t.unflatten(0, (batch, -1)) for t in (q, k, v))
        return torch.cat([F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=mask, dropout_p=dropout,
                                                         scale=scale) for i in range(batch)])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class WindowAttention(nn.Module):
    """Holds the (shifted-)window attention parameters of a HAB; the work is done in :meth:`HAB.forward`."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)


class CAB(nn.Module):
    """Channel attention block: conv 3x3 -> GELU -> conv 3x3 -> channel attention; (B, C, H, W)."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention + conv_scale * CAB, then MLP."""

    def __init__(self, dim, num_heads, window_size, shift_size, compress_ratio, squeeze_factor, conv_scale, mlp_ratio,
                 qkv_bias, qk_scale, drop, attn_drop, drop_path):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.padded_head_dim = padded_head_dim(self.head_dim)
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, size: Tuple[int, int], rpi: torch.Tensor,
                shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, H*W, C); shift_mask (nW, 1, N, N), used by shifted blocks only."""
        h, w = size
        b, n, c = x.shape
        ws, s = self.window_size, self.shift_size
        normed = self.norm1(x).view(b, h, w, c)
        conv_x = self.conv_block(normed.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)

        # qkv and proj act per token, so they commute with the window partition; rolling their C-wide
        # input/output is cheaper than rolling the 3C-wide qkv
        if s > 0:
            normed = torch.roll(normed, shifts=(-s, -s), dims=(1, 2))
        q, k, v = window_heads(self.attn.qkv(normed), 3, ws, self.num_heads, self.padded_head_dim)
        bias = gather_bias(self.attn.relative_position_bias_table, rpi)  # 1, heads, N, N
        dropout = self.attn.attn_drop if self.training else 0.
        out = attention(q, k, v, bias, shift_mask if s > 0 else None, self.attn.scale, dropout, b)
        out = self.attn.proj_drop(self.attn.proj(merge_window_heads(out, b, h, w, ws, self.head_dim)))
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))

        x = x + self.drop_path(out.reshape(b, n, c)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention block: ws x ws queries attend to ows x ows (zero-padded) key/value windows."""

    def __init__(self, dim, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale, mlp_ratio):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.padded_head_dim = padded_head_dim(self.head_dim)
        self.scale = qk_scale or self.head_dim**-0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1)**2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, size: Tuple[int, int], rpi: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, n, c = x.shape
        ws, ows, nh = self.window_size, self.overlap_win_size, self.num_heads
        qkv = self.qkv(self.norm1(x).view(b, h, w, c))
        d, dp = self.head_dim, self.padded_head_dim
        q = window_heads(qkv[..., :c], 1, ws, nh, dp)[0]  # B*nW, heads, N, dp
        pad = (ows - ws) // 2
        kv = F.pad(qkv[..., c:], (0, 0, pad, pad, pad, pad))  # B, H+2p, W+2p, 2C (zeros, as nn.Unfold)
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)  # B, nWh, nWw, 2C, ows, ows (a view)
        kv = kv.unflatten(3, (2, nh, d)).permute(3, 0, 1, 2, 4, 6, 7, 5)  # 2, B, nWh, nWw, heads, ows, ows, d
        if dp > d:
            kv = F.pad(kv, (0, dp - d))
        k, v = kv.reshape(2, -1, nh, ows * ows, dp)  # B*nW, heads, M, dp each
        bias = gather_bias(self.relative_position_bias_table, rpi)  # 1, heads, N, M
        out = attention(q, k, v, bias, None, self.scale, 0., b)
        x = x + self.proj(merge_window_heads(out, b, h, w, ws, d)).view(b, n, c)
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The HABs (shift 0 / ws//2 alternating) and the OCAB of one RHAG."""

    def __init__(self, dim, depth, num_heads, window_size, shift_size, compress_ratio, squeeze_factor, conv_scale,
                 overlap_ratio, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, num_heads, window_size, 0 if i % 2 == 0 else shift_size, compress_ratio, squeeze_factor,
                conv_scale, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path[i]) for i in range(depth))
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale, mlp_ratio)

    def forward(self, x, ctx: dict):
        for block in self.blocks:
            x = block(x, ctx['size'], ctx['rpi_sa'], ctx['shift_mask'])
        return self.overlap_attn(x, ctx['size'], ctx['rpi_oca'])


class RHAG(nn.Module):
    """Residual hybrid attention group: x + conv(blocks(x)), on (B, H*W, C) tokens. HAT's SR unit."""

    def __init__(self, dim, resi_connection, **block_kwargs):
        super().__init__()
        self.residual_group = AttenBlocks(dim, **block_kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == '1conv' else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        h, w = ctx['size']
        b, n, c = x.shape
        y = self.residual_group(x, ctx).view(b, h, w, c).permute(0, 3, 1, 2)  # channels-last view, no copy
        return self.conv(y).permute(0, 2, 3, 1).reshape(b, n, c) + x
