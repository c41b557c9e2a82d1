"""Import-time shims: what basicsr 1.4.2 needs to import on today's torch / torchvision / Python.

:func:`apply` runs when ``segsr_basicsr`` is imported (also in every torchrun rank and in spawned
DataLoader workers). It only installs what importing basicsr needs and changes no BasicSR behaviour:
a ``torchvision.transforms.functional_tensor`` stand-in (removed in torchvision 0.17) and
``distutils`` (gone in Python 3.12: setuptools' copy, a dependency). The changes
our entry points make to BasicSR's train loop are :mod:`segsr_basicsr.training.pipeline`'s job.
"""
import sys
import types

_applied = False


# ----------------------------------------------------------------------------- before basicsr
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


def _ensure_distutils():
    """basicsr.archs.arch_util does ``from distutils.version import LooseVersion`` (Python 3.12 dropped it)."""
    try:
        from distutils.version import LooseVersion  # noqa: F401
        return
    except ImportError:
        pass
    try:  # setuptools ships distutils and installs it as a top-level alias on import
        import setuptools  # noqa: F401
        from distutils.version import LooseVersion  # noqa: F401,F811
        return
    except ImportError:
        pass
    raise ImportError('basicsr needs distutils, which Python 3.12 dropped: pip install setuptools '
                      '(a dependency of segsr_basicsr; reinstall it with pip install -e .).')


def apply():
    """Import-time part: what basicsr needs to import on today's stack; no BasicSR behaviour changes."""
    global _applied
    if _applied:
        return
    _install_functional_tensor()
    _ensure_distutils()
    import basicsr  # noqa: F401  (now importable)
    _applied = True


def patch(owner, name, make):
    """Replace ``owner.name`` by ``make(original)`` once; re-applying (reload) keeps the first original."""
    current = getattr(owner, name)
    original = getattr(current, '__segsr_original__', current)
    new = make(original)
    setattr(new, '__segsr_compat__', True)
    new.__segsr_original__ = original
    setattr(owner, name, new)
    return new


def original(func):
    """The basicsr function under a compat patch (for tests and for code that wants the raw behaviour)."""
    return getattr(func, '__segsr_original__', func)
