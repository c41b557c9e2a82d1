"""The public upscaler: a loaded network and everything needed to run it on arrays, image files, rasters of
any size, and batches of them (:meth:`SeGSRUpscaler.upscale_batch`, the one batch path ``segsr-infer`` calls).

A thin layer over :class:`~segsr_basicsr.inference.engine.Engine` (the one inference path): this class adds
dtype/band/mask handling for arrays and the GeoTIFF writing for rasters. ``load_model``
(:mod:`segsr_basicsr.api`) builds it; a plain module can be wrapped directly.
"""
import os
import time
import warnings
from pathlib import Path

import numpy as np

from segsr_basicsr.errors import InferError, SceneWarning
from segsr_basicsr.inference.engine import Engine
from segsr_basicsr.inference.records import ModelSettings, OutputSettings
from segsr_basicsr.io.bands import ArrayScene, channels_to_bands, make_radiometry
from segsr_basicsr.options import parse_amp, tile_spec
from segsr_basicsr.utils.preflight import check_device, check_file_outputs
from segsr_basicsr.utils.progress import Progress


def _tile_spec(tile, overlap, batch):
    """A TileSpec as given, or one parsed from the API's ``tile``/``overlap``/``batch`` arguments."""
    from segsr_basicsr.options import TileSpec
    return tile if isinstance(tile, TileSpec) else tile_spec({'size': tile, 'overlap': overlap, 'batch': batch}, 'tile')


def _tuple(value):
    return None if value is None else tuple(value)


class SeGSRUpscaler:
    """A network in eval mode plus everything needed to run it on arrays and rasters of any size.

    A thin layer over :class:`~segsr_basicsr.inference.engine.Engine` (the one inference path): this class
    adds dtype/band/mask handling for arrays and the GeoTIFF writing for rasters.
    """

    def __init__(self, net, device='cpu', amp=None, scale=None, name='network', self_ensemble=False,
                 settings: ModelSettings = None, info=None):
        """``settings`` (:func:`~segsr_basicsr.api.load_model` fills them) say how the network was made and
        are the only source of ``amp`` and ``self_ensemble``; without them the arguments make them.
        ``info``: the network's :class:`~segsr_basicsr.inference.network.NetworkInfo` (else described once)."""
        self.settings = settings or ModelSettings(str(name), amp=amp, self_ensemble=bool(self_ensemble))
        self.engine = Engine(net, check_device(device), parse_amp(self.settings.amp, 'amp'),
                             self.settings.self_ensemble, scale, info)
        self.net, self.device, self.name, self.info = net, self.engine.device, name, self.engine.info
        self.scale, self.multiple, self.num_maps = self.info.scale, self.info.multiple, self.info.num_maps

    def tile(self, tile='auto', overlap=None, batch=1, streamed=False):
        """The one tile check of every method: an int, 'auto', 0/None (whole image) or a TileSpec -> the
        TileSpec this network runs for a streamed raster or an image read whole."""
        return self.engine.tile_for(_tile_spec(tile, overlap, batch), streamed=streamed)

    def count_tiles(self, src, tile='auto', overlap=None, strip=None):
        """Tiles the network runs on raster ``src`` (or its strip ``(k, n)``, see :meth:`upscale_raster`)."""
        import rasterio
        with rasterio.open(src) as ds:
            h, w = ds.height, ds.width
        spec = self.tile(tile, overlap, streamed=True)
        rows = self.engine.strips(h, w, spec, strip[1])[strip[0]][0] if strip else None
        return len(self.engine.windows(h, w, spec, rows))

    # ------------------------------------------------------------------ arrays
    def upscale(self, img, tile='auto', overlap=None, batch=1, max_value=None, mask=None, return_maps=False,
                progress=None):
        """Super-resolve an in-memory image.

        ``img``: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray; uint8 (÷255), float (÷1, or ÷``max_value``)
        or uint16/int16 with ``max_value`` (e.g. 65535, 4095). Returns the same layout and dtype at
        (H*s, W*s); alpha is upsampled by nearest, pixels with alpha 0 or ``mask`` False are filled
        before the network and come back as 0. ``tile`` 'auto' or None runs the whole image at once.
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

        spec = self.tile(tile, overlap, batch)
        self.engine.upscale_scene(scene, sink, spec, return_maps, progress, prefetch=False)
        return (out, maps) if return_maps else out

    def upscale_image_file(self, src, dst, maps_dst=(), tile='auto', overlap=None, batch=1, image_kw=None,
                           progress=True):
        """An image read whole (PNG, JPEG, ...; 8-bit rules of io.images) -> ``dst`` (PNG/TIFF, written
        atomically), and heat-map overlays to ``maps_dst``. Returns the LR (width, height)."""
        from segsr_basicsr.io.images import read_image, write_image
        from segsr_basicsr.results.heatmaps import semantic_overlays
        img = read_image(src, **(image_kw or {}))
        h, w = img.shape[:2]
        bar = Progress(len(self.engine.windows(h, w, self.tile(tile, overlap))),
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

    def upscale_batch(self, inputs, out_dir, tile='auto', overlap=None, batch=1, save_maps=False, bands=None,
                      max_value=None, gray='convert', stretch=None, cog=False, no_geo=False, overwrite=False,
                      split=True, progress=False, log=None, quality=False):
        """The batch job ``segsr-infer`` runs: inputs (files, folders) into ``out_dir`` with its names, doing
        only what is missing (done-records of :attr:`settings` and these output settings), each rank of an
        initialised process group taking its share by pixels (``split``: a large raster shared in strips).
        ``log``: called with one line per finished input. ``quality`` (True, or 'map' for the error map too):
        each output's LR-consistency beside it (:func:`~segsr_basicsr.inference.scene_quality.read_quality`).
        Returns {'done': [(src, dst)], 'skipped': n, 'scenes': this rank's scenes, 'megapixels': its LR MP,
        'quality': {output: LR-consistency in dB} of this rank's scenes}."""
        from segsr_basicsr.inference.batch import run_batch
        from segsr_basicsr.inference.scene_quality import quality_mode
        spec = _tile_spec(tile, overlap, batch)
        for streamed in (False, True):  # a tile this network cannot run is refused before any work
            self.engine.tile_for(spec, streamed=streamed)
        out = OutputSettings(spec, bool(save_maps), _tuple(bands), max_value, gray, _tuple(stretch), bool(cog),
                             bool(no_geo), quality_mode(quality))
        return run_batch(self, inputs, out_dir, out, overwrite=overwrite, split=split, progress=progress, log=log)

    # ------------------------------------------------------------------ rasters
    def upscale_raster(self, src, dst, tile='auto', overlap=None, batch=1, bands=None, max_value=None, stretch=None,
                     cog=False, no_geo=False, maps_dst=None, progress=True, strip=None, quality=False, quality_map=None):
        """Super-resolve a GDAL raster (GeoTIFF, COG, JP2, VRT, ...) into a tiled GeoTIFF ``dst``, streaming.

        Memory is set by the tile and the scene width. ``dst`` appears only when complete (temporary
        sibling, then rename). ``maps_dst``: also write the semantic maps as a float32 GeoTIFF on the
        LR grid (one band per map channel and SR unit). ``strip=(k, n)``: only strip k of the scene's n
        strips of tile rows, as a part for :meth:`assemble_raster` (how ranks share one scene). Returns a
        dict with sizes, tiles, seconds and the valid fraction. Warnings (all-nodata scene, dropped
        metadata) are :class:`SceneWarning`. ``quality`` (not for a strip: score the assembled output with
        :meth:`score_raster`): ``stats['quality']`` holds the LR-consistency figures of the output, computed
        from the blocks as they are written (:mod:`~segsr_basicsr.inference.scene_quality`), and
        ``quality_map`` (a path) gets its error map on the LR grid.
        """
        from segsr_basicsr.io import raster as R

        src, dst = Path(src), Path(dst)
        t0 = time.perf_counter()
        check_file_outputs(src, [dst, *(maps_dst or []), *([quality_map] if quality_map else [])])
        if strip is not None and (quality or quality_map):
            raise InferError('quality: a strip is scored after assembly (score_raster on the assembled output).')
        scene = R.RasterScene(src, bands, max_value, stretch)
        lr = R.RasterScene(src, bands, max_value, stretch) if quality or quality_map else None
        try:
            with R.gdal_env():
                stats = self._stream_scene(scene, dst, self.tile(tile, overlap, batch, streamed=True), cog, no_geo,
                                           maps_dst, progress, strip, (lr, quality_map))
        finally:
            scene.close()
            if lr is not None:
                lr.close()
        if stats['valid_pixels'] == 0 and strip is None:
            warnings.warn(f'{src}: every pixel is nodata/transparent; wrote it through at x{self.scale} without '
                          'running the network.', SceneWarning, stacklevel=2)
        stats.update(seconds=time.perf_counter() - t0, src=str(src), dst=str(dst))
        return stats

    def scene_strips(self, src, parts, tile='auto', overlap=None):
        """Up to ``parts`` strips of tile rows of raster ``src`` (see :meth:`upscale_raster`'s ``strip``)."""
        import rasterio
        with rasterio.open(src) as ds:
            h, w = ds.height, ds.width
        return len(self.engine.strips(h, w, self.tile(tile, overlap, streamed=True), parts))

    def assemble_raster(self, src, parts, dst, bands=None, max_value=None, stretch=None, cog=False, no_geo=False,
                      map_parts=(), maps_dst=()):
        """``dst`` (and ``maps_dst``) from the strip parts :meth:`upscale_raster` wrote, in strip order: the same
        file one :meth:`upscale_raster` call writes, copied strip by strip."""
        from segsr_basicsr.io import raster as R
        from segsr_basicsr.inference.scene_files import assemble
        check_file_outputs(src, [dst, *maps_dst])
        scene = R.RasterScene(src, bands, max_value, stretch)
        try:
            assemble(scene, parts, dst, self.scale, cog, no_geo, map_parts, maps_dst)
        finally:
            scene.close()

    def score_raster(self, src, sr_path, quality_map=None, bands=None, max_value=None, stretch=None, no_geo=False):
        """LR-consistency figures of an output ``sr_path`` this network made from raster ``src`` (and the error
        map at ``quality_map``), read in blocks: how a scene assembled from strips is scored."""
        from segsr_basicsr.io import raster as R
        from segsr_basicsr.inference.scene_quality import score_raster_file
        if quality_map:
            check_file_outputs(src, [quality_map])
        lr = R.RasterScene(src, bands, max_value, stretch)
        try:
            with R.gdal_env():
                return score_raster_file(lr, sr_path, self.scale, quality_map, no_geo)
        finally:
            lr.close()

    def _stream_scene(self, scene, dst, spec, cog, no_geo, maps_dst, progress, strip, quality=(None, None)):
        from segsr_basicsr.io.atomic import temp_sibling
        from segsr_basicsr.io import raster as R
        from segsr_basicsr.inference.scene_files import SceneFiles, write_geotiff
        from segsr_basicsr.inference.scene_quality import open_map, raster_stream

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
        lr, quality_map = quality
        renames = list(zip(maps_tmp, maps_dst)) + ([(temp_sibling(quality_map, keep_suffix=True), quality_map)]
                                                   if quality_map else [])
        counts = {'valid_pixels': 0}

        def fill(target):
            files = SceneFiles(scene, target, s, cog and not strip, no_geo, list(zip(maps_tmp, maps_dst)), str(dst),
                               lr_rows, quality=lr and raster_stream(lr, s, quality_map and open_map(
                                   scene, renames[-1][0], no_geo)))
            try:
                self.engine.upscale_scene(scene, files.sink, spec, bool(maps_dst), bar, rows=rows)
                files.close()
            except BaseException:
                files.abort()
                raise
            counts['valid_pixels'] = files.valid_pixels
            if files.quality is not None:
                counts['quality'] = files.quality.figures()

        try:
            write_geotiff(dst, cog and not strip, fill)
            for tmp, final in renames:
                os.replace(tmp, final)
        finally:
            R.remove_quietly(*(tmp for tmp, _ in renames))
            if not callable(progress):
                bar.close()
        counts.update(tiles=n_tiles, lr_size=(scene.width, scene.height), lr_rows=lr_rows or (0, scene.height),
                      sr_size=(scene.width * s, scene.height * s))
        return counts
