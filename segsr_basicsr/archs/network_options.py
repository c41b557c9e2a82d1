"""network_g, checked before any work: the keys its arch takes, the guidance block, and one CPU build.

Called by :func:`segsr_basicsr.options.validate_options`; lives with the archs because only they
know their constructors. Every refusal is an :class:`~segsr_basicsr.errors.OptionError` naming the key.
"""
import inspect
import os

from segsr_basicsr.errors import CheckpointError, OptionError
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
    return _try_build(network, arch, path)


def _try_build(network, arch, path):
    """Build network_g once on the CPU, so that whatever its constructor refuses (any arch, any key) is one
    line before BasicSR creates a folder; the build is returned for :func:`check_pretrained`. CLIP weights
    named by a pretrained tag or an hf-hub repo are not fetched here (the tag is checked by name); a local
    CLIP file is loaded, so a wrong one is caught now. Costs one build (about 1-2 s for the paper's network
    on a CPU)."""
    import copy

    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = copy.deepcopy(dict(network))
    guidance, from_tag = net_opt.get('guidance'), False
    if isinstance(guidance, dict):
        from segsr_basicsr.archs.clip_tower import HF_HUB_PREFIX, clip_source
        model, weights = guidance.get('clip_model', 'ViT-B-16'), guidance.get('clip_pretrained', 'openai')
        if isinstance(model, str) and model.startswith(HF_HUB_PREFIX):
            return None  # needs the Hugging Face cache: checked when the network is built
        try:
            if clip_source(model, weights)[2] == 'tag':
                guidance['clip_pretrained'], guidance['quick_gelu'], from_tag = None, False, True
        except OptionError as e:
            raise OptionError(f'{path}: network_g:{e}') from None
    try:  # not basicsr's build_network: its log line would set up BasicSR's logger before the log file exists
        net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    except OptionError as e:
        raise OptionError(f'{path}: network_g: {e}') from None
    except Exception as e:  # noqa: BLE001 - whatever a constructor raises on these options (any arch)
        raise OptionError(f'{path}: network_g ({arch}) cannot be built from these options: '
                          f'{type(e).__name__}: {e}') from None
    if from_tag:
        _as_if_from_tag(net)
    return net


def _as_if_from_tag(net):
    """The CPU build took random CLIP weights instead of the tag's: mark its frozen CLIP tensors as the real
    build does (left out of checkpoints, restored from the source), so checkpoints are read the same way."""
    from segsr_basicsr.archs.guidance import SemanticGuidance
    for module in net.modules():
        if isinstance(module, SemanticGuidance) and module.tune != 'full':
            module._unsaved_clip = True
            module._unsaved_names = [n for n, _ in module.encoder.visual.named_parameters()  # LoRA is saved
                                     if not n.rpartition('.')[2].startswith('lora_')]


# ----------------------------------------------------------------------------- weights against network_g
#: parameters a plain backbone checkpoint lacks: SeG-SR's guidance and its modulations
NEW_PARTS = ('guidance.', 'modulations.')
#: network_g keys that say how big a network is (named when a checkpoint does not fit)
SIZE_KEYS = ('embed_dim', 'num_feat', 'depths', 'num_block', 'num_group', 'num_heads', 'window_size')
PARAM_KEY_HINT = 'set path:param_key_g to one of them, or to ~ for a bare state_dict'
_ADVICE = ('Use the option file it was trained with (its network_g and scale), or a checkpoint of this network; '
           'strict_load_g: false only lets the guidance of a plain backbone file start from scratch.')


def describe_network(net_opt, scale=None) -> str:
    """``SeGSR_HAT x4 (embed_dim 60, depths [6, 6], with guidance)``: what a network_g builds, for messages."""
    net_opt = net_opt if isinstance(net_opt, dict) else {}
    size = [f'{k} {net_opt[k]}' for k in SIZE_KEYS if k in net_opt]
    size.append('with guidance' if net_opt.get('guidance') else 'without guidance')
    scale = scale or net_opt.get('upscale') or net_opt.get('scale')
    return f"{net_opt.get('type')} x{scale} ({', '.join(size)})"


def describe_checkpoint(ckpt, state) -> str:
    """What a checkpoint holds: its saved network_g and scale, else its first tensor."""
    from segsr_basicsr.io.checkpoint import META_KEY
    meta = ckpt.get(META_KEY) if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get('network_g'), dict):
        return f"it holds {describe_network(meta['network_g'], meta.get('scale'))}"
    first = next(iter(state.items()), None)
    example = f', e.g. {first[0]} {tuple(getattr(first[1], "shape", ()))}' if first else ''
    return f'it does not record its network_g ({len(state)} tensors{example})'


def load_weights(net, state, strict, source, holds, builds):
    """Load ``state`` into ``net``, or one :class:`CheckpointError` naming the file, what it holds and what the
    option file builds. ``strict`` false accepts only missing guidance (a plain backbone file), never a
    network left partly random; the strict_load_g hint is given only where following it loads correctly."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit (torch refuses them even when not strict)
        from segsr_basicsr.io.checkpoint import load_error_details
        raise CheckpointError(f'The weights in {source} do not fit network_g {builds}: {load_error_details(e)}; '
                              f'{holds}. {_ADVICE}') from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and missing and not unexpected and all(k.startswith(NEW_PARTS) for k in missing):
        raise CheckpointError(f'{source} has no weights for the guidance of network_g {builds} ({len(missing)} '
                              f'keys, e.g. {missing[0]}); {holds}. If it is a plain backbone checkpoint to start '
                              'SeG-SR from, set path:strict_load_g: false (the guidance starts from scratch); to '
                              'continue a SeG-SR model, use its own checkpoint.')
    missing = [k for k in missing if strict or not k.startswith(NEW_PARTS)]
    unexpected = [k for k in unexpected if strict or not k.startswith(NEW_PARTS)]
    if missing or unexpected:
        raise CheckpointError(f'The weights in {source} do not fit network_g {builds}: {len(missing)} missing key(s) '
                              f'{missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}; {holds}. '
                              f'{_ADVICE}')
    return net


def check_pretrained(opt, path, net):
    """Before any work: ``path:pretrain_network_g`` is read and loaded into ``net``, the CPU build of network_g
    the option pass made (None: none could be made), with the run's strict_load_g, so a file of another
    network or scale is one line before a folder is made."""
    paths = opt.get('path') or {}
    file = paths.get('pretrain_network_g')
    if not file or paths.get('resume_state'):  # a resume loads the run's own networks
        return
    from segsr_basicsr.io.checkpoint import load_checkpoint, pick_state_dict
    ckpt = load_checkpoint(os.path.expanduser(file))
    key = paths.get('param_key_g', 'params')
    if isinstance(ckpt, dict) and key is not None and key not in ckpt and 'params' in ckpt:
        key = 'params'  # what BasicSR's load_network falls back to
    state, _ = pick_state_dict(ckpt, key, source=file, hint=PARAM_KEY_HINT)
    if net is None:
        return
    # the CPU build skips downloading CLIP weights, so it cannot check their digest (the real load does)
    own = net.state_dict()
    state = {k: own[k] if k.endswith('clip_source_digest') and k in own else v for k, v in state.items()}
    load_weights(net, state, bool(paths.get('strict_load_g', True)), file, describe_checkpoint(ckpt, state),
                 describe_network(opt['network_g'], opt.get('scale')))
