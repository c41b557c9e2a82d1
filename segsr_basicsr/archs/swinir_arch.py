"""SeG-SR guidance on BasicSR's SwinIR: one SR unit per residual Swin transformer block (RSTB)."""
import inspect

import torch
import torch.nn.functional as F
from basicsr.archs.swinir_arch import SwinIR
from basicsr.utils.registry import ARCH_REGISTRY
from segsr_basicsr.registry import register
from torch.utils.checkpoint import checkpoint

from segsr_basicsr.archs.backbone import GuidedBackbone
from segsr_basicsr.errors import OptionError

#: SwinIR's reconstruction variants; '' / None is its same-size (denoising, JPEG) mode
UPSAMPLERS = ('pixelshuffle', 'pixelshuffledirect', 'nearest+conv', '', None)


@register(ARCH_REGISTRY)
class SeGSR_SwinIR(GuidedBackbone, SwinIR):
    """BasicSR's SwinIR (same keys, same output without guidance) with SeG-SR guidance.

    Supports every reconstruction variant of BasicSR's SwinIR; anything else
    is rejected here, where BasicSR would silently fall back to the same-size
    mode. Unlike BasicSR's SwinIR it takes any LR size (padded to the window),
    and ``use_checkpoint`` works: BasicSR 1.4.2 drops ``x_size`` when it
    checkpoints a block (TypeError), so the adapter checkpoints whole RSTBs.
    """

    feature_layout = 'tokens'

    def __init__(self, *args, guidance=None, **kwargs):
        opt = inspect.signature(SwinIR).bind(*args, **kwargs)
        opt.apply_defaults()
        upsampler, upscale = opt.arguments['upsampler'], opt.arguments['upscale']
        if upsampler not in UPSAMPLERS:
            raise OptionError(f'SeGSR_SwinIR: upsampler={upsampler!r} is not one of {UPSAMPLERS}')
        if upsampler == 'nearest+conv' and upscale != 4:
            raise OptionError(f"SeGSR_SwinIR: upscale={upscale!r} with upsampler='nearest+conv', "
                             'which supports only upscale=4')
        use_checkpoint = opt.arguments['use_checkpoint']
        opt.arguments['use_checkpoint'] = False  # BasicSR's per-block checkpointing crashes; see forward_unit
        super().__init__(*opt.args, **opt.kwargs)
        self.use_checkpoint = use_checkpoint
        if not upsampler:
            self.upscale = 1  # SwinIR keeps the size in this mode whatever `upscale` says
        self.unit_channels = self.embed_dim
        # a block shrinks its window to the training patch when that is smaller
        self.size_multiple = self.layers[0].residual_group.blocks[0].window_size
        self.init_guidance(guidance)

    @property
    def sr_units(self):
        return self.layers

    def forward_head(self, x):
        self.mean = self.mean.type_as(x)
        x = (x - self.mean) * self.img_range
        first = self.conv_first(x)
        tokens = self.patch_embed(first)
        if self.ape:
            if tokens.shape[1] != self.absolute_pos_embed.shape[1]:
                raise ValueError(f'SeGSR_SwinIR with ape=True only takes LR inputs of img_size '
                                 f'({self.patches_resolution}), got {tuple(x.shape[-2:])}; set ape: false')
            tokens = tokens + self.absolute_pos_embed
        return self.pos_drop(tokens), {'size': tuple(x.shape[-2:]), 'skip': first, 'input': x}

    def forward_unit(self, k, feat, ctx):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self.layers[k], feat, ctx['size'], use_reentrant=False)
        return self.layers[k](feat, ctx['size'])

    def forward_tail(self, feat, ctx):
        res = self.conv_after_body(self.patch_unembed(self.norm(feat), ctx['size'])) + ctx['skip']
        if self.upsampler == 'pixelshuffle':
            out = self.conv_last(self.upsample(self.conv_before_upsample(res)))
        elif self.upsampler == 'pixelshuffledirect':
            out = self.upsample(res)
        elif self.upsampler == 'nearest+conv':
            out = self.conv_before_upsample(res)
            for conv_up in (self.conv_up1, self.conv_up2):
                out = self.lrelu(conv_up(F.interpolate(out, scale_factor=2, mode='nearest')))
            out = self.conv_last(self.lrelu(self.conv_hr(out)))
        else:
            out = ctx['input'] + self.conv_last(res)
        return out / self.img_range + self.mean
