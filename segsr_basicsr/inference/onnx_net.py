"""An exported ONNX file run by onnxruntime, shaped like a network for the one inference engine.

:class:`OnnxNetwork` is what :class:`~segsr_basicsr.inference.engine.Engine` needs of a network:
``net(x)`` for x (B, 3, h, w) float in [0, 1] -> (B, 3, h*s, w*s), ``upscale``, ``size_multiple``,
``training`` / ``eval()`` / ``train()``. Scale, window multiple and tile come from the file's own
metadata (written by :mod:`segsr_basicsr.inference.onnx_export`), so the file alone is enough.

A fixed-tile file (``fixed_tile`` = T) takes exactly T x T: run the engine with tile size T. Every tile
of an image of at least T x T is then full; an input smaller than T (a small image) is padded here up to
T like :func:`~segsr_basicsr.archs.backbone.pad_to_multiple` pads (reflect, bottom/right) and its output
cropped, so near that padded border it differs from the PyTorch network, which pads only to its window.
A dynamic file takes any multiple of ``size_multiple``. Batches run one image at a time (batch 1 files).
"""
import json
from typing import Optional, Sequence

import numpy as np
import torch

from segsr_basicsr.archs.backbone import pad_to_multiple
from segsr_basicsr.errors import InferError

__all__ = ['OnnxNetwork', 'open_session']

#: our metadata_props keys start with this (Deepness' keys are its own)
META_PREFIX = 'segsr_'
#: the name of the semantic-maps output of a file exported with ``--maps``
MAPS = 'maps'


def open_session(path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
    """An onnxruntime session on ``path`` (CPU unless ``providers`` say otherwise); one-line InferError if the
    file does not load."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    # idle onnxruntime threads otherwise spin for a while after each run, stealing the CPU from the
    # tiler, the raster writer and any PyTorch work in the same process
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    try:
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=list(providers or ['CPUExecutionProvider']))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise InferError(f'Cannot load ONNX model {path}: {" ".join(str(e).split())[:300]}. Re-export '
                         'it with segsr-export.') from None


class OnnxNetwork:
    """``OnnxNetwork('model.onnx')(x)``: onnxruntime on (B, 3, h, w) tensors, results as float32 tensors."""

    def __init__(self, path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
        self.path = str(path)
        self.session = open_session(self.path, providers, threads)
        self.metadata = self._read_metadata()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.training = False
        #: set by the engine around a run that records maps; the last call's maps are left here
        self.record_semantic_maps, self.semantic_maps = False, None

    def _read_metadata(self) -> dict:
        """Our ``segsr_*`` metadata_props (JSON), without the prefix; the scale is required."""
        raw = self.session.get_modelmeta().custom_metadata_map
        meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}
        if not isinstance(meta.get('scale'), int):
            raise InferError(f'{self.path}: has no segsr_scale metadata, so it was not written by segsr-export; '
                             'export the checkpoint with segsr-export.')
        return meta

    # ------------------------------------------------------------------ what the engine reads
    @property
    def upscale(self) -> int:
        return int(self.metadata['scale'])

    @property
    def fixed_tile(self) -> Optional[int]:
        """The one LR tile size the file takes, or None for a dynamic file."""
        tile = self.metadata.get('tile')
        return int(tile) if tile else None

    @property
    def size_multiple(self) -> int:
        """The network's window (a dynamic file: the multiple its sizes must have). Not the fixed tile: the
        tiler aligns tile starts to it, and edge tiles are padded up to the fixed tile in :meth:`__call__`."""
        return int(self.metadata.get('size_multiple') or 1)

    @property
    def num_maps(self) -> int:
        """Semantic maps the file gives (``segsr-export --maps``: one per SR unit; 0 without)."""
        if MAPS not in [o.name for o in self.session.get_outputs()]:
            return 0
        return int(self.metadata.get('num_maps') or 1)  # files from before num_maps: the maps as one

    @property
    def info(self):
        """The file's :class:`~segsr_basicsr.inference.network.NetworkInfo`."""
        from segsr_basicsr.inference.network import NetworkInfo
        return NetworkInfo(self.upscale, self.size_multiple, self.fixed_tile, self.num_maps, 3, self.path)

    @property
    def name(self) -> str:
        """The file, for messages (the checkpoint it was exported from is ``metadata['name']``)."""
        return self.path

    def eval(self):
        return self

    def train(self, mode: bool = True):
        """No-op: an exported file is always in inference mode."""
        return self

    # ------------------------------------------------------------------ running
    def _run_one(self, x: np.ndarray, names) -> list:
        return self.session.run(names, {self.input_name: x})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float in [0, 1] -> (B, 3, h*s, w*s) float32 on x's device; with
        ``record_semantic_maps`` the K maps (B, E, h, w) are left in ``semantic_maps``, like a network's."""
        h, w = x.shape[-2:]
        tile = self.fixed_tile
        if tile is not None and (h > tile or w > tile):
            raise InferError(f'{self.path} takes {tile}x{tile} LR tiles, got {h}x{w}: run it with tile size '
                             f'{tile} (segsr-infer --tile {tile}).')
        padded = pad_to_multiple(x.float(), tile or self.size_multiple)  # a smaller tile: up to the tile
        arr = padded.detach().cpu().numpy()
        names = [self.output_name] + ([MAPS] if self.record_semantic_maps and self.num_maps else [])
        runs = [self._run_one(arr[i:i + 1], names) for i in range(arr.shape[0])]
        s = self.upscale
        out = np.concatenate([r[0] for r in runs])
        if len(names) > 1:
            maps = torch.from_numpy(np.concatenate([r[1] for r in runs])[..., :h, :w]).to(x.device)
            self.semantic_maps = list(maps.chunk(self.num_maps, 1))
        return torch.from_numpy(out[..., :h * s, :w * s]).to(x.device)
