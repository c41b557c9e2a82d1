"""SeG-SR's CLIP image tower: built and loaded by open_clip, run as the SFEM.

``build_clip_visual(clip_model, clip_pretrained)`` resolves

* ``clip_model``: an open_clip model name (``ViT-B-16``, ``ViT-L-14``, the shipped
  ``SeGSR-Tiny-ViT``, ...), a path to an open_clip model-config ``.json``, or
  ``hf-hub:org/name`` (config and weights from that Hugging Face repo, through
  open_clip's own download, which uses the HF cache and honours ``HF_HUB_OFFLINE=1``);
* ``clip_pretrained``: ``None`` (random weights), an open_clip pretrained tag
  (``openai``, ``laion2b_s34b_b88k``, ...) or a local checkpoint file
  (``.pt``/``.pth``/``.bin``/``.safetensors``, e.g. RemoteCLIP / GeoRSCLIP);
  ignored (must be null) with ``hf-hub:``;
* ``quick_gelu``: ``'auto'`` | ``True`` | ``False``, the activation the weights were
  trained with (see :func:`decide_quick_gelu`),

and returns the ViT image tower plus a digest of its source, which SeG-SR
stores in checkpoints instead of the frozen CLIP weights themselves.
"""
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from segsr_basicsr.errors import CheckpointError, OptionError

CLIP_CONFIG_DIR = Path(__file__).resolve().parent / 'clip_configs'
open_clip.add_model_config(CLIP_CONFIG_DIR)  # registers SeGSR-Tiny-ViT (tests, offline demo)

_EXAMPLES = "e.g. 'ViT-B-16', 'ViT-B-32', 'ViT-L-14', 'SeGSR-Tiny-ViT'"
HF_HUB_PREFIX = 'hf-hub:'
#: open_clip's model-config file in an open_clip / Hugging Face model folder
HF_CONFIG_NAME = 'open_clip_config.json'


class CLIPVisual(NamedTuple):
    visual: VisionTransformer
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    #: sha256 of (model config, weights); the weights part only when they come from a tag or a file
    digest: bytes
    #: 'random' | 'tag' | 'file' | 'hf-hub'
    source: str
    description: str
    #: the activation the tower was built with, and why (the log line)
    quick_gelu: bool
    quick_gelu_reason: str


def resolve_clip_model(clip_model) -> str:
    """open_clip model name for ``clip_model`` (a name, or a model-config .json that gets registered)."""
    if not isinstance(clip_model, str) or not clip_model:
        raise OptionError(f'guidance.clip_model must be an open_clip model name ({_EXAMPLES}) or a path to an '
                         f'open_clip model-config .json, got {clip_model!r}')
    if clip_model.startswith('local-dir:'):
        raise OptionError(f'guidance.clip_model: {clip_model!r}: local-dir: sources are not supported; pass the '
                         'model name (or hf-hub:org/name) as clip_model and the weights file in that folder '
                         '(open_clip_pytorch_model.bin / .safetensors) as clip_pretrained: the folder\'s '
                         f'{HF_CONFIG_NAME} then decides quick_gelu')
    if clip_model.endswith('.json'):
        path = Path(clip_model).expanduser()
        if not path.is_file():
            raise OptionError(f'guidance.clip_model: model-config file {clip_model!r} does not exist')
        cfg = json.loads(path.read_text())
        if not all(k in cfg for k in ('embed_dim', 'vision_cfg', 'text_cfg')):
            hint = "; it looks like an HF open_clip_config.json: save its 'model_cfg' part as the .json" \
                if 'model_cfg' in cfg else ''
            raise OptionError(f'guidance.clip_model: {clip_model!r} is not an open_clip model config '
                             f'(needs the keys embed_dim, vision_cfg and text_cfg){hint}')
        name = path.stem
        known = open_clip.get_model_config(name)
        if known is None:
            open_clip.add_model_config(path)
        elif known != cfg:
            raise OptionError(f'guidance.clip_model: {clip_model!r} would register as {name!r}, which is already a '
                             'different open_clip model config; rename the file')
        return name
    name = clip_model.replace('/', '-')
    if open_clip.get_model_config(name) is None:
        raise OptionError(f'guidance.clip_model: {clip_model!r} is not an open_clip model ({_EXAMPLES}; see '
                         'open_clip.list_models()) nor a path to an open_clip model-config .json')
    return name


def _check_vit_config(name: str, cfg: dict) -> None:
    vision = cfg['vision_cfg']
    if vision.get('timm_model_name') or isinstance(vision.get('layers'), (list, tuple)):
        raise OptionError(f'guidance.clip_model: {name!r} is not an open_clip ViT (timm or ResNet image tower); '
                         f'SeG-SR needs a ViT with a class token and patch tokens ({_EXAMPLES})')


def _check_vit(name: str, visual: nn.Module) -> None:
    ok = (isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type == 'tok'
          and visual.proj is not None)
    if not ok:
        raise OptionError(f'guidance.clip_model: {name!r} has no plain ViT image tower (class-token pooling, '
                         f'projection, no attentional pooling); use a standard open_clip ViT ({_EXAMPLES})')


def is_torchscript_archive(path: str) -> bool:
    """True for TorchScript archives (e.g. OpenAI's original CLIP .pt files), which hold code, not just weights."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith('/constants.pkl') or n == 'constants.pkl' for n in zf.namelist())


def load_clip_checkpoint(model: nn.Module, path: str, name: str) -> None:
    """Load a full open_clip checkpoint file into ``model`` (strict): through open_clip with weights_only,
    or, for a TorchScript archive (which the caller vetted), its state_dict."""
    try:
        if is_torchscript_archive(path):
            state_dict = torch.jit.load(path, map_location='cpu').state_dict()
            # archives also hold non-weight buffers (OpenAI: input_resolution, ...; attn_mask): take the model's keys
            missing = sorted(model.state_dict().keys() - state_dict.keys())
            if missing:
                raise RuntimeError(f'missing key(s) in the TorchScript archive: {missing[:5]}')
            model.load_state_dict({k: state_dict[k] for k in model.state_dict()}, strict=True)
        else:
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as err:
        raise CheckpointError(f'guidance: could not load the CLIP checkpoint {path!r} into open_clip model {name!r}: '
                           f'{err}\nCheck that guidance.clip_model is the architecture of this checkpoint '
                           "(e.g. a RemoteCLIP-ViT-B-32 file needs clip_model: ViT-B-32).") from err


def _digest(cfg: dict, quick_gelu: bool, visual: Optional[nn.Module]) -> bytes:
    h = hashlib.sha256(json.dumps({'model': cfg, 'quick_gelu': quick_gelu}, sort_keys=True).encode())
    if visual is not None:
        for key, t in sorted(visual.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f'{key}:{t.dtype}:{t.numel()}'.encode())
            h.update(t.view(torch.uint8).numpy().data)
    return h.digest()


def _quiet_random_init(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('No pretrained weights loaded')


def folder_model_config(path: str) -> Tuple[Optional[str], Optional[dict]]:
    """(config path, its model config) of the open_clip / HF model folder holding weights file ``path``, if any.

    The folder of the path as given (an HF snapshot folder holds symlinks into blobs/: not resolved).
    """
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), HF_CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        return None, None
    try:
        cfg = json.loads(Path(cfg_path).read_text())
    except (OSError, ValueError) as err:
        raise OptionError(f'guidance: {cfg_path} (beside the CLIP weights) is not valid JSON ({err}); fix or remove '
                         'it, or set guidance.quick_gelu: true/false') from err
    return cfg_path, cfg.get('model_cfg', cfg)


def check_quick_gelu(value) -> None:
    """``value`` must be 'auto', True or False (not 1, 'yes', ...)."""
    if not (isinstance(value, bool) or value == 'auto'):
        raise OptionError(f'guidance.quick_gelu must be auto, true or false, got {value!r}')


def decide_quick_gelu(choice, name: str, cfg: dict, source: str, tag: Optional[str], tag_cfg: dict,
                      path: Optional[str], folder_cfg: Tuple[Optional[str], Optional[dict]] = (None, None)
                      ) -> Tuple[bool, str]:
    """QuickGELU or GELU for the tower, and the log line saying why.

    ``'auto'``: true when the weights' source says QuickGELU: an open_clip tag whose pretrained config
    says so (OpenAI), a TorchScript archive (OpenAI's original .pt files), a file in a model folder whose
    open_clip_config.json says so, an hf-hub config that says so, or a ``*-quickgelu`` model name;
    otherwise false. ``True``/``False`` override.
    """
    check_quick_gelu(choice)
    override = 'override with guidance.quick_gelu: true/false'
    if choice is True or choice is False:
        return choice, f"guidance: CLIP activation {'QuickGELU' if choice else 'GELU'} (guidance.quick_gelu: " \
                       f"{str(choice).lower()}, set in the options)"
    evidence = []  # (says quick_gelu, what says it)
    if source == 'tag':
        evidence.append((bool(tag_cfg.get('quick_gelu', False)), f'open_clip pretrained config of tag {tag}'))
    if source == 'hf-hub':
        evidence.append((bool(cfg.get('quick_gelu', False)), f'{HF_CONFIG_NAME} of {name}'))
    elif cfg.get('quick_gelu'):
        evidence.append((True, f'model config {name!r} (a -quickgelu model)'))
    if source == 'file':
        if is_torchscript_archive(path):
            evidence.append((True, f'{path} is a TorchScript archive (OpenAI format, trained with QuickGELU)'))
        cfg_path, folder = folder_cfg
        if folder is not None:
            evidence.append((bool(folder.get('quick_gelu', False)), cfg_path))
    if not evidence and source == 'random':
        return False, f'guidance: CLIP activation GELU (random CLIP weights, model config {name!r}); {override}'
    if not evidence:
        return False, (f'guidance: CLIP activation GELU for {path}: no evidence of the activation the weights were '
                       f'trained with (no tag, TorchScript archive, {HF_CONFIG_NAME} beside the file or -quickgelu '
                       f'model); OpenAI-derived weights need QuickGELU: {override} (see docs/clip_sources.md)')
    quick = any(says for says, _ in evidence)
    said = '; '.join(f"{where} says {'QuickGELU' if says else 'GELU'}" for says, where in evidence)
    return quick, f"guidance: CLIP activation {'QuickGELU' if quick else 'GELU'} (auto: {said}); {override}"


def _hf_hub_missing(model_id: str, err: Exception) -> CheckpointError:
    from huggingface_hub import constants
    offline = ' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''
    return CheckpointError(
        f'guidance.clip_model: hf-hub:{model_id} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and could '
        f'not be downloaded{offline}: on a machine with internet run `huggingface-cli download {model_id}` (or '
        f"python -c \"import open_clip; open_clip.create_model('hf-hub:{model_id}')\") and copy its folder "
        f"models--{model_id.replace('/', '--')} into this cache (or point HF_HUB_CACHE / HF_HOME at a copy), then "
        f'set HF_HUB_OFFLINE=1 [{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}]')


def _hf_hub_source(clip_model: str, clip_pretrained) -> Tuple[str, dict, dict, str]:
    """hf-hub:org/name -> (name, model config, preprocess config, weights path), all through open_clip/HF cache."""
    from open_clip.pretrained import download_pretrained_from_hf
    model_id = clip_model[len(HF_HUB_PREFIX):].strip('/')
    if model_id.count('/') != 1:
        raise OptionError(f'guidance.clip_model: {clip_model!r} must be hf-hub:org/name')
    if clip_pretrained is not None:
        raise OptionError(f'guidance.clip_pretrained must be null with clip_model: {clip_model} (the weights come '
                         f'from that repo), got {clip_pretrained!r}')
    try:
        cfg_path = download_pretrained_from_hf(model_id, filename=HF_CONFIG_NAME)
        weights = download_pretrained_from_hf(model_id)
    except Exception as err:
        raise _hf_hub_missing(model_id, err) from err
    hf_cfg = json.loads(Path(cfg_path).read_text())
    if 'model_cfg' not in hf_cfg:
        raise OptionError(f'guidance.clip_model: {cfg_path} of {clip_model} has no model_cfg; it is not an open_clip '
                         'model repo')
    return clip_model, hf_cfg['model_cfg'], hf_cfg.get('preprocess_cfg', {}), weights


def clip_source(clip_model, clip_pretrained) -> Tuple[str, dict, str, dict, Optional[str]]:
    """(open_clip name, model config, 'random' | 'tag' | 'file', tag config, local path) of a non-hf-hub
    source, checked without downloading anything: the option check runs it before any work."""
    name = resolve_clip_model(clip_model)
    cfg, tag_cfg, path = open_clip.get_model_config(name), {}, None
    if clip_pretrained is None:
        source = 'random'
    elif not isinstance(clip_pretrained, str) or not clip_pretrained:
        raise OptionError('guidance.clip_pretrained must be null (random weights), an open_clip pretrained tag or '
                          f'a local checkpoint path, got {clip_pretrained!r}')
    elif open_clip.get_pretrained_cfg(name, clip_pretrained):
        source, tag_cfg = 'tag', open_clip.get_pretrained_cfg(name, clip_pretrained)
    elif os.path.isfile(os.path.expanduser(clip_pretrained)):
        source, path = 'file', os.path.expanduser(clip_pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise OptionError(f'guidance.clip_pretrained: {clip_pretrained!r} is neither an open_clip pretrained tag '
                          f'of {name!r} (available: {tags or "none"}) nor an existing local checkpoint file')
    _check_vit_config(name, cfg)
    return name, cfg, source, tag_cfg, path


def build_clip_visual(clip_model, clip_pretrained, quick_gelu='auto') -> CLIPVisual:
    """Build the open_clip ViT image tower of ``clip_model`` with weights from ``clip_pretrained`` (see module doc)."""
    tag_cfg, path, hf_preprocess = {}, None, {}
    if isinstance(clip_model, str) and clip_model.startswith(HF_HUB_PREFIX):
        name, cfg, hf_preprocess, path = _hf_hub_source(clip_model, clip_pretrained)
        source = 'hf-hub'
    else:
        name, cfg, source, tag_cfg, path = clip_source(clip_model, clip_pretrained)
    _check_vit_config(name, cfg)
    if source == 'tag':
        try:
            path = open_clip.download_pretrained(tag_cfg)
        except Exception as err:
            raise CheckpointError(
                f"guidance: could not download the CLIP weights '{clip_pretrained}' of {name} ({err}). Offline? "
                'Fetch the open_clip checkpoint on a machine with internet (open_clip.create_model'
                f"('{name}', pretrained='{clip_pretrained}') caches it under ~/.cache/huggingface) and pass the "
                f'local file instead: guidance.clip_pretrained: /path/to/open_clip_pytorch_model.bin with '
                f"guidance.quick_gelu: {str(bool(tag_cfg.get('quick_gelu', False))).lower()} (this tag's "
                'activation; HF_HUB_OFFLINE=1 makes open_clip use its cache without retrying the network)') from err
        if is_torchscript_archive(path):
            raise CheckpointError(f"guidance: clip_pretrained '{clip_pretrained}' resolved to the TorchScript archive "
                               f'{path} (it contains code); SeG-SR loads one only from an explicit local path: '
                               f'set guidance.clip_pretrained: {path} if you trust it')
    folder_cfg = folder_model_config(path) if source == 'file' else (None, None)
    quick, reason = decide_quick_gelu(quick_gelu, name, cfg, source, clip_pretrained, tag_cfg, path, folder_cfg)
    logging.getLogger('basicsr').info(reason)
    root = logging.getLogger()
    root.addFilter(_quiet_random_init)  # we load the weights ourselves below (or want them random)
    try:  # open_clip's own model: a built-in name or, for hf-hub, the repo's config (weights loaded below)
        model = open_clip.create_model(name, pretrained=None, load_weights=False, quick_gelu=quick)
    finally:
        root.removeFilter(_quiet_random_init)
    _check_vit(name, model.visual)
    if path is not None:
        load_clip_checkpoint(model, path, name)
    visual = model.visual
    preprocess = {**open_clip.get_model_preprocess_cfg(model), **hf_preprocess}
    mean = tuple(tag_cfg.get('mean', preprocess.get('mean', open_clip.OPENAI_DATASET_MEAN)))
    std = tuple(tag_cfg.get('std', preprocess.get('std', open_clip.OPENAI_DATASET_STD)))
    digest = _digest(cfg, quick, visual if source != 'random' else None)
    description = f'clip_model={clip_model!r}, clip_pretrained={clip_pretrained!r}, quick_gelu={quick}'
    return CLIPVisual(visual, mean, std, digest, source, description, quick, reason)


def resize_positional_embedding(pos: torch.Tensor, old_grid: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """(1 + gh0*gw0, C) -> (1 + gh*gw, C): class token kept, patch part resized on its 2-D grid.

    Bicubic with antialiasing, as open_clip resizes it when loading a checkpoint at another image size.
    """
    if tuple(old_grid) == tuple(grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode='bicubic', align_corners=False, antialias=True)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos])


class CLIPImageEncoder(nn.Module):
    """SFEM: LR image -> normalised CLIP global feature I_g and local features I_l.

    The LR (B, 3, H, W) in [0, 1] is bilinearly upsampled by ``upscale`` to the nearest multiple of the
    patch size, normalised with CLIP's mean/std and run through the ViT; the [CLS] token gives I_g
    (B, D), the patch tokens I_l (B, gh*gw, D), both through ln_post and the projection, L2-normalised.
    """

    _MAX_CACHED_GRIDS = 16

    def __init__(self, visual: VisionTransformer, mean, std):
        super().__init__()
        self.visual = visual
        self.register_buffer('pixel_mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('pixel_std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.patch_size = tuple(visual.patch_size)
        self.base_grid = tuple(visual.grid_size)
        self._pos_cache = None  # (source state, {(grid, inference_mode): resized}); see _pos_source_state

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.double() swap the embedding's data in place (same Parameter, same _version):
        # drop the resized copies, or a CPU-built cache is served to CUDA inputs
        self._pos_cache = None
        return super()._apply(fn, *args, **kwargs)

    def token_grid(self, h: int, w: int, upscale: float) -> Tuple[int, int]:
        """CLIP token grid for an LR of h x w: (h*s, w*s) rounded to the nearest patch multiple (>= 1 patch)."""
        ph, pw = self.patch_size
        return max(1, int(h * upscale / ph + 0.5)), max(1, int(w * upscale / pw + 0.5))

    def positional_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1 + gh*gw, width); resized once per grid while the embedding is frozen (cached)."""
        pos = self.visual.positional_embedding
        if grid == self.base_grid or pos.requires_grad:
            return resize_positional_embedding(pos, self.base_grid, grid)
        state = self._pos_source_state(pos)
        if self._pos_cache is None or self._pos_cache[0] != state:
            self._pos_cache = (state, {})
        cache = self._pos_cache[1]
        key = (grid, torch.is_inference_mode_enabled())
        if key not in cache:
            if len(cache) >= self._MAX_CACHED_GRIDS:
                cache.pop(next(iter(cache)))
            with torch.no_grad():
                cache[key] = resize_positional_embedding(pos, self.base_grid, grid)
        return cache[key]

    @staticmethod
    def _pos_source_state(pos: torch.Tensor) -> tuple:
        """What makes a resized copy stale: another tensor or storage (``.to()``, ``.double()``, ``.cuda()``,
        ``.half()`` swap ``param.data``, on this module or on ``visual`` alone), or in-place writes (load_state_dict)."""
        return id(pos), pos.data_ptr(), pos.dtype, pos.device, pos._version

    def forward(self, x: torch.Tensor, upscale: float):
        """x (B, 3, H, W) in [0, 1] -> I_g (B, D), I_l (B, gh*gw, D), (gh, gw)."""
        grid = self.token_grid(x.shape[-2], x.shape[-1], upscale)
        v = self.visual
        x = F.interpolate(x, size=(grid[0] * self.patch_size[0], grid[1] * self.patch_size[1]), mode='bilinear',
                          align_corners=False)
        x = ((x - self.pixel_mean) / self.pixel_std).to(v.conv1.weight.dtype)
        tokens = v.conv1(x).flatten(2).transpose(1, 2)  # (B, gh*gw, width)
        cls = v.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding(grid).to(tokens.dtype)
        tokens = v.transformer(v.ln_pre(tokens))
        feats = F.normalize(v.ln_post(tokens) @ v.proj, dim=-1)  # (B, 1 + gh*gw, D)
        return feats[:, 0], feats[:, 1:], grid
