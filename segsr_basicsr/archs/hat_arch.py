"""HAT as a SeG-SR backbone: ``SeGSR_HAT`` (registered in BasicSR's ARCH_REGISTRY).

With ``guidance=None`` it is plain HAT: same option keys as HAT's option files,
same state_dict keys/shapes as official HAT (HAT-S, HAT, HAT-L at any scale),
same output. Official checkpoints load either with BasicSR's
``path.pretrain_network_g`` (+ ``param_key_g: params_ema``) or with
:func:`load_hat_checkpoint`.

Differences that do not change results: any input size works (reflect-padded to
the window size, output cropped); the shifted-window mask is cached per
(H, W, device, dtype); attention is fused (``F.scaled_dot_product_attention``);
``use_checkpoint`` recomputes each RHAG in backward to save training memory.
"""
from os import PathLike
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from basicsr.archs.arch_util import Upsample, to_2tuple, trunc_normal_
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.registry import register
from torch import nn
from torch.utils.checkpoint import checkpoint

from segsr_basicsr.archs.backbone import GuidedBackbone
from segsr_basicsr.archs.hat_blocks import RHAG, relative_position_index_oca, relative_position_index_sa, \
    shift_window_mask
from segsr_basicsr.errors import OptionError

#: official HAT sizes (x4 option files of XPixelGroup/HAT); pass as ``SeGSR_HAT(upscale=s, **HAT_SIZES[name])``
HAT_SIZES = {
    'HAT-S': dict(embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=24, squeeze_factor=24),
    'HAT': dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=3, squeeze_factor=30),
    'HAT-L': dict(embed_dim=180, depths=[6] * 12, num_heads=[6] * 12, compress_ratio=3, squeeze_factor=30),
}
HAT_COMMON = dict(in_chans=3, img_size=64, window_size=16, overlap_ratio=0.5, mlp_ratio=2, conv_scale=0.01,
                  img_range=1., upsampler='pixelshuffle', resi_connection='1conv')

#: shifted-window masks kept per model: a few input sizes (train patch, val sizes) at once
MASK_CACHE_SIZE = 8


def _check_options(upscale, in_chans, img_size, patch_size, window_size, compress_ratio, squeeze_factor,
                   overlap_ratio, embed_dim, depths, num_heads, upsampler, resi_connection):
    def fail(msg):
        raise OptionError(f'SeGSR_HAT: {msg}')

    if not isinstance(upscale, int) or upscale < 1 or (upscale & (upscale - 1) and upscale != 3):
        fail(f'upscale={upscale!r} is not supported; use 1, 3 or a power of two (2, 4, 8)')
    if upsampler != 'pixelshuffle':
        fail(f"upsampler={upsampler!r} is not supported; HAT only implements upsampler: 'pixelshuffle'")
    if resi_connection not in ('1conv', 'identity'):
        fail(f"resi_connection={resi_connection!r} is not supported; use '1conv' or 'identity'")
    if not isinstance(depths, Sequence) or not isinstance(num_heads, Sequence) or len(depths) == 0:
        fail(f'depths and num_heads must be non-empty lists, got depths={depths!r}, num_heads={num_heads!r}')
    if len(depths) != len(num_heads):
        fail(f'len(depths)={len(depths)} != len(num_heads)={len(num_heads)}: give one head count per RHAG')
    if any(d < 1 for d in depths):
        fail(f'every entry of depths must be >= 1, got depths={list(depths)}')
    for i, heads in enumerate(num_heads):
        if heads < 1 or embed_dim % heads:
            fail(f'embed_dim={embed_dim} is not divisible by num_heads[{i}]={heads}')
    if not isinstance(window_size, int) or window_size < 2:
        fail(f'window_size={window_size!r} must be an int >= 2')
    if (int(window_size * overlap_ratio)) % 2:
        fail(f'int(window_size * overlap_ratio) = int({window_size} * {overlap_ratio}) must be even '
             '(OCAB pads its overlapping windows by half of it on each side)')
    if embed_dim // compress_ratio < 1 or embed_dim // squeeze_factor < 1:
        fail(f'compress_ratio={compress_ratio} and squeeze_factor={squeeze_factor} must not exceed '
             f'embed_dim={embed_dim}')
    if in_chans < 1:
        fail(f'in_chans={in_chans!r} must be >= 1')
    res = [s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size))]
    if min(res) < window_size:
        fail(f'img_size // patch_size = {res} is smaller than window_size={window_size}; img_size is the '
             'training patch (LR) size and must be >= window_size')


@register(ARCH_REGISTRY)
class SeGSR_HAT(GuidedBackbone):
    """HAT with SeG-SR guidance after each RHAG (none when ``guidance=None``): (B, C, H, W) -> (B, C, sH, sW).

    Option keys are those of HAT's option files; ``img_size`` only matters for
    ``ape`` and, as in official HAT, shifted windows are off when
    ``img_size // patch_size <= window_size``. ``guided_final_norm``: with guidance,
    apply HAT's final LayerNorm after the last modulation (default), or skip it as the
    official SeG-SR code does (false; its weights then stay untrained).
    """

    feature_layout = 'tokens'

    def __init__(self, upscale: int = 2, in_chans: int = 3, img_size=64, patch_size=1, window_size: int = 7,
                 compress_ratio: int = 3, squeeze_factor: int = 30, conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5, embed_dim: int = 96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6),
                 mlp_ratio: float = 4., qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1, ape: bool = False,
                 patch_norm: bool = True, upsampler: str = 'pixelshuffle', resi_connection: str = '1conv',
                 img_range: float = 1., use_checkpoint: bool = False, guidance: Optional[dict] = None,
                 guided_final_norm: bool = True):
        super().__init__()
        _check_options(upscale, in_chans, img_size, patch_size, window_size, compress_ratio, squeeze_factor,
                       overlap_ratio, embed_dim, depths, num_heads, upsampler, resi_connection)
        self.upscale = upscale
        self.unit_channels = embed_dim
        self.size_multiple = window_size
        self.window_size = window_size
        self.img_range = img_range
        self.use_checkpoint = use_checkpoint
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0., ) * in_chans
        self.register_buffer('mean', torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.register_buffer('relative_position_index_SA', relative_position_index_sa(window_size))
        self.register_buffer('relative_position_index_OCA', relative_position_index_oca(window_size, overlap_win_size))
        # official HAT turns the shift off when the training patch is a single window
        patches = [s // p for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size))]
        self.shift_size = 0 if min(patches) <= window_size else window_size // 2
        self._shift_masks: Dict[tuple, torch.Tensor] = {}

        # 1. shallow feature extraction
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        # 2. deep feature extraction; names (patch_embed.norm, layers, norm) as official HAT
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()
        self.num_patches = patches[0] * patches[1]
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList(
            RHAG(embed_dim, resi_connection, depth=depth, num_heads=heads, window_size=window_size,
                 shift_size=self.shift_size, compress_ratio=compress_ratio, squeeze_factor=squeeze_factor,
                 conv_scale=conv_scale, overlap_ratio=overlap_ratio, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                 qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                 drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])])
            for i, (depth, heads) in enumerate(zip(depths, num_heads)))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == '1conv' \
            else nn.Identity()
        self._build_reconstruction(embed_dim, in_chans, upscale)
        self.apply(self._init_weights)
        self.init_guidance(guidance)
        # under guidance the official SeG-SR skips HAT's final LayerNorm (guided_final_norm: false); we keep it
        if not isinstance(guided_final_norm, bool):
            raise OptionError(f'SeGSR_HAT: guided_final_norm must be true or false, got {guided_final_norm!r}')
        self.final_norm = guidance is None or guided_final_norm
        if not self.final_norm:
            self.norm.requires_grad_(False)  # unused, as in the official code: kept for its keys, not trained

    def _build_reconstruction(self, embed_dim, in_chans, upscale):
        """3. reconstruction (official HAT hard-codes num_feat = 64); same module names as official HAT."""
        num_feat = 64
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # --- cached per input size ---------------------------------------------------------
    def shift_mask(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """(nW, 1, N, N) shifted-window mask for an h x w feature grid, built once per (h, w, device, dtype)."""
        if self.shift_size == 0:
            return None
        key = (h, w, device, dtype)
        mask = self._shift_masks.get(key)
        if mask is None:
            if len(self._shift_masks) >= MASK_CACHE_SIZE:  # many sizes (e.g. full-image validation): start over
                self._shift_masks.clear()
            mask = self._shift_masks[key] = shift_window_mask(h, w, self.window_size, self.shift_size, dtype, device)
        return mask

    def _apply(self, fn, *args, **kwargs):
        self._shift_masks.clear()  # .to()/.half() etc.: masks are rebuilt for the new device/dtype
        return super()._apply(fn, *args, **kwargs)

    # --- GuidedBackbone interface ------------------------------------------------------------
    @property
    def sr_units(self) -> Sequence[nn.Module]:
        return self.layers

    def forward_head(self, x: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """(B, C_in, H, W), H and W multiples of window_size -> tokens (B, H*W, C) and ctx."""
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f'SeGSR_HAT.forward_head needs H, W multiples of window_size={self.window_size}, '
                             f'got {h}x{w}; call the network itself (forward pads) instead')
        # channels-last maps: (B, C, H, W) <-> tokens (B, H*W, C) are free views, and CPU convs run faster
        x = ((x - self.mean) * self.img_range).contiguous(memory_format=torch.channels_last)
        shallow = self.conv_first(x)
        feat = self.patch_embed.norm(shallow.permute(0, 2, 3, 1).reshape(x.shape[0], h * w, -1))
        if self.absolute_pos_embed is not None:
            if feat.shape[1] != self.num_patches:
                raise ValueError(f'SeGSR_HAT with ape=True only takes inputs of img_size ({self.num_patches} '
                                 f'tokens), got {h}x{w}; set ape: false or feed img_size patches')
            feat = feat + self.absolute_pos_embed
        ctx = dict(size=(h, w), shallow=shallow, rpi_sa=self.relative_position_index_SA,
                   rpi_oca=self.relative_position_index_OCA, shift_mask=self.shift_mask(h, w, x.device, x.dtype))
        return self.pos_drop(feat), ctx

    def forward_unit(self, k: int, feat: torch.Tensor, ctx: dict) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self.layers[k], feat, ctx, use_reentrant=False)
        return self.layers[k](feat, ctx)

    def forward_tail(self, feat: torch.Tensor, ctx: dict) -> torch.Tensor:
        h, w = ctx['size']
        feat = (self.norm(feat) if self.final_norm else feat).reshape(feat.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.conv_after_body(feat) + ctx['shallow']
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + self.mean


def read_hat_checkpoint(path: Union[str, PathLike], param_key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """State dict from an official HAT/BasicSR file: ``param_key``, else ``params_ema``, ``params``, raw dict."""
    from segsr_basicsr.io.checkpoint import load_state_dict
    return load_state_dict(path, param_key, hint='pass param_key=')[0]


def load_hat_checkpoint(net: SeGSR_HAT, path: Union[str, PathLike], param_key: Optional[str] = None) -> None:
    """Load official HAT weights (e.g. HAT_SRx4_ImageNet-pretrain.pth) into ``net``, strictly.

    Every backbone key must match in name and shape; the SeG-SR guidance and
    modulation parameters (absent from HAT files) keep their initialisation.
    """
    state = read_hat_checkpoint(path, param_key)
    own = net.state_dict()
    backbone = {k for k in own if not k.startswith(('guidance.', 'modulations.'))}
    missing = sorted(backbone - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong_shape = [f'{k}: file {tuple(state[k].shape)} vs net {tuple(own[k].shape)}'
                   for k in sorted(backbone & state.keys()) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def head(items):
            return ', '.join(items[:5]) + (f' (+{len(items) - 5} more)' if len(items) > 5 else '')

        raise ValueError(f'{path} does not match this SeGSR_HAT (check upscale, embed_dim, depths, num_heads, '
                         f'compress_ratio, squeeze_factor against the file): missing keys [{head(missing)}]; '
                         f'unexpected keys [{head(unexpected)}]; shape mismatches [{head(wrong_shape)}]')
    net.load_state_dict(state, strict=False)
