"""LR-consistency of a super-resolved scene, streamed: the figure and map ``segsr-infer --quality`` writes.

No ground truth is needed: the output, brought back to the LR grid by the training degradation
(:func:`segsr_basicsr.metrics.quality.degrade`), is compared with the input it was made from (PSNR in dB
over the bands the network saw, in the input's units). :class:`LRConsistencyStream` takes the output as
it is written, in blocks in row order (the engine's sink, or a reader of the output file), and scores
each LR box as soon as the output ``DEGRADE_HALO`` LR pixels around it has arrived: memory is a few LR
rows across the scene plus one block, not the scene. The sums of exact integers add up in any order, so
an integer scene gets the same figure from the sink, from its file, or from ranks sharing it in strips.

Scored: LR pixels that are valid (not nodata, alpha 0 or masked) and at least ``DEGRADE_HALO`` LR pixels
from any invalid one (closer, the degradation would mix the output's nodata values in). The map: per
pixel, the RMS over bands of degraded output - input, float32 on the LR grid, NaN where not scored.
"""
import json
import math
from pathlib import Path

import numpy as np

from segsr_basicsr.errors import DataError
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.metrics.quality import DEGRADE_HALO, QualitySums, degrade

#: ``OutputSettings.quality``: the figure only, or the figure and its map
QUALITY_MODES = ('figure', 'map')
H = DEGRADE_HALO


def quality_mode(quality):
    """API ``quality`` (False/None, True, 'figure', 'map') -> None | 'figure' | 'map'."""
    if quality in (None, False):
        return None
    if quality is True:
        return 'figure'
    if quality not in QUALITY_MODES:
        raise DataError(f"quality must be False, True, 'figure' or 'map' (figure and error map), got {quality!r}.")
    return quality


def quality_outputs(out, mode) -> list:
    """The files ``mode`` adds beside output ``out``: ``<stem>.quality.json`` (figures), ``<stem>_lrc.tif`` (map)."""
    if mode is None:
        return []
    out = Path(out)
    files = [out.with_name(f'{out.stem}.quality.json')]
    return files + [out.with_name(f'{out.stem}_lrc.tif')] if mode == 'map' else files


def read_quality(out) -> dict:
    """The figures ``segsr-infer --quality`` wrote for output ``out`` (``lr_consistency_db``: None when no
    pixel was scored, ``inf`` when the degraded output is the input exactly)."""
    rec = json.loads(quality_outputs(out, 'figure')[0].read_text())
    if rec.get('lr_consistency_db') == 'inf':
        rec['lr_consistency_db'] = math.inf
    return rec


def write_quality(path, figures: dict):
    """``figures`` as JSON at ``path``, atomically (``inf`` spelled as the string 'inf': JSON has no infinity)."""
    rec = dict(figures)
    if rec.get('lr_consistency_db') == math.inf:
        rec['lr_consistency_db'] = 'inf'
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1) + '\n'), durable=False)


def describe(figures: dict) -> str:
    """``LR-consistency 41.23 dB`` for a scene's line."""
    db = figures.get('lr_consistency_db')
    return 'LR-consistency: no pixel to score' if db is None else f'LR-consistency {db:.2f} dB'


def data_range(dtype, rad=None) -> float:
    """Peak of the PSNR: 255 for 8-bit, else the widest band span of the radiometry (``--max-value``/stretch)."""
    if np.dtype(dtype) == np.uint8 or rad is None:
        return 255.
    return float(np.max(rad.hi - rad.lo))


class LRConsistencyStream:
    """The output of one scene (blocks ``add(r0, r1, c0, c1, sr)`` in row order: every block of a row band
    has the same rows, columns left to right, all edges on multiples of the scale) scored against the LR.

    ``lr_window(y0, y1, x0, x1)`` -> (LR values (h, w, bands) float64, valid (h, w) bool); ``map_writer``:
    a :class:`~segsr_basicsr.io.raster.BlockWriter` of the LR grid (one float32 band) or None."""

    def __init__(self, lr_window, lr_shape, scale, dtype, peak=255., map_writer=None):
        self.lr_window, (self.h, self.w), self.s = lr_window, lr_shape, scale
        self.quantize = np.dtype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
        self.peak, self.map = peak, map_writer
        self.sums = QualitySums()
        self.rows_from, self.top = 0, 0  # LR rows scored so far; first LR row of ``above``
        self.above = None  # output rows [top*s, band start) across the scene, (rows, W*s, bands) float32
        self.band, self.next_row, self.next_col = None, 0, 0

    def _start_band(self, r0, r1):
        s = self.s
        if self.band is not None or r0 != self.next_row or r0 % s or (r1 % s and r1 != self.h * s):
            raise RuntimeError(f'quality: output rows {r0}:{r1} arrived out of order (bug)')
        b = r1 // s
        self.band, self.band_to = (r0, r1), b if b == self.h else max(self.rows_from, b - H)
        self.keep = max(0, self.band_to - H)  # first LR row the next band needs
        self.next_above, self.cols_from, self.left, self.left_x = None, 0, None, 0

    def add(self, r0, r1, c0, c1, sr):
        """Output rows [r0, r1), columns [c0, c1): ``sr`` (bands, r1-r0, c1-c0) as written."""
        s = self.s
        if self.band != (r0, r1):
            self._start_band(r0, r1)
        if c0 != self.next_col:
            raise RuntimeError(f'quality: output columns {c0}:{c1} arrived out of order (bug)')
        self.next_col = c1
        block = np.moveaxis(np.asarray(sr, np.float32), 0, -1)
        win = block if self.above is None else np.concatenate([self.above[:, c0:c1], block], 0)
        region = win if self.left is None else np.concatenate([self.left, win], 1)
        x1 = c1 // s
        col_to = x1 if x1 == self.w else max(self.cols_from, x1 - H)
        if self.band_to > self.rows_from and col_to > self.cols_from:
            self._score(region, (self.top, self.left_x), (self.rows_from, self.band_to, self.cols_from, col_to))
            self.cols_from = col_to
        new_left = max(0, self.cols_from - H) if self.band_to > self.rows_from else 0
        self.left, self.left_x = region[:, (new_left - self.left_x) * s:], new_left
        if self.next_above is None:
            self.next_above = np.empty((r1 - self.keep * s, self.w * s, block.shape[2]), np.float32)
        self.next_above[:, c0:c1] = win[(self.keep - self.top) * s:]
        if c1 == self.w * s:
            self._end_band()

    def _end_band(self):
        if self.band_to > self.rows_from and self.cols_from != self.w:
            raise RuntimeError('quality: a row band ended before its last column (bug)')
        self.rows_from = max(self.rows_from, self.band_to)
        self.above, self.top, self.next_row, self.next_col = self.next_above, self.keep, self.band[1], 0
        self.band = None

    def _score(self, region, origin, box):
        """Score the LR ``box`` from ``region`` (output pixels from LR row/column ``origin``)."""
        s, (y0, y1, x0, x1), (ty, lx) = self.s, box, origin
        py0, py1, px0, px1 = max(0, y0 - H), min(self.h, y1 + H), max(0, x0 - H), min(self.w, x1 + H)
        sub = region[(py0 - ty) * s:(py1 - ty) * s, (px0 - lx) * s:(px1 - lx) * s].copy()
        values, valid = self.lr_window(py0, py1, px0, px1)
        sub[~np.repeat(np.repeat(valid, s, 0), s, 1)] = 0  # nodata fill: never reaches a scored pixel
        crop = (slice(y0 - py0, y1 - py0), slice(x0 - px0, x1 - px0))
        down = degrade(sub, s, self.quantize)[crop]
        scored = scored_pixels(valid)[crop]
        ref = values[crop]
        if down.shape != ref.shape:
            raise DataError(f'quality: the output has {down.shape[2]} band(s) to compare, the input {ref.shape[2]}.')
        self.sums = self.sums + QualitySums.of(down, ref, scored)
        if self.map is not None:
            with np.errstate(invalid='ignore'):
                err = np.sqrt(((down - ref) ** 2).mean(-1)).astype(np.float32)
            err[~scored] = np.nan
            self.map.add(y0, x0, err[None])

    def figures(self) -> dict:
        """The scene's figures, once every row arrived."""
        if self.rows_from != self.h or self.band is not None:
            raise RuntimeError(f'quality: scored {self.rows_from} of {self.h} LR rows (bug)')
        n = self.sums.count
        return {'lr_consistency_db': self.sums.psnr(self.peak) if n else None, 'scored_pixels': n,
                'lr_pixels': self.h * self.w, 'data_range': self.peak}


def scored_pixels(valid):
    """Valid LR pixels at least ``DEGRADE_HALO`` pixels from an invalid one (the image edge is not invalid)."""
    if valid.all():
        return valid
    from scipy.ndimage import binary_erosion
    return binary_erosion(valid, np.ones((2 * H + 1, 2 * H + 1), bool), border_value=1)


def array_window(lr, valid=None):
    """``lr_window`` of an in-memory LR (h, w, bands) and its valid mask (None: all valid)."""
    lr = np.asarray(lr, np.float64)
    lr = lr[..., None] if lr.ndim == 2 else lr

    def window(y0, y1, x0, x1):
        v = np.ones((y1 - y0, x1 - x0), bool) if valid is None else valid[y0:y1, x0:x1]
        return lr[y0:y1, x0:x1], v
    return window


def score_blocks(stream, read, sr_shape, rows=256, cols=2048):
    """Feed ``stream`` the output ``read(r0, r1, c0, c1)`` -> (bands, h, w) in aligned blocks, row order."""
    s, (h, w) = stream.s, sr_shape
    rows, cols = max(s, rows // s * s), max(s, cols // s * s)
    for r0 in range(0, h, rows):
        for c0 in range(0, w, cols):
            r1, c1 = min(h, r0 + rows), min(w, c0 + cols)
            stream.add(r0, r1, c0, c1, read(r0, r1, c0, c1))
    return stream.figures()


def score_image_files(src, dst, map_dst=None, image_kw=None) -> dict:
    """The figures of image output ``dst`` against input ``src`` (both read whole, 8-bit, as the network saw
    them), and the map as a float32 TIFF at ``map_dst``."""
    from segsr_basicsr.io.images import read_image
    lr, sr = read_image(src, **(image_kw or {})), read_image(dst)
    rows = []

    class _Rows:  # the map in memory (an image is read whole anyway)
        def add(self, y0, x0, err):
            rows.append((y0, x0, err[0]))
    stream = LRConsistencyStream(array_window(lr), lr.shape[:2], sr.shape[0] // lr.shape[0], np.uint8,
                                 map_writer=_Rows() if map_dst else None)
    figures = score_blocks(stream, lambda r0, r1, c0, c1: np.moveaxis(sr[r0:r1, c0:c1], -1, 0), sr.shape[:2])
    if map_dst:
        err = np.full(lr.shape[:2], np.nan, np.float32)
        for y0, x0, e in rows:
            err[y0:y0 + e.shape[0], x0:x0 + e.shape[1]] = e
        import tifffile
        atomic_write(map_dst, lambda tmp: tifffile.imwrite(tmp, err, compression='zlib'), keep_suffix=True,
                     durable=False)
    return figures


# ----------------------------------------------------------------------------- rasters
def raster_stream(lr_scene, scale, map_writer=None) -> LRConsistencyStream:
    """A stream scoring an output of the raster ``lr_scene`` (a :class:`~segsr_basicsr.io.raster.RasterScene`
    of its own: a GDAL handle is not shared with the engine's reader thread) on the bands the network saw
    (``stream.bands``, 0-based; the output keeps the input's band order)."""
    bands = sorted(set(lr_scene.plan.rgb))

    def window(y0, y1, x0, x1):
        data, valid = lr_scene.read_valid(y0, y1, x0, x1)
        return np.moveaxis(data[bands], 0, -1).astype(np.float64), valid
    stream = LRConsistencyStream(window, (lr_scene.height, lr_scene.width), scale, lr_scene.dtype,
                                 data_range(lr_scene.dtype, lr_scene.rad), map_writer)
    stream.bands = bands
    return stream


def open_map(scene, path, no_geo):
    """The writer of a scene's LR-consistency map: its LR grid and georeferencing, float32, NaN nodata."""
    from segsr_basicsr.inference.scene_files import map_profile
    from segsr_basicsr.io.raster import BlockWriter
    prof = map_profile(scene, no_geo, 1)
    prof['nodata'] = float('nan')
    return BlockWriter(path, prof, {}, name=str(path))


def score_raster_file(lr_scene, sr_path, scale, map_path=None, no_geo=False) -> dict:
    """The figures of the output file ``sr_path`` against ``lr_scene``, read in blocks (memory: a few rows
    across the scene), and the map at ``map_path`` (written atomically)."""
    import rasterio
    from rasterio.windows import Window

    def run(map_tmp=None):
        writer = open_map(lr_scene, map_tmp, no_geo) if map_tmp else None
        try:
            stream = raster_stream(lr_scene, scale, writer)
            with rasterio.open(sr_path) as sr:
                idx = [b + 1 for b in stream.bands]
                figures = score_blocks(stream, lambda r0, r1, c0, c1: sr.read(
                    idx, window=Window(c0, r0, c1 - c0, r1 - r0)), (sr.height, sr.width))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        return figures

    if map_path is None:
        return run()
    out = {}
    atomic_write(map_path, lambda tmp: out.update(run(tmp)), keep_suffix=True, durable=False)
    return out


def summary_words(scores) -> str:
    """'; LR-consistency 31.20 dB' (one scene) or its mean and lowest over the scenes scored."""
    scored = {k: v for k, v in scores.items() if v is not None}
    if not scored:
        return '; LR-consistency: no pixel to score' if scores else ''
    low = min(scored, key=scored.get)
    if len(scored) == 1:
        return f'; LR-consistency {scored[low]:.2f} dB'
    mean = sum(scored.values()) / len(scored)
    return f'; LR-consistency mean {mean:.2f} dB over {len(scored)} scenes, lowest {scored[low]:.2f} dB ({low})'
