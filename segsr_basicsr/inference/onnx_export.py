"""A built network -> one ONNX file that super-resolves on its own, verified against PyTorch before it appears.

The file holds the whole network (LoRA merged by the caller, the CLIP tower inside): input ``input``
(1, 3, H, W) float32 in [0, 1], output ``output`` (1, 3, H*s, W*s) float32 (and with ``maps`` the semantic
maps ``maps`` (1, K*E, H, W)). H, W are the fixed ``tile``, or dynamic multiples of :func:`dynamic_multiple`.
``fp16`` computes in half precision but keeps float32 input/output (QGIS Deepness feeds float32).

torch.onnx's dynamo exporter is used: the TorchScript one (``dynamo=False``) stops at OCAB's
``Tensor.unfold`` and at the antialiased bicubic resize of CLIP's positional embedding. Two things are
swapped for the export only (:func:`export_ready`), never for PyTorch runs: the CLIP encoder's resized
positional-embedding cache (it keys on ``data_ptr()``, which export's fake tensors do not have) is
bypassed, and for dynamic sizes its token grid ``round(h*s/patch)`` is computed as ``h*s // patch``,
the same number on the sizes a dynamic file accepts (h*s a multiple of the patch).

The file is written under a temporary name, checked with onnxruntime on CPU against PyTorch (a random
and a real-looking tile; a second size when dynamic; the Deepness shape rules when asked) and renamed
into place only if every max |diff| is within the tolerance. Metadata (scale, window multiple, tile,
name; Deepness' keys) go into the ONNX ``metadata_props`` so the file describes itself.
"""
import copy
import json
import math
import os
import time
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from torch import nn

from segsr_basicsr.archs.clip_tower import CLIPImageEncoder, resize_positional_embedding
from segsr_basicsr.errors import InferError
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.inference.network import describe
from segsr_basicsr.inference.onnx_net import MAPS, META_PREFIX, open_session
from segsr_basicsr.options import default_overlap, fitting_tile

__all__ = ['export_onnx', 'dynamic_multiple', 'deepness_metadata', 'export_ready', 'DEFAULT_OPSET', 'TOLERANCE',
           'META_PREFIX']

DEFAULT_OPSET = 18
#: max |diff| against PyTorch (float32), values in [0, 1]; fp16 files are compared with the float32 network
TOLERANCE = {'fp32': 1e-4, 'fp16': 2e-2}
INPUT, OUTPUT = 'input', 'output'
#: largest dynamic side, in LR pixels (an export bound only)
MAX_DYNAMIC_SIDE = 8192


class _ExportWrapper(nn.Module):
    """network(x) [+ its semantic maps as one tensor], in fp16 if the network is, with float32 input/output."""

    def __init__(self, net: nn.Module, maps: bool):
        super().__init__()
        self.net, self.maps = net, maps
        self.dtype = next(net.parameters()).dtype
        self.train(False)  # inference graph (the network is in eval mode already)

    def forward(self, x):
        if self.maps:
            self.net.record_semantic_maps = True
        out = self.net(x.to(self.dtype)).float()
        if not self.maps:
            return out
        self.net.record_semantic_maps = False
        maps, self.net.semantic_maps = self.net.semantic_maps, None
        return out, torch.cat(maps, 1).float()


def _encoders(net):
    return [m for m in net.modules() if isinstance(m, CLIPImageEncoder)]


def dynamic_multiple(net) -> int:
    """LR sizes a dynamic file accepts are multiples of this: the window, and patch / gcd(patch, s) so that
    the CLIP token grid h*s/patch is a whole number (no rounding to trace)."""
    multiple = describe(net).multiple
    scale = int(net.upscale)
    for enc in _encoders(net):
        for patch in enc.patch_size:
            multiple = math.lcm(multiple, patch // math.gcd(patch, scale))
    return multiple


@contextmanager
def export_ready(net, dynamic: bool):
    """Export-only versions of the CLIP encoder's positional embedding (resized in the graph, no cache)
    and, when ``dynamic``, of its token grid (exact division); caches dropped after. PyTorch runs outside
    the block are untouched."""
    patched = []
    for enc in _encoders(net):
        def pos(grid, enc=enc):
            return resize_positional_embedding(enc.visual.positional_embedding, enc.base_grid, grid)

        enc.positional_embedding = pos
        if dynamic:
            ph, pw = enc.patch_size
            enc.token_grid = lambda h, w, up, ph=ph, pw=pw: (h * int(up) // ph, w * int(up) // pw)
        patched.append(enc)
    try:
        yield
    finally:
        for enc in patched:
            enc.__dict__.pop('positional_embedding', None)
            enc.__dict__.pop('token_grid', None)
            enc._pos_cache = None
        for m in net.modules():  # shift masks built while tracing hold fake tensors
            if isinstance(getattr(m, '_shift_masks', None), dict):
                m._shift_masks.clear()


def deepness_metadata(tile: int, overlap_percent: int, resolution_cm: Optional[float]) -> dict:
    """The keys QGIS Deepness' ModelBase reads (JSON values): model_type, tile_size, tiles_overlap (percent of
    the tile), resolution (cm/px, if known), standardization (identity: the network takes [0, 1] RGB)."""
    meta = {'model_type': 'Superresolution', 'tile_size': int(tile), 'tiles_overlap': int(overlap_percent),
            'standardization_mean': [0.0, 0.0, 0.0], 'standardization_std': [1.0, 1.0, 1.0]}
    if resolution_cm is not None:
        meta['resolution'] = float(resolution_cm)
    return meta


# ----------------------------------------------------------------------------- check tiles
def synthetic_tile(h: int, w: int) -> np.ndarray:
    """A deterministic image-like (h, w, 3) float32 tile (gradients, edges, texture) when no real one is given."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / 5.0) * np.cos(y / 7.0)
    g = (x + y) / float(h + w)
    b = ((x // 8 + y // 8) % 2) * 0.6 + 0.2
    return np.clip(np.stack([r, g, b], -1), 0, 1).astype(np.float32)


def _crop(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """The centre h x w of an (H, W, 3) float image in [0, 1]; edge-padded where it is smaller."""
    ih, iw = image.shape[:2]
    pad = ((0, max(0, h - ih)), (0, max(0, w - iw)), (0, 0))
    image = np.pad(image, pad, mode='edge')
    y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[y0:y0 + h, x0:x0 + w]


def _check_inputs(tile: int, dynamic: bool, multiple: int, check_image) -> list:
    """(name, (1, 3, h, w) float32 tensor): a random tile and a real (or synthetic) one; a second,
    non-square size too for a dynamic file."""
    g = torch.Generator().manual_seed(0)
    real = check_image if check_image is not None else synthetic_tile(tile, tile)
    kind = 'real' if check_image is not None else 'synthetic'
    checks = [(f'random {tile}x{tile}', torch.rand(1, 3, tile, tile, generator=g)),
              (f'{kind} {tile}x{tile}', _tensor(_crop(real, tile, tile)))]
    if dynamic:
        h, w = tile + multiple, max(multiple, tile - multiple)
        checks.append((f'{kind} {h}x{w}', _tensor(_crop(real, h, w))))
    return checks


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


# ----------------------------------------------------------------------------- export
def _export_program(wrapper, example, dynamic, multiple, opset, maps):
    """torch.onnx.export (dynamo) of ``wrapper`` on ``example``; one-line InferError when it fails."""
    from torch.export import Dim
    shapes = None
    if dynamic:
        top = MAX_DYNAMIC_SIDE // multiple
        shapes = ({2: multiple * Dim('h', min=2, max=top), 3: multiple * Dim('w', min=2, max=top)}, )
    outputs = [OUTPUT, MAPS] if maps else [OUTPUT]
    try:
        with torch.no_grad():
            return torch.onnx.export(wrapper, (example, ), None, dynamo=True, input_names=[INPUT],
                                     output_names=outputs, opset_version=opset, dynamic_shapes=shapes,
                                     optimize=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.export / onnxscript raise many types
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise InferError(f'ONNX export failed ({type(e).__name__}: {first[:300]}); try another --opset, '
                         'a fixed --tile instead of --dynamic, or SEGSR_DEBUG=1 for the traceback.') from None


def check_deepness_shapes(session, tile: int, scale: int) -> None:
    """Deepness' Superresolution rules: one input (1, 3, T, T) float, one output (1, 3, T*s, T*s) float."""
    ins, outs = session.get_inputs(), session.get_outputs()
    want_in, want_out = [1, 3, tile, tile], [1, 3, tile * scale, tile * scale]
    problems = []
    if len(ins) != 1 or list(ins[0].shape) != want_in or ins[0].type != 'tensor(float)':
        problems.append(f'input {[(i.shape, i.type) for i in ins]} is not one {want_in} float tensor')
    if len(outs) != 1 or list(outs[0].shape) != want_out or outs[0].type != 'tensor(float)':
        problems.append(f'output {[(o.shape, o.type) for o in outs]} is not one {want_out} float tensor')
    if problems:
        raise InferError('the exported file breaks the Deepness Superresolution rules: ' + '; '.join(problems))


def _verify(session, references, tolerance) -> list:
    """Max |diff| of onnxruntime (CPU) against the PyTorch outputs, per check; InferError over ``tolerance``."""
    results = []
    for name, x, expected in references:
        got = session.run(None, {INPUT: x.numpy()})
        for out_name, value, ref in zip([o.name for o in session.get_outputs()], got, expected):
            if tuple(value.shape) != tuple(ref.shape):
                raise InferError(f'verification failed on the {name} tile: onnxruntime gives {out_name} '
                                 f'{tuple(value.shape)}, PyTorch {tuple(ref.shape)}.')
            # maps are tau * cosines (|values| up to ~100): their diff is taken relative to their range
            span = max(1.0, float(ref.abs().max())) if out_name == MAPS else 1.0
            diff = float(np.abs(value.astype(np.float64) - ref.numpy()).max()) / span
            results.append({'check': name, 'output': out_name, 'max_abs_diff': diff})
            if not diff <= tolerance:
                raise InferError(f'verification failed: max |diff| {diff:.3g} between onnxruntime and PyTorch on '
                                 f'the {name} tile ({out_name}) is above the tolerance {tolerance:g}; the file was '
                                 'not written (try fp32, another --opset, or a looser --tolerance).')
    return results


def _properties(net, tile, dynamic, multiple, fp16, maps, name, extra) -> dict:
    """metadata_props (JSON values): what OnnxNetwork and other readers need to run the file."""
    window = multiple if dynamic else describe(net).multiple
    props = {'scale': int(net.upscale), 'size_multiple': window,
             'tile': None if dynamic else int(tile), 'name': name, 'fp16': bool(fp16),
             'outputs': [OUTPUT, MAPS] if maps else [OUTPUT], 'input_range': [0.0, 1.0],
             'num_maps': describe(net).num_maps if maps else 0}
    props = {META_PREFIX + k: v for k, v in props.items()}
    props.update(extra or {})
    return {k: json.dumps(v) for k, v in props.items()}


def _check_request(net, tile, dynamic, maps, deepness):
    """Combinations that cannot give a working file, refused before any work."""
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise InferError(f'--tile must be a whole number >= 1, got {tile!r}.')
    if maps and getattr(net, 'guidance', None) is None:
        raise InferError('--maps: this network has no semantic guidance, so there are no maps to export.')
    if deepness is not None and dynamic:
        raise InferError('--deepness needs a fixed --tile: Deepness reads its tile size from the input shape.')
    if deepness is not None and maps:
        raise InferError('--deepness and --maps: Deepness accepts super-resolution models with one output only.')
    multiple = dynamic_multiple(net)
    window = describe(net).multiple
    if not dynamic and fitting_tile(tile, window) != tile:  # segsr-infer and the API run the file in tiles of T
        raise InferError(f'--tile {tile}: a fixed-tile file runs every image in {tile}x{tile} tiles, which must be '
                         f'a multiple of the network\'s window {window} with room for the default overlap '
                         f'({default_overlap(tile)}); use --tile {fitting_tile(tile, window)}.')
    if dynamic and tile % multiple:
        raise InferError(f'--dynamic: the example --tile {tile} must be a multiple of {multiple} (the LR sizes '
                         f'this network exports for); use {-(-tile // multiple) * multiple}.')
    return multiple


def export_onnx(net, path, tile: int = 256, dynamic: bool = False, fp16: bool = False, opset: int = DEFAULT_OPSET,
                maps: bool = False, deepness: Optional[dict] = None, tolerance: Optional[float] = None,
                check_image: Optional[np.ndarray] = None, name: str = 'network', metadata: Optional[dict] = None,
                threads: Optional[int] = None) -> dict:
    """Export ``net`` (eval, LoRA merged by the caller) to ``path``, verified; returns a report dict.

    ``deepness``: None, or ``{'overlap_percent': int, 'resolution_cm': float | None}`` to write Deepness'
    metadata and check its shape rules; ``check_image``: (H, W, 3) float32 RGB in [0, 1] whose centre is
    the real check tile (a synthetic one otherwise); ``metadata``: extra ``segsr_*`` props (JSON-able).
    """
    multiple = _check_request(net, tile, dynamic, maps, deepness)
    tolerance = TOLERANCE['fp16' if fp16 else 'fp32'] if tolerance is None else float(tolerance)
    net.eval()
    with torch.no_grad():
        wrapper = _ExportWrapper(net, maps)
        references = [(n, x, [o.float() for o in _as_tuple(wrapper(x))])
                      for n, x in _check_inputs(tile, dynamic, multiple, check_image)]
    export_net = copy.deepcopy(net).half() if fp16 else net
    t0 = time.perf_counter()
    with export_ready(export_net, dynamic):
        program = _export_program(_ExportWrapper(export_net, maps), references[0][1], dynamic, multiple, opset,
                                  maps)
    export_seconds = time.perf_counter() - t0
    extra = {META_PREFIX + k: v for k, v in (metadata or {}).items()}
    if deepness is not None:
        extra.update(deepness_metadata(tile, deepness.get('overlap_percent', 0), deepness.get('resolution_cm')))
    program.model.metadata_props.update(_properties(net, tile, dynamic, multiple, fp16, maps, name, extra))
    report = {}

    def write(tmp):
        program.save(str(tmp), external_data=False)
        t1 = time.perf_counter()
        session = open_session(tmp, threads=threads)
        report['checks'] = _verify(session, references, tolerance)
        report['verify_seconds'] = time.perf_counter() - t1
        if deepness is not None:
            check_deepness_shapes(session, tile, int(net.upscale))

    atomic_write(path, write, keep_suffix=True)
    report.update(path=str(path), size_bytes=os.path.getsize(path), export_seconds=export_seconds,
                  tolerance=tolerance, tile=tile, dynamic=dynamic,
                  fp16=fp16, opset=opset, scale=int(net.upscale))
    return report


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out, )
