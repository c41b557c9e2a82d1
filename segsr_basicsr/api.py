"""Python API: load a trained network once, super-resolve arrays and whole raster scenes.

    import segsr_basicsr
    model = segsr_basicsr.load_model('net_g_latest.pth', device='cuda')
    sr = model.upscale(rgb, tile=256)                     # (H, W, 3) uint8/uint16/float -> (H*s, W*s, 3), same dtype
    sr, maps = model.upscale(rgb, return_maps=True)       # + K semantic maps (E, H, W) float32 (guided nets)
    model.upscale_raster('scene.tif', 'out/scene_x4.tif') # any GDAL raster, streamed window by window
    model.upscale_batch(['scenes/'], 'out/')             # what segsr-infer runs: resumable, shared among ranks

Checkpoints written by training carry their ``network_g`` options and scale (key
:data:`META_KEY`, ignored by BasicSR's loader), so no option file is needed; older
checkpoints take ``opt='train.yml'``. Everything goes through the feathered tiler
(:mod:`segsr_basicsr.inference.tiling`); invalid pixels (alpha 0, nodata, ``mask``) are
filled before the network sees them and stay invalid in the output.
"""
import copy
import hashlib
import json
import os
from pathlib import Path

from segsr_basicsr.archs.backbone import GuidedBackbone
from segsr_basicsr.errors import InferError
from segsr_basicsr.inference.network import describe
from segsr_basicsr.inference.records import ModelSettings
from segsr_basicsr.inference.upscaler import SeGSRUpscaler
from segsr_basicsr.io.checkpoint import META_KEY
from segsr_basicsr.io.digest import file_sha256
from segsr_basicsr.options import parse_amp
from segsr_basicsr.utils.preflight import check_device

__all__ = ['load_model', 'build_from_checkpoint', 'model_backend', 'SeGSRUpscaler']


def load_model(path, device='auto', opt=None, param_key=None, amp=None, self_ensemble=False,
               merge_lora=False, backend='auto') -> 'SeGSRUpscaler':
    """Checkpoint (+ option file for checkpoints without :data:`META_KEY`) -> :class:`SeGSRUpscaler`.

    ``path``: a .pth or .safetensors checkpoint, or an .onnx file written by ``segsr-export``
    (``backend`` 'auto' picks onnxruntime for it; 'torch' | 'onnxruntime' say so). ``device``: 'auto' |
    'cpu' | 'cuda[:N]' | torch.device; ``param_key``: params_ema (default when present) or params;
    ``amp``: None | 'bf16' | 'fp16' autocast; ``self_ensemble``: average the 8 flips/rotations of every
    tile, each through the whole network (8x the time); ``merge_lora``: fold the CLIP LoRA adapters into
    their weights (a little faster; outputs then differ from validation's at float-rounding level, so off
    by default: every entry point gives the same pixels).
    """
    if model_backend(path, backend) == 'onnxruntime':
        return _load_onnx(path, device, amp, self_ensemble, opt=opt, param_key=param_key, merge_lora=merge_lora)
    device = check_device(device)
    amp = None if parse_amp(amp, 'amp') is None else str(amp)
    net, net_opt, _, param_key = _build(path, opt, param_key)
    merge_lora = bool(merge_lora and isinstance(net, GuidedBackbone) and net.guidance is not None)
    if merge_lora:  # fold CLIP LoRA into its weights
        net.merge_lora()
    settings = ModelSettings(_digest(path), _digest(net_opt), param_key, amp,
                             bool(self_ensemble), merge_lora, 'torch')
    return SeGSRUpscaler(net.to(device).eval(), device=device, name=str(path), settings=settings,
                         info=describe(net, device, name=str(path)))


def _digest(obj) -> str:
    """SHA-256 of a file's content, or of a JSON-able object (network options)."""
    if isinstance(obj, (str, Path)) and os.path.isfile(obj):
        return file_sha256(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def build_from_checkpoint(path, opt=None, param_key=None):
    """(network on the CPU, its network_g, the state_dict loaded into it) from a checkpoint, read once."""
    return _build(path, opt, param_key)[:3]


def _build(path, opt, param_key):
    from segsr_basicsr.io.checkpoint import load_checkpoint, pick_state_dict
    from segsr_basicsr.archs.network_options import describe_checkpoint
    ckpt = load_checkpoint(path)
    net_opt, source = _network_options(path, ckpt, opt)
    weights = {k: v for k, v in ckpt.items() if k != META_KEY} if isinstance(ckpt, dict) else ckpt
    state, param_key = pick_state_dict(weights, param_key, source=str(path), hint='pick one with --param-key')
    net = _build_with(net_opt, state, f'{path} [{param_key}]', source, describe_checkpoint(ckpt, state))
    return net, net_opt, state, param_key


def model_backend(path, backend='auto') -> str:
    """'torch' or 'onnxruntime' for ``path``: an .onnx file runs on onnxruntime, a checkpoint on PyTorch."""
    onnx = str(path).lower().endswith('.onnx')
    if backend == 'auto':
        return 'onnxruntime' if onnx else 'torch'
    if backend == 'onnxruntime' and not onnx:
        raise InferError(f'--backend onnxruntime runs an .onnx file written by segsr-export; {path} is not one '
                         '(export it: segsr-export --model CHECKPOINT --output model.onnx).')
    if backend == 'torch' and onnx:
        raise InferError(f'{path}: is an ONNX file; run it with --backend onnxruntime (or auto), or give the '
                         '.pth/.safetensors checkpoint to --backend torch.')
    if backend not in ('torch', 'onnxruntime'):
        raise InferError(f"backend {backend!r}: use 'auto', 'torch' or 'onnxruntime'.")
    return backend


def _network_options(path, ckpt, opt):
    """(network_g, where it came from): the option file's when given, else the checkpoint's own."""
    from segsr_basicsr.io.option_file import load_yaml
    meta = ckpt.get(META_KEY) if isinstance(ckpt, dict) else None
    if opt is not None:
        opt_dict = load_yaml(opt) if isinstance(opt, (str, Path)) else opt
        if 'network_g' not in opt_dict:
            raise InferError(f'{opt}: has no network_g section; use the option file the model was trained with.')
        return opt_dict['network_g'], str(opt)
    if meta is not None:
        return meta['network_g'], f'{path} (saved network_g)'
    raise InferError(f'{path}: does not say which network it holds (saved before checkpoints carried their '
                     'network_g); pass the training option file: -opt train.yml (API: load_model(path, '
                     "opt='train.yml')).")


def _build_with(net_opt, state, what, source, holds='the weights were saved from another network_g'):
    """network_g built and loaded with ``state``; weights that do not fit are one line naming both and saying
    what the file holds."""
    from basicsr.archs import build_network

    from segsr_basicsr.io.checkpoint import load_error_details
    net = build_network(copy.deepcopy(dict(net_opt)))
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        raise InferError(f'{what} does not fit network_g of {source}: {load_error_details(e)}; {holds}. Use the '
                         'option file the model was trained with.') from None
    if result.missing_keys or result.unexpected_keys:
        raise InferError(f'{what} does not match network_g of {source}: '
                         f'{len(result.missing_keys)} missing key(s) {result.missing_keys[:3]}, '
                         f'{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:3]}; {holds}. '
                         'Use the option file the model was trained with.')
    return net


def _load_onnx(path, device, amp, self_ensemble, **torch_only):
    """An exported file on onnxruntime (CUDA provider for a CUDA device), behind the same engine."""
    given = [k for k, v in torch_only.items() if v]
    if given or amp:
        what = ', '.join(given + (['amp'] if amp else []))
        raise InferError(f'{path}: {what} apply to PyTorch checkpoints; an ONNX file holds its own network, '
                         'weights and precision (export with segsr-export --fp16 for half precision).')
    try:
        import onnxruntime as ort
    except ImportError:
        raise InferError(f"{path}: running ONNX files needs onnxruntime: pip install 'segsr_basicsr[export]'.") \
            from None
    from segsr_basicsr.inference.onnx_net import OnnxNetwork
    providers = ['CPUExecutionProvider']
    if check_device(device).type == 'cuda':
        if 'CUDAExecutionProvider' in ort.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        elif str(device) != 'auto':
            raise InferError(f'{path}: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or '
                             'run on the CPU (--device cpu).')
    settings = ModelSettings(_digest(path), self_ensemble=bool(self_ensemble), backend='onnxruntime')
    return SeGSRUpscaler(OnnxNetwork(path, providers), device='cpu', name=str(path), settings=settings)
