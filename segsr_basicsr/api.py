"""Python API: load a trained network once, super-resolve arrays and whole raster scenes.

    import segsr_basicsr
    model = segsr_basicsr.load_model('net_g_latest.pth', device='cuda')
    sr = model.upscale(rgb, tile=256)                     # (H, W, 3) uint8/uint16/float -> (H*s, W*s, 3), same dtype
    sr, maps = model.upscale(rgb, return_maps=True)       # + K semantic maps (E, H, W) float32 (guided nets)
    model.upscale_file('scene.tif', 'out/scene_x4.tif')   # any GDAL raster, streamed window by window

Checkpoints written by training carry their ``network_g`` options and scale (key
:data:`META_KEY`, ignored by BasicSR's loader), so no option file is needed; older
checkpoints take ``opt='train.yml'``. Everything goes through the feathered tiler
(:mod:`segsr_basicsr.inference.tiling`); invalid pixels (alpha 0, nodata, ``mask``) are
filled before the network sees them and stay invalid in the output.
"""
import copy
import os
import time
import warnings
from pathlib import Path

import numpy as np

from segsr_basicsr.errors import InferError, SceneWarning
from segsr_basicsr.io.bands import ArrayScene, channels_to_bands, make_radiometry
from segsr_basicsr.io.checkpoint import META_KEY
from segsr_basicsr.inference.engine import Engine
from segsr_basicsr.options import parse_amp, tile_spec
from segsr_basicsr.utils.preflight import check_device, check_file_outputs
from segsr_basicsr.utils.progress import Progress


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
    net, _, _ = build_from_checkpoint(path, opt, param_key)
    if merge_lora and callable(getattr(net, 'merge_lora', None)):  # fold CLIP LoRA into its weights
        net.merge_lora()
    net = net.to(device).eval()
    return SeGSRUpscaler(net, device=device, amp=parse_amp(amp, 'amp'), name=str(path), self_ensemble=self_ensemble)


def build_from_checkpoint(path, opt=None, param_key=None):
    """(network on the CPU, its network_g, the state_dict loaded into it) from a checkpoint, read once."""
    from segsr_basicsr.io.checkpoint import load_checkpoint, pick_state_dict
    ckpt = load_checkpoint(path)
    net_opt, source = _network_options(path, ckpt, opt)
    if isinstance(ckpt, dict):
        ckpt = {k: v for k, v in ckpt.items() if k != META_KEY}
    state, param_key = pick_state_dict(ckpt, param_key, source=str(path), hint='pick one with --param-key')
    return _build_with(net_opt, state, f'{path} [{param_key}]', source), net_opt, state


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


def _build_with(net_opt, state, what, source):
    """network_g built and loaded with ``state``; weights that do not fit are one line naming both."""
    from basicsr.archs import build_network

    from segsr_basicsr.io.checkpoint import load_error_details
    net = build_network(copy.deepcopy(dict(net_opt)))
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        raise InferError(f'{what} does not fit network_g of {source}: {load_error_details(e)}. Use the option '
                         'file the model was trained with.') from None
    if result.missing_keys or result.unexpected_keys:
        raise InferError(f'{what} does not match network_g of {source}: '
                         f'{len(result.missing_keys)} missing key(s) {result.missing_keys[:3]}, '
                         f'{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:3]}. '
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
    return SeGSRUpscaler(OnnxNetwork(path, providers), device='cpu', name=str(path), self_ensemble=self_ensemble)


# ----------------------------------------------------------------------------- the model
class SeGSRUpscaler:
    """A network in eval mode plus everything needed to run it on arrays and rasters of any size.

    A thin layer over :class:`~segsr_basicsr.inference.engine.Engine` (the one inference path): this class
    adds dtype/band/mask handling for arrays and the GeoTIFF writing for rasters.
    """

    def __init__(self, net, device='cpu', amp=None, scale=None, name='network', self_ensemble=False):
        self.engine = Engine(net, check_device(device), amp, self_ensemble, scale)
        self.net, self.device, self.amp, self.name = net, self.engine.device, amp, name
        self.self_ensemble, self.scale = self.engine.self_ensemble, self.engine.scale
        self.multiple = self.engine.multiple

    @property
    def num_maps(self):
        """Semantic maps per image (one per SR unit), 0 for networks without guidance."""
        return self.engine.num_maps

    def count_tiles(self, src, tile, overlap=None, strip=None):
        """Tiles the network runs on raster ``src`` (or its strip ``(k, n)``, see :meth:`upscale_file`)."""
        import rasterio
        with rasterio.open(src) as ds:
            h, w = ds.height, ds.width
        spec = tile_spec({'size': tile, 'overlap': overlap}, 'tile')
        rows = self.engine.strips(h, w, spec, strip[1])[strip[0]][0] if strip else None
        return len(self.engine.windows(h, w, spec, rows))

    # ------------------------------------------------------------------ arrays
    def upscale(self, img, tile=256, overlap=None, batch=1, max_value=None, mask=None, return_maps=False,
                progress=None):
        """Super-resolve an in-memory image.

        ``img``: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray; uint8 (÷255), float (÷1, or ÷``max_value``)
        or uint16/int16 with ``max_value`` (e.g. 65535, 4095). Returns the same layout and dtype at
        (H*s, W*s); alpha is upsampled by nearest, pixels with alpha 0 or ``mask`` False are filled
        before the network and come back as 0. ``tile=None`` runs the whole image at once.
        With ``return_maps``: ``(sr, [K maps (E, H, W) float32])``.
        """
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

        spec = tile_spec({'size': tile, 'overlap': overlap, 'batch': batch}, 'tile')
        self.engine.upscale_scene(scene, sink, spec, return_maps, progress, prefetch=False)
        return (out, maps) if return_maps else out

    def upscale_image_file(self, src, dst, maps_dst=(), tile=None, overlap=None, batch=1, image_kw=None,
                           progress=True):
        """An image read whole (PNG, JPEG, ...; 8-bit rules of io.images) -> ``dst`` (PNG/TIFF, written
        atomically), and heat-map overlays to ``maps_dst``. Returns the LR (width, height)."""
        from segsr_basicsr.io.images import read_image, write_image
        from segsr_basicsr.results.heatmaps import semantic_overlays
        img = read_image(src, **(image_kw or {}))
        h, w = img.shape[:2]
        bar = Progress(len(self.engine.windows(h, w, tile_spec({'size': tile, 'overlap': overlap}, 'tile'))),
                       Path(src).name, 'tiles', megapixels=h * w / 1e6,
                       every=5.0, enabled=bool(progress))
        try:
            res = self.upscale(img[..., ::-1], tile=tile, overlap=overlap, batch=batch,
                               return_maps=bool(maps_dst), progress=bar)
        finally:
            bar.close()
        sr, maps = res if maps_dst else (res, [])
        sr = np.ascontiguousarray(sr[..., ::-1])
        write_image(dst, sr)
        for path, overlay in zip(maps_dst, semantic_overlays(sr, maps)):
            write_image(path, overlay)
        return w, h

    def upscale_files(self, paths, out_dir, tile=256, overlap=None, batch=1, overwrite=False, progress=False,
                      **raster_kw):
        """Many inputs (files or folders) into ``out_dir``, as ``segsr-infer`` names them, doing only what is
        missing (done-records); under an initialised process group each rank takes its share (by pixels).
        Returns {'done': [(src, dst)], 'skipped': n}."""
        from segsr_basicsr.utils import jobs
        files = jobs.list_inputs(paths)
        plan = jobs.plan_outputs(files, out_dir, self.scale, False, 0)
        options = dict(raster_kw, tile=tile, overlap=overlap, batch=batch, self_ensemble=self.self_ensemble)
        records = jobs.DoneRecords(out_dir, jobs.fingerprint(self.name, options))
        def work(unit, outs, _job):
            if jobs.streams(unit.src):
                self.upscale_file(unit.src, outs[0], tile=tile, overlap=overlap, batch=batch, progress=progress,
                                  band=unit.band, **raster_kw)
            else:
                self.upscale_image_file(unit.src, outs[0], tile=tile, overlap=overlap, batch=batch, progress=progress)

        def assemble(src, out, _maps, parts, _map_parts):
            self.assemble_file(src, parts, out, **{k: v for k, v in raster_kw.items() if k != 'maps_dst'})

        mine, _, skipped = jobs.run_share(*jobs.sort_out(plan, records, overwrite), records, out_dir, work, assemble,
                                          lambda src, n: self.scene_strips(src, n, tile, overlap), progress=progress,
                                          overwrite=overwrite)
        done = sorted({(u.src, u.out) for u in mine})
        return {'done': done, 'skipped': len(skipped)}

    # ------------------------------------------------------------------ rasters
    def upscale_file(self, src, dst, tile=256, overlap=None, batch=1, bands=None, max_value=None, stretch=None,
                     cog=False, no_geo=False, maps_dst=None, progress=True, strip=None):
        """Super-resolve a GDAL raster (GeoTIFF, COG, JP2, VRT, ...) into a tiled GeoTIFF ``dst``, streaming.

        Memory is set by the tile and the scene width. ``dst`` appears only when complete (temporary
        sibling, then rename). ``maps_dst``: also write the semantic maps as a float32 GeoTIFF on the
        LR grid (one band per map channel and SR unit). ``strip=(k, n)``: only strip k of the scene's n
        strips of tile rows, as a part for :meth:`assemble_file` (how ranks share one scene). Returns a
        dict with sizes, tiles, seconds and the valid fraction. Warnings (all-nodata scene, dropped
        metadata) are :class:`SceneWarning`.
        """
        from segsr_basicsr.io import raster as R

        src, dst = Path(src), Path(dst)
        t0 = time.perf_counter()
        check_file_outputs(src, [dst, *(maps_dst or [])])
        scene = R.RasterScene(src, bands, max_value, stretch)
        try:
            with R.gdal_env():
                stats = self._stream_scene(scene, dst, tile_spec({'size': tile, 'overlap': overlap, 'batch': batch},
                                                                 'tile'), cog, no_geo, maps_dst, progress, strip)
        finally:
            scene.close()
        if stats['valid_pixels'] == 0 and band is None:
            warnings.warn(f'{src}: every pixel is nodata/transparent; wrote it through at x{self.scale} without '
                          'running the network.', SceneWarning, stacklevel=2)
        stats.update(seconds=time.perf_counter() - t0, src=str(src), dst=str(dst))
        return stats

    def scene_strips(self, src, parts, tile=256, overlap=None):
        """Up to ``parts`` strips of tile rows of raster ``src`` (see :meth:`upscale_file`'s ``band``)."""
        import rasterio
        with rasterio.open(src) as ds:
            h, w = ds.height, ds.width
        return len(self.engine.strips(h, w, tile_spec({'size': tile, 'overlap': overlap}, 'tile'), parts))

    def assemble_file(self, src, parts, dst, bands=None, max_value=None, stretch=None, cog=False, no_geo=False,
                      map_parts=(), maps_dst=()):
        """``dst`` (and ``maps_dst``) from the band parts :meth:`upscale_file` wrote, in band order: the same
        file one :meth:`upscale_file` call writes, copied strip by strip."""
        from segsr_basicsr.io import raster as R
        from segsr_basicsr.inference.scene_files import assemble
        check_file_outputs(src, [dst, *maps_dst])
        scene = R.RasterScene(src, bands, max_value, stretch)
        try:
            assemble(scene, parts, dst, self.scale, cog, no_geo, map_parts, maps_dst)
        finally:
            scene.close()

    def _stream_scene(self, scene, dst, spec, cog, no_geo, maps_dst, progress, strip):
        from segsr_basicsr.io.atomic import temp_sibling
        from segsr_basicsr.io import raster as R
        from segsr_basicsr.inference.scene_files import SceneFiles, write_geotiff

        s = self.scale
        for w in scene.output_profile(s, no_geo)[1]['warnings'] if not strip or strip[0] == 0 else []:
            warnings.warn(w, SceneWarning, stacklevel=3)
        maps_dst = [Path(p) for p in (maps_dst or [])]
        if maps_dst and len(maps_dst) != self.num_maps:
            raise InferError(f'{self.name}: has {self.num_maps} semantic map(s) (SR units), got {len(maps_dst)} '
                             'map outputs.')
        rows, lr_rows = self.engine.strips(scene.height, scene.width, spec, strip[1])[strip[0]] if strip else (None, None)
        n_tiles = len(self.engine.windows(scene.height, scene.width, spec, rows))
        bar = progress if callable(progress) else Progress(
            n_tiles, scene.path.name, 'tiles', every=5.0, megapixels=scene.height * scene.width / 1e6,
            enabled=bool(progress))
        maps_tmp = [temp_sibling(p, keep_suffix=True) for p in maps_dst]
        counts = {'valid_pixels': 0}

        def fill(target):
            files = SceneFiles(scene, target, s, cog and not strip, no_geo, list(zip(maps_tmp, maps_dst)), str(dst),
                               lr_rows)
            try:
                self.engine.upscale_scene(scene, files.sink, spec, bool(maps_dst), bar, rows=rows)
                files.close()
            except BaseException:
                files.abort()
                raise
            counts['valid_pixels'] = files.valid_pixels

        try:
            write_geotiff(dst, cog and not strip, fill)
            for tmp, final in zip(maps_tmp, maps_dst):
                os.replace(tmp, final)
        finally:
            R.remove_quietly(*maps_tmp)
            if not callable(progress):
                bar.close()
        counts.update(tiles=n_tiles, lr_size=(scene.width, scene.height), lr_rows=lr_rows or (0, scene.height),
                      sr_size=(scene.width * s, scene.height * s))
        return counts
