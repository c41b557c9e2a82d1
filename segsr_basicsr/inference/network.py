"""What the engine needs to know about a network, named once (spandrel's ``ModelDescriptor`` idea).

Whoever loads a network (a checkpoint, an ONNX file, a plain BasicSR module) fills one
:class:`NetworkInfo`; the engine, the upscaler and the batch job read it and never probe the module.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from segsr_basicsr.archs.backbone import GuidedBackbone

__all__ = ['NetworkInfo', 'describe', 'probe_scale']


@dataclass(frozen=True)
class NetworkInfo:
    """``scale``: SR factor; ``multiple``: LR sides are padded to a multiple of it (the attention window);
    ``fixed_tile``: the only LR tile size it takes (a fixed-tile ONNX file), else None; ``num_maps``:
    semantic maps per image, one per SR unit (0 without guidance); ``in_channels``: 3 (RGB in [0, 1])."""
    scale: int
    multiple: int = 1
    fixed_tile: Optional[int] = None
    num_maps: int = 0
    in_channels: int = 3
    name: str = 'network'


def probe_scale(net, device) -> int:
    """Scale of a plain BasicSR arch that does not store it: run it once on a small input."""
    with torch.no_grad():
        return net(torch.zeros(1, 3, 16, 16, device=device)).shape[-1] // 16


def describe(net, device='cpu', scale: Optional[int] = None, name: Optional[str] = None) -> NetworkInfo:
    """The :class:`NetworkInfo` of a built network: one that carries its own ``info`` (an ONNX file), a
    guided backbone, or a plain BasicSR arch (scale read from ``upscale`` or measured once). The only place
    that asks a module what it is."""
    if isinstance(getattr(net, 'info', None), NetworkInfo):  # a network that describes itself (OnnxNetwork)
        return net.info
    if isinstance(net, GuidedBackbone):
        maps = len(net.sr_units) if net.guidance is not None else 0
        return NetworkInfo(scale or net.upscale, net.size_multiple, None, maps, 3, name or type(net).__name__)
    multiple = int(getattr(net, 'size_multiple', 1) or 1)
    scale = scale or getattr(net, 'upscale', None) or probe_scale(net, torch.device(device))
    return NetworkInfo(int(scale), multiple, None, 0, 3, name or type(net).__name__)
