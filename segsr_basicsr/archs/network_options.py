"""network_g, checked before any work: the keys its arch takes, the guidance block, and one CPU build.

Called by :func:`segsr_basicsr.options.validate_options`; lives with the archs because only they
know their constructors. Every refusal is an :class:`~segsr_basicsr.errors.OptionError` naming the key.
"""
import inspect

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest


def _arch_params(cls):
    """Keyword names an arch's __init__ accepts (following ``**kwargs`` to its base class), or None for any."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {'self'}
        if klass is object:
            return None
    return None


def check_network_options(network: dict, scale, path):
    """network_g (its ``type`` registered): keys its constructor takes, ``upscale`` = ``scale``, the guidance
    block, and one build."""
    from basicsr.utils.registry import ARCH_REGISTRY
    arch = network['type']
    accepted = _arch_params(ARCH_REGISTRY.get(arch))
    for key in network:
        if accepted is not None and key != 'type' and key not in accepted:
            raise OptionError(f'{path}: network_g:{key} is not an option of {arch}'
                              f'{suggest(key, sorted(accepted))}.')
    up = network.get('upscale', network.get('scale'))  # RRDBNet calls it scale
    if up is not None and scale is not None and up != scale:
        raise OptionError(f'{path}: scale is {scale} but network_g:upscale is {up}; the network would make '
                          f'x{up} images for x{scale} data. Set both to the same value.')
    guidance = network.get('guidance')
    if guidance is not None:
        if not isinstance(guidance, dict):
            raise OptionError(f'{path}: network_g:guidance must be a section of guidance options or ~, '
                              f'got {guidance!r}.')
        from segsr_basicsr.archs.guidance import guidance_options
        try:
            guidance_options(guidance)
        except OptionError as e:
            raise OptionError(f'{path}: network_g:{e}') from None
    _try_build(network, arch, path)


def _try_build(network, arch, path):
    """Build network_g once on the CPU and drop it, so that whatever its constructor refuses (any arch, any
    key) is one line before BasicSR creates a folder. CLIP weights named by a pretrained tag or an hf-hub
    repo are not fetched here (the tag is checked by name); a local CLIP file is loaded, so a wrong one is
    caught now. Costs one build (about 1-2 s for the paper's network on a CPU)."""
    import copy

    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = copy.deepcopy(dict(network))
    guidance = net_opt.get('guidance')
    if isinstance(guidance, dict):
        from segsr_basicsr.archs.clip_tower import HF_HUB_PREFIX, clip_source
        model, weights = guidance.get('clip_model', 'ViT-B-16'), guidance.get('clip_pretrained', 'openai')
        if isinstance(model, str) and model.startswith(HF_HUB_PREFIX):
            return  # needs the Hugging Face cache: checked when the network is built
        try:
            if clip_source(model, weights)[2] == 'tag':
                guidance['clip_pretrained'], guidance['quick_gelu'] = None, False
        except OptionError as e:
            raise OptionError(f'{path}: network_g:{e}') from None
    try:  # not basicsr's build_network: its log line would set up BasicSR's logger before the log file exists
        ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    except OptionError as e:
        raise OptionError(f'{path}: network_g: {e}') from None
    except (ValueError, TypeError, AssertionError, KeyError, IndexError) as e:
        raise OptionError(f'{path}: network_g ({arch}) cannot be built from these options: '
                          f'{type(e).__name__}: {e}') from None
