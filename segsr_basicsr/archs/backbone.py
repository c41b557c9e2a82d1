"""The backbone interface, and the one place where semantic guidance meets a backbone.

A backbone adapter (``SeGSR_HAT``, ``SeGSR_EDSR``, ...) subclasses the backbone
it adapts (so its state_dict keys stay those of the original) and
:class:`GuidedBackbone`, and provides four small things:

* ``sr_units``: the ordered K SR units (e.g. HAT's residual hybrid attention
  groups); guidance modulates the features after each one;
* ``forward_head(x) -> (feat, ctx)``: the shallow part, on the padded LR image
  ``x`` (B, 3, H, W) in [0, 1]; ``ctx`` is a dict of whatever the units and
  the tail need, and must hold ``ctx['size'] = (H, W)``, the feature grid;
* ``forward_unit(k, feat, ctx) -> feat``: run SR unit k;
* ``forward_tail(feat, ctx) -> (B, 3, H*s, W*s)``: reconstruction.

and three attributes: ``upscale`` (s), ``unit_channels`` (C) and
``feature_layout``: ``'tokens'`` when units exchange (B, H*W, C) sequences
(transformers), ``'image'`` when they exchange (B, C, H, W) maps (CNNs).
``size_multiple`` (default 1) is the LR size the backbone needs; inputs are
reflect-padded to it and the output is cropped back.

The adapter calls ``self.init_guidance(guidance)`` at the end of its
``__init__``. With ``guidance=None`` the network is exactly the backbone.
"""
import math
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segsr_basicsr.archs.modulation import SemanticModulation, modulation_scale_shift
from segsr_basicsr.errors import OptionError

FEATURE_LAYOUTS = ('tokens', 'image')
#: inference: most bytes of modulation scale/shift maps computed in one batched call (training: all K)
MODULATION_BATCH_BYTES = 64 << 20


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom/right of (B, C, H, W) so H and W are multiples of ``multiple``.

    Falls back to replicate padding for images smaller than the pad, which
    reflect padding cannot handle.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class GuidedBackbone(nn.Module):
    """Mixin: head -> [unit_k -> modulate_k] x K -> tail, with optional SeG-SR guidance."""

    upscale: int
    unit_channels: int
    feature_layout: str
    size_multiple: int = 1

    # --- what an adapter provides -------------------------------------------------
    @property
    def sr_units(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def forward_unit(self, k: int, feat: torch.Tensor, ctx: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward_tail(self, feat: torch.Tensor, ctx: dict) -> torch.Tensor:
        raise NotImplementedError

    # --- guidance -----------------------------------------------------------------
    def init_guidance(self, guidance: Optional[dict]) -> None:
        """Attach SemanticGuidance + one SemanticModulation per SR unit (or nothing)."""
        if self.feature_layout not in FEATURE_LAYOUTS:
            raise ValueError(f'feature_layout must be one of {FEATURE_LAYOUTS}, got {self.feature_layout!r}')
        #: maps of the last forward (list of K tensors (B, E, H, W)), kept only when
        #: ``record_semantic_maps`` is True, so nobody pays for them otherwise.
        self.record_semantic_maps = False
        self.semantic_maps: Optional[List[torch.Tensor]] = None
        if guidance is None:
            self.guidance = None
            self.modulations = None
            return
        if not isinstance(guidance, dict):
            raise OptionError(f'network_g.guidance must be a mapping of guidance options (or null for no guidance), '
                             f'got {guidance!r}; e.g. guidance: {{clip_model: ViT-B-16, clip_pretrained: openai}}')
        from segsr_basicsr.archs.guidance import SemanticGuidance
        self.guidance = SemanticGuidance(num_units=len(self.sr_units), upscale=self.upscale, **guidance)
        self.modulations = nn.ModuleList(
            SemanticModulation(self.unit_channels, self.guidance.map_channels,
                               init=self.guidance.options['modulation_init']) for _ in self.sr_units)

    def merge_lora(self) -> None:
        """Inference: fold the CLIP LoRA adapters into their weights (same output, cheaper). No-op without LoRA."""
        if self.guidance is not None:
            self.guidance.merge_lora()

    def unmerge_lora(self) -> None:
        if self.guidance is not None:
            self.guidance.unmerge_lora()

    @contextmanager
    def merged_lora(self):
        """``with net.merged_lora(): net(x)`` -- merged inside, unmerged (trainable) again after."""
        self.merge_lora()
        try:
            yield self
        finally:
            self.unmerge_lora()

    def _modulation_scale_shift(self, maps: List[torch.Tensor], first: int) -> list:
        """(scale, shift) pairs of units ``first``, ``first + 1``, ... from one grouped conv per layer.

        All remaining units at once when training (autograd keeps them all anyway); in inference as
        many as fit in MODULATION_BATCH_BYTES, so a big tile batch holds one unit's maps, not K.
        """
        count = len(maps) - first
        if not torch.is_grad_enabled():
            b, _, h, w = maps[first].shape
            per_unit = b * h * w * 2 * self.unit_channels * maps[first].element_size()
            count = max(1, min(count, MODULATION_BATCH_BYTES // per_unit))
        units = range(first, first + count)
        return modulation_scale_shift([self.modulations[k] for k in units], torch.cat([maps[k] for k in units], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) LR in [0, 1] -> (B, 3, H*s, W*s); any H, W."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.size_multiple)
        maps = self.guidance(x) if self.guidance is not None else None
        if self.record_semantic_maps:
            self.semantic_maps = None if maps is None else [m.detach() for m in maps]
        feat, ctx = self.forward_head(x)
        scale_shift = []  # (1 + gamma_k, beta_k) of the units ahead, computed a batch of units at a time
        for k in range(len(self.sr_units)):
            feat = self.forward_unit(k, feat, ctx)
            if maps is not None:
                if not scale_shift:
                    scale_shift = self._modulation_scale_shift(maps, k)
                feat = self.modulations[k].modulate(feat, *scale_shift.pop(0), self.feature_layout)
        out = self.forward_tail(feat, ctx)
        return out[..., :h * self.upscale, :w * self.upscale]


class ConvTrunkAdapter(GuidedBackbone):
    """Head/unit/tail for BasicSR's mean-shifted conv trunks (EDSR, RCAN).

    Both run ``conv_first -> body -> conv_after_body (+ skip) -> upsample ->
    conv_last`` in ``img_range`` units around ``mean``; the adapters differ
    only in how ``body`` is cut into SR units. Listed before the backbone in
    the bases, so :meth:`GuidedBackbone.forward` wins over the backbone's.
    """

    feature_layout = 'image'

    def init_trunk_guidance(self, guidance) -> None:
        """Read scale and width off the built modules (EDSR/RCAN keep no ``upscale``)."""
        self.upscale = math.prod(m.upscale_factor for m in self.upsample if isinstance(m, nn.PixelShuffle))
        self.unit_channels = self.conv_first.out_channels
        self.init_guidance(guidance)

    def forward_head(self, x):
        self.mean = self.mean.type_as(x)
        feat = self.conv_first((x - self.mean) * self.img_range)
        return feat, {'size': tuple(feat.shape[-2:]), 'skip': feat}

    def forward_unit(self, k, feat, ctx):
        return self.sr_units[k](feat)

    def forward_tail(self, feat, ctx):
        res = self.conv_after_body(feat) + ctx['skip']
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean
