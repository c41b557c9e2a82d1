"""The one inference engine: a network on an LR tensor or a streamed scene, tile by tile.

Validation, ``segsr_basicsr.test``, ``segsr-infer`` and :class:`~segsr_basicsr.api.SeGSRUpscaler`
all run a network through :class:`Engine`, so the same checkpoint, image, tile and self-ensemble
setting give the same pixels everywhere. Per tile batch the engine: pads to the network's window
(:func:`forward_padded`), runs it under autocast, averages the 8 self-ensemble views *of the tile*
(per tile, so a scene of any size streams; without tiles the tile is the image), records the
semantic maps, and leaves tiles without a valid pixel out. The tiles are cut and blended by
:func:`~segsr_basicsr.inference.tiling.tiled_forward`.

Every input is a stack of channels (B, 3 + E + 1, H, W): RGB in [0, 1], E extra bands (bicubic,
not seen by the network) and a last valid/alpha channel (> 0 where the pixel is valid).
"""
import contextlib
import queue
import threading
from contextlib import contextmanager
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from segsr_basicsr.archs.backbone import pad_to_multiple
from segsr_basicsr.errors import InferError
from segsr_basicsr.inference.network import NetworkInfo, describe
from segsr_basicsr.inference.self_ensemble import self_ensemble
from segsr_basicsr.options import check_tile
from segsr_basicsr.inference.tiling import TileSpec, strip_lr_rows, row_strips, rows_to_run, tile_grid, tiled_forward

__all__ = ['Engine', 'TileSpec', 'autocast', 'forward_padded']


def autocast(device: torch.device, dtype):
    """torch.autocast on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_padded(net, x: torch.Tensor, record_maps: bool = False, multiple: int = 1):
    """(B,3,H,W) -> SR (B,3,H*s,W*s) [, K maps (B,E,H,W)]: pads to ``multiple`` (the network's window,
    :class:`NetworkInfo`) and crops. GuidedBackbones pad internally too (then this pad is a no-op); plain
    BasicSR archs that need a multiple (SwinIR-like) get it here. ``record_maps``: the network records them."""
    h, w = x.shape[-2:]
    x = pad_to_multiple(x, multiple)
    out = net(x)
    s = out.shape[-2] // x.shape[-2]
    out = out[..., :h * s, :w * s]
    if not record_maps:
        return out
    return (out, *[m[..., :h, :w].float() for m in net.semantic_maps or []])


class Engine:
    """A network and how to run it: device, autocast dtype, self-ensemble. Tiling is per call.

    ``info`` (:class:`NetworkInfo`) is filled by whoever loaded the network; without it the engine asks
    :func:`describe` once."""

    def __init__(self, net, device='cpu', amp=None, self_ensemble: bool = False, scale: Optional[int] = None,
                 info: Optional[NetworkInfo] = None):
        self.net, self.device, self.amp = net, torch.device(device), amp
        self.self_ensemble = bool(self_ensemble)
        self.info = info or describe(net, self.device, scale)
        self.multiple, self.scale, self.num_maps = self.info.multiple, self.info.scale, self.info.num_maps

    def tile_for(self, tile: TileSpec, origin: str = 'tile', streamed: bool = False) -> TileSpec:
        """``tile`` as this network runs it, checked once for every entry point: a size off the network's
        window gives seams (refused); a network that takes one tile size only (a fixed-tile ONNX file) runs
        every image in tiles of that size (also by default: 'auto'), and refuses another."""
        fixed = self.info.fixed_tile
        tile = tile.for_input(streamed, self.multiple) if fixed is None or tile.size != 'auto' else \
            TileSpec(fixed, tile.overlap, tile.margin, tile.batch)
        if fixed is not None and tile.size != fixed:
            if tile.size:
                raise InferError(f'{self.info.name} takes {fixed}x{fixed} LR tiles only (fixed at export), got '
                                 f'tile size {tile.size}: use --tile {fixed}, or export with --dynamic.')
            return TileSpec(fixed, tile.overlap, tile.margin, tile.batch)
        if tile.size:
            check_tile(tile, self.multiple, origin, 'the window of the network,')
        return tile

    def grid(self, h: int, w: int, tile: TileSpec) -> tuple:
        """(tile height, tile width, row starts, column starts) of an h x w image."""
        size, overlap, _ = self.tile_for(tile).resolve(h, w)
        return tile_grid(h, w, size, overlap, self.multiple)

    def windows(self, h: int, w: int, tile: TileSpec, rows=None) -> list:
        """(y0, y1, x0, x1) of every tile of an h x w image that runs (for a strip: see :meth:`strips`), in order."""
        th, tw, ys, xs = self.grid(h, w, tile)
        run = range(len(ys)) if rows is None else rows_to_run(ys, th, rows)
        return [(ys[r], ys[r] + th, x, x + tw) for r in run for x in xs]

    def strips(self, h: int, w: int, tile: TileSpec, parts: int) -> list:
        """Up to ``parts`` strips of tile rows ``((first, end), (lr_y0, lr_y1))`` that together make the image:
        each strip's output (rows lr_y0*s..lr_y1*s) computed alone equals those rows of a whole run."""
        th, _, ys, _ = self.grid(h, w, tile)
        return [(b, strip_lr_rows(h, ys, b)) for b in row_strips(ys, th, parts)]

    # ------------------------------------------------------------------ the network on one batch of tiles
    def forward(self, x: torch.Tensor, record_maps: bool = False) -> tuple:
        """(n, 3, h, w) on the device -> (SR (n, 3, h*s, w*s), *maps (n, E, h, w)); self-ensemble per tile."""
        with autocast(self.device, self.amp):
            if self.self_ensemble:
                res = self_ensemble(lambda v: forward_padded(self.net, v, record_maps, self.multiple), x)
            else:
                res = forward_padded(self.net, x, record_maps, self.multiple)
        return res if isinstance(res, tuple) else (res, )

    def _valid_forward(self, t, record_maps, map_channels):
        """SR (n, 3, th*s, tw*s) and maps of the tiles ``t`` (n, C, th, tw); tiles without a valid pixel are
        not run and stay zero. When every tile is valid (the common case) the outputs are used as they are."""
        n, _, th, tw = t.shape
        run = (t[:, -1] > 0).flatten(1).any(1)
        if record_maps and not map_channels:
            run[:] = True  # the first batch tells the maps' shape
        if bool(run.all()):
            res = self.forward(t[:, :3], record_maps)
            map_channels[:] = [m.shape[1] for m in res[1:]]
            return res[0], list(res[1:])
        sr = t.new_zeros(n, 3, th * self.scale, tw * self.scale)
        maps = [t.new_zeros(n, c, th, tw) for c in map_channels]
        if bool(run.any()):
            res = self.forward(t[run, :3], record_maps)
            sr[run] = res[0].to(sr.dtype)
            for m, r in zip(maps, res[1:]):
                m[run] = r.to(m.dtype)
        return sr, maps

    def _tile_fn(self, record_maps: bool):
        """The function the tiler calls: channels (n, 3 + E + 1, h, w) -> (SR + E + valid at x s, *maps)."""
        s, map_channels = self.scale, []

        def fn(t):
            sr, maps = self._valid_forward(t, record_maps, map_channels)
            parts = [sr.to(t.dtype)]
            if t.shape[1] > 4:
                parts.append(F.interpolate(t[:, 3:-1], scale_factor=s, mode='bicubic', align_corners=False))
            parts.append(F.interpolate(t[:, -1:], scale_factor=s, mode='nearest'))
            out = torch.cat(parts, 1)
            return (out, *maps) if record_maps else out

        return fn

    @contextmanager
    def _inference(self, record_maps: bool):
        """eval + no_grad (+ map recording) for the block; the network's mode is restored after."""
        net = self.net
        was_training = net.training
        net.eval()
        if record_maps:
            net.record_semantic_maps = True
        try:
            with torch.no_grad():
                yield
        finally:
            if record_maps:
                net.record_semantic_maps = False
                net.semantic_maps = None
            net.train(was_training)

    def _tiled(self, source, tile: TileSpec, record_maps, progress, sink, out_device, rows=None):
        h, w = source.shape[-2:]
        tile = self.tile_for(tile)
        size, overlap, margin = tile.resolve(h, w)
        record_maps = record_maps and self.num_maps > 0  # a network without guidance has none to record
        with self._inference(record_maps):
            return tiled_forward(self._tile_fn(record_maps), source, size, overlap, margin=margin,
                                 multiple=self.multiple, batch=tile.batch, device=self.device,
                                 out_device=out_device, sink=sink, progress=progress, rows=rows)

    # ------------------------------------------------------------------ entry points
    def upscale_tensor(self, lq: torch.Tensor, tile: TileSpec = TileSpec(), record_maps: bool = False,
                       progress: Optional[Callable[[int], None]] = None):
        """(B, 3, H, W) in [0, 1] -> SR float32 (B, 3, H*s, W*s) on ``lq``'s device, and with
        ``record_maps`` the list of K maps (B, E, H, W) (empty for a network without guidance)."""
        b, _, h, w = lq.shape
        stack = torch.cat([lq, lq.new_ones(b, 1, h, w)], 1)
        out = self._tiled(stack, tile, record_maps, progress, None, lq.device)
        out = out if isinstance(out, tuple) else (out, )
        sr = out[0][:, :3]
        return (sr, list(out[1:])) if record_maps else sr

    def upscale_scene(self, scene, sink, tile: TileSpec = TileSpec(), record_maps: bool = False,
                      progress: Optional[Callable[[int], None]] = None, prefetch: bool = True, rows=None) -> int:
        """Stream ``scene`` (``height``, ``width``, ``n_extra``, ``read(y0, y1, x0, x1)`` -> float32
        (3 + E + 1, h, w)) through the tiler into ``sink`` (see :func:`tiled_forward`). Output 0 is
        (1, 3 + E + 1, h*s, w*s): SR, bicubic extra bands, nearest valid channel; 1..: maps. ``rows``: only
        that strip of tile rows (:meth:`strips`). Returns the tile count."""
        h, w = scene.height, scene.width
        windows = self.windows(h, w, tile, rows)
        reader = _Prefetcher(scene.read, windows, depth=2 * tile.batch + 2) if prefetch else None
        lazy = _LazyScene(h, w, 3 + scene.n_extra + 1, reader.get if reader else scene.read)
        try:
            self._tiled(lazy, tile, record_maps, progress, sink, torch.device('cpu'), rows)
        finally:
            if reader is not None:
                reader.close()
        return len(windows)


class _LazyScene:
    """Stands in for the (1, C, H, W) LR tensor in :func:`tiled_forward`: slicing reads the window."""

    def __init__(self, h, w, channels, fetch):
        self.shape = (1, channels, h, w)
        self.device = torch.device('cpu')
        self.fetch = fetch

    def __getitem__(self, idx):
        ys, xs = idx[2], idx[3]
        return torch.from_numpy(self.fetch(ys.start, ys.stop, xs.start, xs.stop))[None]


class _Prefetcher:
    """Reads the tiles in the order the tiler asks for them on a thread, ``depth`` ahead."""

    def __init__(self, read, windows: List[tuple], depth: int):
        self.read, self.windows, self.i = read, windows, 0
        self.q = queue.Queue(maxsize=max(depth, 1))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name='segsr-reader', daemon=True)
        self.thread.start()

    def _work(self):
        for win in self.windows:
            if self.stop.is_set():
                return
            try:
                item = (self.read(*win), None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = (None, e)
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def get(self, y0, y1, x0, x1):
        if self.i >= len(self.windows) or self.windows[self.i] != (y0, y1, x0, x1):
            raise RuntimeError(f'tile {(y0, y1, x0, x1)} requested out of the planned order (bug)')
        self.i += 1
        data, err = self.q.get()
        if err is not None:
            raise err
        return data

    def close(self):
        self.stop.set()
        self.thread.join()
