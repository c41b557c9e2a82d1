"""Compatibility layer for basicsr 1.4.2 on today's torch / torchvision / numpy.

(Placeholder: the full layer is issue 2.)
"""
import sys
import types

_applied = False


def _install_functional_tensor():
    """basicsr imports torchvision.transforms.functional_tensor, removed in torchvision 0.17."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
        return
    except ImportError:
        pass
    from torchvision.transforms import functional as F
    module = types.ModuleType(name)
    module.rgb_to_grayscale = F.rgb_to_grayscale
    sys.modules[name] = module


def apply():
    global _applied
    if _applied:
        return
    _install_functional_tensor()
    _applied = True
