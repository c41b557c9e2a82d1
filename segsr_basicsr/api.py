"""Python API: load a trained network once, super-resolve arrays and whole raster scenes.

    import segsr_basicsr
    model = segsr_basicsr.load_model('net_g_latest.pth', device='cuda')
    sr = model.upscale(rgb, tile=256)                     # (H, W, 3) uint8/uint16/float -> (H*s, W*s, 3), same dtype
    sr, maps = model.upscale(rgb, return_maps=True)       # + K semantic maps (E, H, W) float32 (guided nets)
    model.upscale_file('scene.tif', 'out/scene_x4.tif')   # any GDAL raster, streamed window by window

Checkpoints written by training carry their ``network_g`` options and scale (key
:data:`META_KEY`, ignored by BasicSR's loader), so no option file is needed; older
checkpoints take ``opt='train.yml'``. Everything goes through the feathered tiler
(:mod:`segsr_basicsr.utils.tiling`); invalid pixels (alpha 0, nodata, ``mask``) are
filled before the network sees them and stay invalid in the output.
"""
import copy
import math
import queue
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from segsr_basicsr.errors import InferError

#: extra checkpoint entry: {'network_g': {...}, 'scale': s}; BasicSR's loaders read only params*
META_KEY = 'segsr_network'


class SceneWarning(UserWarning):
    """Something about a scene the user should know (all nodata, metadata dropped)."""


# ----------------------------------------------------------------------------- checkpoints
def _plain(obj):
    """YAML/OrderedDict option trees -> dicts/lists/scalars that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def network_metadata(opt) -> dict:
    """``{META_KEY: {network_g, scale}}`` to add to a saved net_g checkpoint (self-describing)."""
    net_opt = _plain(opt['network_g'])
    scale = opt.get('scale') or net_opt.get('upscale')
    return {META_KEY: {'network_g': net_opt, 'scale': int(scale) if scale else None}}


def load_model(path, device='auto', opt=None, param_key=None, amp=None, self_ensemble=False) -> 'SeGSRUpscaler':
    """Checkpoint (+ option file for checkpoints without :data:`META_KEY`) -> :class:`SeGSRUpscaler`.

    ``device``: 'auto' | 'cpu' | 'cuda[:N]' | torch.device; ``param_key``: params_ema (default when
    present) or params; ``amp``: None | 'bf16' | 'fp16' autocast; ``self_ensemble``: average the 8
    flips/rotations of every tile, each through the whole network (8x the time).
    """
    from basicsr.archs import build_network

    from segsr_basicsr.io.checkpoint import load_checkpoint, pick_state_dict
    from segsr_basicsr.models.segsr_model import parse_amp
    from segsr_basicsr.utils.options import load_yaml

    device = resolve_device(device)
    ckpt = load_checkpoint(path)
    meta = ckpt.get(META_KEY) if isinstance(ckpt, dict) else None
    if opt is not None:
        opt_dict = load_yaml(opt) if isinstance(opt, (str, Path)) else opt
        if 'network_g' not in opt_dict:
            raise InferError(f'{opt}: has no network_g section; use the option file the model was trained with.')
        net_opt, source = opt_dict['network_g'], str(opt)
    elif meta is not None:
        net_opt, source = meta['network_g'], f'{path} (saved network_g)'
    else:
        raise InferError(f'{path}: does not say which network it holds (saved before checkpoints carried their '
                         'network_g); pass the training option file: -opt train.yml (API: load_model(path, '
                         "opt='train.yml')).")
    if isinstance(ckpt, dict):
        ckpt = {k: v for k, v in ckpt.items() if k != META_KEY}
    state, param_key = pick_state_dict(ckpt, param_key, source=str(path), hint='pick one with --param-key')
    net = build_network(copy.deepcopy(dict(net_opt)))
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InferError(f'{path} [{param_key}] does not match network_g of {source}: '
                         f'{len(result.missing_keys)} missing key(s) {result.missing_keys[:3]}, '
                         f'{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:3]}. '
                         'Use the option file the model was trained with.')
    if callable(getattr(net, 'merge_lora', None)):  # GuidedBackbone: fold CLIP LoRA into its weights
        net.merge_lora()
    net = net.to(device).eval()
    return SeGSRUpscaler(net, device=device, amp=parse_amp(amp, 'amp'), name=str(path), self_ensemble=self_ensemble)


def resolve_device(name):
    if isinstance(name, torch.device):
        return name
    if name in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if str(name).startswith('cuda') and not torch.cuda.is_available():
        raise InferError(f'--device {name}: CUDA is not available here; use --device cpu (or auto).')
    return torch.device(name)


def infer_scale(net, device):
    """Scale of a plain BasicSR arch without ``upscale``: run it once on a small input."""
    with torch.no_grad():
        return net(torch.zeros(1, 3, 16, 16, device=device)).shape[-1] // 16


# ----------------------------------------------------------------------------- progress
class Progress:
    """Tiles and megapixels done, rate and ETA: a tqdm bar on a terminal, else a plain line every ``every`` s."""

    def __init__(self, total_tiles, lr_pixels, desc, every=5.0, stream=None, enabled=True):
        self.total, self.mp, self.desc, self.every = total_tiles, lr_pixels / 1e6, desc, every
        self.stream = stream or sys.stderr
        self.done, self.t0, self.last = 0, time.monotonic(), time.monotonic()
        self.bar = None
        self.enabled = enabled
        if enabled and getattr(self.stream, 'isatty', lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total_tiles, unit='tile', desc=desc, file=self.stream, dynamic_ncols=True)

    def _status(self):
        el = time.monotonic() - self.t0
        mp = self.mp * self.done / max(self.total, 1)
        rate = mp / el if el > 0 else 0.0
        eta = (self.total - self.done) * el / self.done if self.done else float('nan')
        eta_s = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
        return mp, rate, eta_s

    def __call__(self, n):
        self.done += n
        if not self.enabled:
            return
        mp, rate, eta = self._status()
        if self.bar is not None:
            self.bar.set_postfix_str(f'{mp:.1f}/{self.mp:.1f} MP, {rate:.2f} MP/s', refresh=False)
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(f'{self.desc}: {self.done}/{self.total} tiles, {mp:.1f}/{self.mp:.1f} MP, {rate:.2f} MP/s, '
                  f'ETA {eta}', file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- threads
class _Prefetcher:
    """Reads the tiles in the order the tiler asks for them on a thread, ``depth`` ahead."""

    def __init__(self, read, windows, depth):
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


class _Writer:
    """Runs ``fn(*args)`` jobs in order on a thread (GDAL compresses and writes while the network computes)."""

    def __init__(self, depth=8):
        self.q = queue.Queue(maxsize=depth)
        self.error = None
        self.thread = threading.Thread(target=self._work, name='segsr-writer', daemon=True)
        self.thread.start()

    def _work(self):
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    job[0](*job[1:])
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self.error = e

    def submit(self, *job):
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class _LazyScene:
    """Stands in for the (1, C, H, W) LR tensor in :func:`tiled_forward`: slicing reads the window."""

    def __init__(self, h, w, channels, fetch):
        self.shape = (1, channels, h, w)
        self.device = torch.device('cpu')
        self.fetch = fetch

    def __getitem__(self, idx):
        ys, xs = idx[2], idx[3]
        return torch.from_numpy(self.fetch(ys.start, ys.stop, xs.start, xs.stop))[None]


def tile_windows(h, w, tile, overlap, multiple):
    """(y0, y1, x0, x1) of every tile in the order :func:`tiled_forward` visits them."""
    from segsr_basicsr.utils.tiling import tile_starts
    tile = math.ceil(tile / multiple) * multiple
    th, tw = min(tile, h), min(tile, w)
    return [(y, y + th, x, x + tw) for y in tile_starts(h, th, overlap, multiple)
            for x in tile_starts(w, tw, overlap, multiple)]


# ----------------------------------------------------------------------------- the model
class SeGSRUpscaler:
    """A network in eval mode plus everything needed to run it on arrays and rasters of any size."""

    def __init__(self, net, device='cpu', amp=None, scale=None, name='network', self_ensemble=False):
        self.net, self.device, self.amp, self.name = net, resolve_device(device), amp, name
        self.self_ensemble = bool(self_ensemble)
        self.scale = scale or getattr(net, 'upscale', None) or infer_scale(net, self.device)
        self.multiple = getattr(net, 'size_multiple', 1)

    @property
    def num_maps(self):
        """Semantic maps per image (one per SR unit), 0 for networks without guidance."""
        if getattr(self.net, 'guidance', None) is None or not hasattr(self.net, 'record_semantic_maps'):
            return 0
        return len(self.net.sr_units)

    # ------------------------------------------------------------------ engine
    def _run(self, scene, tile, overlap, batch, sink, record_maps=False, progress=None, prefetch=True):
        """Stream ``scene`` (a :class:`~segsr_basicsr.io.raster.ChannelScene`) through the tiler into ``sink``.

        Output 0 handed to the sink: float32 (1, 3 + E + 1, h*s, w*s) = SR in [0, 1]-units, bicubic
        extra bands, nearest-upsampled alpha/valid channel; outputs 1.. : semantic maps (1, E, h, w).
        Tiles without a valid pixel are not run through the network. Returns the tile count.
        """
        from segsr_basicsr.models.segsr_model import autocast, forward_padded
        from segsr_basicsr.utils.self_ensemble import self_ensemble
        from segsr_basicsr.utils.tiling import tiled_forward

        h, w, s, net = scene.height, scene.width, self.scale, self.net
        if tile:
            size, ov = int(tile), min(int(overlap), int(tile) - 1)
        else:
            size, ov = max(h, w), 0
        windows = tile_windows(h, w, size, ov, self.multiple)
        channels = 3 + scene.n_extra + 1
        map_channels = []

        def fn(t):
            n, _, th, tw = t.shape
            run = (t[:, -1] > 0).flatten(1).any(1)
            if record_maps and not map_channels:
                run[:] = True  # the first batch tells the maps' shape
            every = bool(run.all())
            if every or bool(run.any()):
                x = t[:, :3] if every else t[run, :3]
                with autocast(self.device, self.amp):
                    if self.self_ensemble:  # per tile: the 8 views of the tile, each through the whole net
                        res = self_ensemble(lambda v: forward_padded(net, v, record_maps), x)
                    else:
                        res = forward_padded(net, x, record_maps)
                res = res if isinstance(res, tuple) else (res, )
                if record_maps and not map_channels:
                    map_channels.extend(m.shape[1] for m in res[1:])
                if every:
                    sr, maps = res[0].float(), list(res[1:])
                else:  # tiles without a valid pixel stay zero
                    sr = t.new_zeros(n, 3, th * s, tw * s)
                    sr[run] = res[0].float()
                    maps = [m.new_zeros(n, *m.shape[1:]).index_put_((run, ), m) for m in res[1:]]
            else:
                sr = t.new_zeros(n, 3, th * s, tw * s)
                maps = [t.new_zeros(n, c, th, tw) for c in map_channels]
            parts = [sr]
            if channels > 4:
                parts.append(F.interpolate(t[:, 3:-1], scale_factor=s, mode='bicubic', align_corners=False))
            parts.append(F.interpolate(t[:, -1:], scale_factor=s, mode='nearest'))
            out = torch.cat(parts, 1)
            return (out, *maps) if record_maps else out

        source = _Prefetcher(scene.read, windows, depth=2 * batch + 2) if prefetch else None
        lazy = _LazyScene(h, w, channels, source.get if source else scene.read)
        if record_maps:
            net.record_semantic_maps = True
        try:
            with torch.no_grad():
                tiled_forward(fn, lazy, size, ov, multiple=self.multiple, batch=batch, device=self.device,
                              out_device=torch.device('cpu'), sink=sink, progress=progress)
        finally:
            if source is not None:
                source.close()
            if record_maps:
                net.record_semantic_maps = False
                net.semantic_maps = None
        return len(windows)

    def count_tiles(self, h, w, tile, overlap):
        if not tile:
            return 1
        return len(tile_windows(h, w, tile, min(overlap, tile - 1), self.multiple))

    # ------------------------------------------------------------------ arrays
    def upscale(self, img, tile=256, overlap=32, batch=1, max_value=None, mask=None, return_maps=False,
                progress=None):
        """Super-resolve an in-memory image.

        ``img``: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray; uint8 (÷255), float (÷1, or ÷``max_value``)
        or uint16/int16 with ``max_value`` (e.g. 65535, 4095). Returns the same layout and dtype at
        (H*s, W*s); alpha is upsampled by nearest, pixels with alpha 0 or ``mask`` False are filled
        before the network and come back as 0. ``tile=None`` runs the whole image at once.
        With ``return_maps``: ``(sr, [K maps (E, H, W) float32])``.
        """
        from segsr_basicsr.io.raster import ArrayScene, channels_to_bands, make_radiometry
        img = np.asarray(img)
        if max_value is None and img.dtype.kind == 'f':
            max_value = 1.0
        rad = make_radiometry('image', img.dtype, max_value)
        if mask is not None and np.asarray(mask).shape != img.shape[:2]:
            raise InferError(f'mask shape {np.asarray(mask).shape} does not match the image {img.shape[:2]}.')
        scene = ArrayScene(img, rad, None if mask is None else np.asarray(mask, bool))
        s = self.scale
        out = np.empty((img.shape[0] * s, img.shape[1] * s, *img.shape[2:]), img.dtype)
        view = out if out.ndim == 3 else out[..., None]
        maps = []
        if return_maps and not self.num_maps:
            raise InferError(f'{self.name}: this network has no semantic guidance, so there are no maps.')

        def sink(i, r0, r1, c0, c1, block):
            if i == 0:
                data, _ = channels_to_bands(block[0].numpy(), scene.plan, rad, img.dtype,
                                            nodata=0 if mask is not None else None)
                view[r0:r1, c0:c1] = np.moveaxis(data, 0, -1)
            else:
                if len(maps) < i:
                    maps.append(np.empty((block.shape[1], img.shape[0], img.shape[1]), np.float32))
                maps[i - 1][:, r0:r1, c0:c1] = block[0].numpy()

        self._run(scene, tile, overlap, batch, sink, return_maps, progress, prefetch=False)
        return (out, maps) if return_maps else out

    # ------------------------------------------------------------------ rasters
    def upscale_file(self, src, dst, tile=256, overlap=32, batch=1, bands=None, max_value=None, stretch=None,
                     cog=False, no_geo=False, maps_dst=None, progress=True):
        """Super-resolve a GDAL raster (GeoTIFF, COG, JP2, VRT, ...) into a tiled GeoTIFF ``dst``, streaming.

        Memory is set by the tile and the scene width. ``dst`` appears only when complete (temporary
        sibling, then rename). ``maps_dst``: also write the semantic maps as a float32 GeoTIFF on the
        LR grid (one band per map channel and SR unit). Returns a dict with sizes, tiles, seconds and the
        valid fraction. Warnings (all-nodata scene, dropped metadata) are :class:`SceneWarning`.
        """
        from segsr_basicsr.io import raster as R

        src, dst = Path(src), Path(dst)
        t0 = time.perf_counter()
        scene = R.RasterScene(src, bands, max_value, stretch)
        try:
            with R.gdal_env():
                stats = self._stream_scene(scene, dst, tile, overlap, batch, cog, no_geo, maps_dst, progress)
        finally:
            scene.close()
        if stats['valid_pixels'] == 0:
            warnings.warn(f'{src}: every pixel is nodata/transparent; wrote it through at x{self.scale} without '
                          'running the network.', SceneWarning, stacklevel=2)
        stats.update(seconds=time.perf_counter() - t0, src=str(src), dst=str(dst))
        return stats

    def _stream_scene(self, scene, dst, tile, overlap, batch, cog, no_geo, maps_dst, progress):
        import os

        from segsr_basicsr.io import raster as R
        from segsr_basicsr.io.atomic import atomic_write, temp_sibling

        s = self.scale
        profile, meta = scene.output_profile(s, no_geo)
        for w in meta['warnings']:
            warnings.warn(w, SceneWarning, stacklevel=3)
        counts = {'valid_pixels': 0}
        maps_dst = [Path(p) for p in (maps_dst or [])]
        record = bool(maps_dst)
        if record and len(maps_dst) != self.num_maps:
            raise InferError(f'{self.name}: has {self.num_maps} semantic map(s) (SR units), got {len(maps_dst)} '
                             'map outputs.')
        n_tiles = self.count_tiles(scene.height, scene.width, tile, overlap)
        bar = None if callable(progress) else Progress(n_tiles, scene.height * scene.width, scene.path.name,
                                                       enabled=bool(progress))
        maps_tmp = [temp_sibling(p, keep_suffix=True) for p in maps_dst]

        def write(tmp):
            target = Path(f'{tmp}.gtiff.tmp') if cog else Path(tmp)
            writer = R.BlockWriter(target, profile, meta, block=512 if cog else R.BLOCK, mask=scene.internal_mask,
                                   compress='zstd' if cog else 'deflate', name=str(dst))
            maps_writers = {}
            worker = _Writer()
            try:
                def sink(i, r0, r1, c0, c1, block):
                    if i == 0:
                        data, valid = R.channels_to_bands(block[0].numpy(), scene.plan, scene.rad, scene.dtype,
                                                          scene.nodata)
                        counts['valid_pixels'] += int(valid.sum())
                        worker.submit(writer.add, r0, c0, data, (valid * np.uint8(255)) if writer.mask else None)
                    else:
                        if i not in maps_writers:
                            prof, _ = scene.output_profile(1, no_geo)
                            prof.update(count=block.shape[1], dtype='float32', nodata=None)
                            prof.pop('rpcs', None)
                            maps_writers[i] = R.BlockWriter(maps_tmp[i - 1], prof, {}, name=str(maps_dst[i - 1]))
                        worker.submit(maps_writers[i].add, r0, c0, block[0].numpy().copy())

                self._run(scene, tile, overlap, batch, sink, record, progress if callable(progress) else bar)
                worker.close()
                writer.close()
                for m in maps_writers.values():
                    m.close()
            except BaseException:
                if worker.error is None:
                    worker.error = RuntimeError('aborted')
                try:
                    worker.close()
                except BaseException:  # noqa: BLE001 - the first error is the one to report
                    pass
                for wr in [writer, *maps_writers.values()]:
                    wr.abort()
                R.remove_quietly(target)
                raise
            if cog:
                try:
                    R.translate_to_cog(target, tmp)
                finally:
                    R.remove_quietly(target)

        try:
            atomic_write(dst, write, durable=True)
            for tmp, final in zip(maps_tmp, maps_dst):
                os.replace(tmp, final)
        finally:
            R.remove_quietly(*maps_tmp)
            if bar is not None:
                bar.close()
        counts.update(tiles=n_tiles, lr_size=(scene.width, scene.height),
                      sr_size=(scene.width * s, scene.height * s))
        return counts
