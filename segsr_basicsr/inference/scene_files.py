"""The files a streamed scene becomes: its GeoTIFF (or COG) and semantic-map GeoTIFFs, or a band of them.

The engine hands finished blocks to :class:`SceneFiles`, which GDAL compresses and writes on a thread
while the network computes. When ranks share one scene (``segsr-infer`` under torchrun), each rank
writes the rows of its strip of tile rows into a *part* (a plain tiled GeoTIFF of those rows), and
:func:`assemble` copies the parts, strip by strip, into the one output with the scene's georeferencing
and metadata: the same file a single process writes, without ever holding the scene in memory.
"""
import queue
import threading
from pathlib import Path

import numpy as np

from segsr_basicsr.io import raster as R
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.io.bands import channels_to_bands


class WriterThread:
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


def output_block(cog: bool) -> int:
    return 512 if cog else R.BLOCK


def map_profile(scene, no_geo, channels):
    """Profile of a semantic-map GeoTIFF: the LR grid, float32, one band per map channel."""
    prof, _ = scene.output_profile(1, no_geo)
    prof.update(count=channels, dtype='float32', nodata=None)
    prof.pop('rpcs', None)
    return prof


class SceneFiles:
    """The output GeoTIFF of one scene (and its semantic-map GeoTIFFs), written block by block on a thread;
    ``sink`` is what the engine hands finished blocks to. ``lr_rows=(y0, y1)``: only that band of the
    scene is written (a part, no georeferencing; see :func:`assemble`). ``quality``: a
    :class:`~.scene_quality.LRConsistencyStream` that also scores the written blocks (a whole scene only)."""

    def __init__(self, scene, target, scale, cog, no_geo, maps, name, lr_rows=None, quality=None):
        self.scene, self.no_geo, self.maps, self.scale = scene, no_geo, maps, scale
        self.row0, self.lr_rows = (lr_rows or (0, 0))[0], lr_rows
        profile, meta = scene.output_profile(scale, no_geo or lr_rows is not None)
        if lr_rows is not None:
            profile['height'], meta = (lr_rows[1] - lr_rows[0]) * scale, {}
        self.writer = R.BlockWriter(target, profile, meta, block=output_block(cog), mask=scene.internal_mask,
                                    compress='zstd' if cog else 'deflate', name=name)
        self.map_writers = {}
        self.worker = WriterThread()
        self.valid_pixels = 0
        self.quality = quality

    def sink(self, i, r0, r1, c0, c1, block):
        sc = self.scene
        if i == 0:
            data, valid = channels_to_bands(block[0].numpy(), sc.plan, sc.rad, sc.dtype, sc.nodata)
            self.valid_pixels += int(valid.sum())
            if self.quality is not None:
                self.quality.add(r0, r1, c0, c1, data[self.quality.bands])
            self.worker.submit(self.writer.add, r0 - self.row0 * self.scale, c0, data,
                               (valid * np.uint8(255)) if self.writer.mask else None)
            return
        if i not in self.map_writers:
            prof = map_profile(sc, self.no_geo or self.lr_rows is not None, block.shape[1])
            if self.lr_rows is not None:
                prof['height'] = self.lr_rows[1] - self.lr_rows[0]
            tmp, final = self.maps[i - 1]
            self.map_writers[i] = R.BlockWriter(tmp, prof, {}, name=str(final))
        self.worker.submit(self.map_writers[i].add, r0 - self.row0, c0, block[0].numpy().copy())

    def close(self):
        self.worker.close()
        self.writer.close()
        for m in [*self.map_writers.values(), *self._quality_map()]:
            m.close()

    def _quality_map(self):
        return [self.quality.map] if self.quality is not None and self.quality.map is not None else []

    def abort(self):
        if self.worker.error is None:
            self.worker.error = RuntimeError('aborted')
        try:
            self.worker.close()
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            pass
        for wr in [self.writer, *self.map_writers.values(), *self._quality_map()]:
            wr.abort()


def write_geotiff(dst, cog, fill):
    """``fill(target)`` writes a complete GeoTIFF at ``target``; it appears at ``dst`` only when complete
    (as a COG with overviews when ``cog``). Nothing is left behind on failure."""
    def write(tmp):
        target = Path(f'{tmp}.gtiff.tmp') if cog else Path(tmp)
        try:
            fill(target)
            if cog:
                R.translate_to_cog(target, tmp)
        finally:
            if cog:
                R.remove_quietly(target)
    atomic_write(dst, write, durable=True)


def _copy_parts(writer, parts, strip):
    """Each part's rows into ``writer`` below the previous part's, ``strip`` rows at a time."""
    import rasterio
    from rasterio.windows import Window
    top = 0
    for part in parts:
        with rasterio.open(part) as src:
            for y in range(0, src.height, strip):
                win = Window(0, y, src.width, min(strip, src.height - y))
                mask = src.dataset_mask(window=win) if writer.mask else None
                writer.add(top + y, 0, src.read(window=win), mask)
            top += src.height
    if top != writer.h:
        raise RuntimeError(f'{writer.name}: the parts hold {top} rows, the output has {writer.h} (bug)')


def assemble(scene, parts, dst, scale, cog, no_geo, map_parts=(), maps_dst=()):
    """The output of ``scene`` at ``dst`` (and its maps at ``maps_dst``) from band parts, in row order."""
    def fill(target):
        profile, meta = scene.output_profile(scale, no_geo)
        block = output_block(cog)
        writer = R.BlockWriter(target, profile, meta, block=block, mask=scene.internal_mask,
                               compress='zstd' if cog else 'deflate', name=str(dst), threads='ALL_CPUS')
        try:
            _copy_parts(writer, parts, block)
        except BaseException:
            writer.abort()
            raise
        writer.close()

    with R.gdal_env():
        write_geotiff(dst, cog, fill)
        for k, final in enumerate(maps_dst):
            _assemble_map(scene, [p[k] for p in map_parts], final, no_geo)


def _assemble_map(scene, parts, final, no_geo):
    import rasterio
    with rasterio.open(parts[0]) as first:
        channels = first.count

    def fill(target):
        writer = R.BlockWriter(target, map_profile(scene, no_geo, channels), {}, name=str(final))
        try:
            _copy_parts(writer, parts, R.BLOCK)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    atomic_write(final, fill, keep_suffix=True, durable=True)


