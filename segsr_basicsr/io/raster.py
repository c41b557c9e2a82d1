"""Georeferenced rasters, read and written in windows (rasterio / GDAL).

A scene of any size is read tile by tile (:class:`RasterScene`) and its
super-resolved output is written block by block into a tiled (Big)GeoTIFF
(:class:`BlockWriter`) as the tiler finishes output rows, so memory is set by the
tile and the scene width, not by the scene area. What makes the output the same
product at a finer grid: CRS, transform (pixel size / s, same extent), nodata,
band order, descriptions, colour interpretation, scales/offsets/units, dataset
and band tags, and RPCs / GCPs with their image coordinates scaled.

Band plans, radiometry and channel stacks are :mod:`segsr_basicsr.io.bands` (numpy only).
"""
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from segsr_basicsr.errors import RasterError
from segsr_basicsr.io.bands import ChannelScene, make_radiometry, plan_bands, stack_channels

#: inputs that are read through GDAL in windows (PNG/JPEG/BMP/WebP are read whole)
RASTER_EXTS = ('.tif', '.tiff', '.jp2', '.vrt', '.img')
#: output block size (internal TIFF tiles); COG outputs use 512
BLOCK = 256
#: GDAL block cache while streaming (MB): written blocks sit there until evicted
GDAL_CACHE_MB = 64


# ----------------------------------------------------------------------------- reading
class RasterScene(ChannelScene):
    """A GDAL raster read window by window; holds the band plan, radiometry and the output profile."""

    def __init__(self, path, bands=None, max_value=None, stretch=None):
        import rasterio
        from rasterio.enums import ColorInterp, MaskFlags
        self.path = Path(path)
        self.name = str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
                self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as e:
            raise RasterError(f'{path}: cannot be opened as a raster ({_gdal_reason(e)}); the file is truncated, '
                              'damaged or not an image.') from None
        src = self.src
        self.height, self.width = src.height, src.width
        dtypes = set(src.dtypes)
        if len(dtypes) != 1:
            raise RasterError(f'{path}: bands have different data types {sorted(dtypes)}; write a copy with one '
                              'type (gdal_translate -ot).')
        self.dtype = np.dtype(src.dtypes[0])
        interp = list(src.colorinterp)
        alpha = next((i for i, c in enumerate(interp) if c == ColorInterp.alpha), None)
        self.plan = plan_bands(self.name, src.count, alpha, bands)
        self.n_extra = len(self.plan.extras)
        flags = src.mask_flag_enums[self.plan.rgb[0]]
        self.nodata = src.nodata
        #: GDAL mask band stored with the data (not nodata, not alpha): read it, and write one in the output
        self.internal_mask = alpha is None and self.nodata is None and MaskFlags.per_dataset in flags
        sample = self._sample() if stretch is not None else None
        self.rad = make_radiometry(self.name, self.dtype, max_value, stretch, sample)

    def _sample(self, size=1024):
        """Valid RGB values on a grid of at most ``size``² pixels (overviews used when present)."""
        from rasterio.enums import Resampling
        f = max(1, math.ceil(max(self.height, self.width) / size))
        shape = (max(1, self.height // f), max(1, self.width // f))
        data = self._safe(lambda: self.src.read(out_shape=(self.src.count, *shape), resampling=Resampling.nearest),
                          'a decimated overview for --stretch')
        valid = self._valid(data, None)
        return data[list(self.plan.rgb)][:, valid]

    def _valid(self, data, window):
        valid = None
        if self.internal_mask:
            valid = self._safe(lambda: self.src.dataset_mask(window=window), _where(window)) > 0
        elif self.plan.alpha is not None:
            valid = data[self.plan.alpha] > 0
        elif self.nodata is not None:
            nd = np.isnan(data) if math.isnan(self.nodata) else (data == self.nodata)
            valid = ~nd.all(0)
        return np.ones(data.shape[1:], bool) if valid is None else valid

    def _safe(self, fn, where):
        import rasterio
        try:
            return fn()
        except (rasterio.errors.RasterioError, OSError) as e:
            raise RasterError(f'{self.name}: cannot read {where} ({_gdal_reason(e)}); the file is truncated or '
                              'damaged. Re-download or re-export it.') from None

    def read_window(self, y0, y1, x0, x1):
        """(count, h, w) raw values of the window (one seam for tests that make a window unreadable)."""
        from rasterio.windows import Window
        return self.src.read(window=Window(x0, y0, x1 - x0, y1 - y0))

    def read_valid(self, y0, y1, x0, x1):
        """(raw values (count, h, w), valid (h, w) bool) of the window: what :meth:`read` stacks."""
        from rasterio.windows import Window
        data = self._safe(lambda: self.read_window(y0, y1, x0, x1), _where((y0, y1, x0, x1)))
        return data, self._valid(data, Window(x0, y0, x1 - x0, y1 - y0))

    def read(self, y0, y1, x0, x1):
        data, valid = self.read_valid(y0, y1, x0, x1)
        return stack_channels(data, self.plan, self.rad, valid, self.name)

    def close(self):
        self.src.close()

    # ----------------------------------------------------------------- output profile
    def output_profile(self, scale, no_geo=False):
        """Creation options and metadata of the x``scale`` output (same band layout and dtype)."""
        src = self.src
        prof = dict(driver='GTiff', width=self.width * scale, height=self.height * scale, count=src.count,
                    dtype=self.dtype.name, nodata=self.nodata)
        meta = dict(descriptions=src.descriptions, colorinterp=src.colorinterp, tags=src.tags(),
                    band_tags=[src.tags(b + 1) for b in range(src.count)], scales=src.scales, offsets=src.offsets,
                    units=src.units, warnings=[])
        if no_geo:
            return prof, meta
        georef = src.crs is not None or not src.transform.is_identity
        if georef:
            prof['crs'] = src.crs
            prof['transform'] = scaled_transform(src.transform, scale)
        gcps, gcp_crs = src.gcps
        if gcps:
            meta['gcps'] = (scale_gcps(gcps, scale), gcp_crs)
        if src.rpcs is not None:
            prof['rpcs'] = scale_rpcs(src.rpcs, scale)
        return prof, meta


def _where(window):
    if window is None:
        return 'the mask'
    if isinstance(window, tuple):
        y0, y1, x0, x1 = window
    else:
        y0, x0 = int(window.row_off), int(window.col_off)
        y1, x1 = y0 + int(window.height), x0 + int(window.width)
    return f'rows {y0}:{y1}, columns {x0}:{x1}'


def _gdal_reason(e):
    """The most specific line of a rasterio/GDAL error (its cause often holds the real reason)."""
    msgs = []
    while e is not None:
        text = ' '.join(str(e).split())
        if text and 'See previous exception' not in text:
            msgs.append(text)
        e = e.__cause__ or e.__context__
    return msgs[-1] if msgs else 'read failed'


def scaled_transform(transform, scale):
    """Same origin and extent, pixel size / scale."""
    from affine import Affine
    shrink = Affine.scale(1 / scale)
    return transform @ shrink if hasattr(Affine, '__matmul__') else transform * shrink  # affine >= 2.4 spells '@'


def scale_gcps(gcps, scale):
    """GCP pixel/line are corner-based image coordinates: x scale."""
    from rasterio.control import GroundControlPoint
    return [GroundControlPoint(row=g.row * scale, col=g.col * scale, x=g.x, y=g.y, z=g.z, id=g.id, info=g.info)
            for g in gcps]


def scale_rpcs(rpcs, scale):
    """RPC line/sample are pixel-centre coordinates: v' = s * v + (s - 1) / 2; their scales grow by s."""
    from rasterio.rpc import RPC
    d = rpcs.to_dict()
    for k in ('line', 'samp'):
        d[f'{k}_off'] = d[f'{k}_off'] * scale + (scale - 1) / 2
        d[f'{k}_scale'] = d[f'{k}_scale'] * scale
    return RPC(**d)


# ----------------------------------------------------------------------------- writing
class BlockWriter:
    """A tiled (Big)GeoTIFF written in aligned ``block``² tiles, each exactly once, as soon as it is complete.

    ``add`` accepts any rectangle of the output; pieces are assembled into their block and the
    block is written when all its pixels arrived. Held: the incomplete blocks only (about one
    block row across the scene while rows stream in).
    """

    def __init__(self, path, profile, meta=None, block=BLOCK, mask=False, compress='deflate', name=None, threads=None):
        import rasterio
        self.path = Path(path)
        self.name = name or str(path)  # the final output name, for messages
        self.h, self.w, self.count = profile['height'], profile['width'], profile['count']
        self.dtype = np.dtype(profile['dtype'])
        self.block, self.mask = block, mask
        opts = dict(tiled=True, blockxsize=block, blockysize=block, compress=compress, BIGTIFF='IF_SAFER',
                    interleave='pixel')
        if compress in ('deflate', 'lzw', 'zstd'):
            opts['predictor'] = 3 if self.dtype.kind == 'f' else 2
        if threads:  # GDAL compresses blocks on this many threads (``'ALL_CPUS'``); same bytes
            opts['num_threads'] = str(threads)
        meta = meta or {}
        try:
            self.dst = rasterio.open(path, 'w', **profile, **opts)
            self._set_meta(meta)
        except (rasterio.errors.RasterioError, OSError) as e:
            raise RasterError(f'{self.name}: cannot create the output ({_gdal_reason(e)}); check the folder and the '
                              'free disk space.') from None
        self.pending = {}  # (block row, block col) -> [data (count, bh, bw), mask (bh, bw) | None, pixels missing]
        self.written = 0

    def _set_meta(self, meta):
        dst = self.dst
        for b, d in enumerate(meta.get('descriptions') or []):
            if d:
                dst.set_band_description(b + 1, d)
        if meta.get('colorinterp'):
            dst.colorinterp = meta['colorinterp']
        if meta.get('tags'):
            dst.update_tags(**meta['tags'])
        for b, t in enumerate(meta.get('band_tags') or []):
            if t:
                dst.update_tags(b + 1, **t)
        if meta.get('scales') and any(s != 1 for s in meta['scales']):
            dst.scales = meta['scales']
        if meta.get('offsets') and any(o != 0 for o in meta['offsets']):
            dst.offsets = meta['offsets']
        if meta.get('units') and any(meta['units']):
            dst.units = [u or '' for u in meta['units']]
        if meta.get('gcps'):
            dst.gcps = meta['gcps']

    def _block_size(self, br, bc):
        return min(self.block, self.h - br * self.block), min(self.block, self.w - bc * self.block)

    def add(self, r0, c0, data, mask=None):
        """``data`` (count, h, w) of dtype at output rows r0.., columns c0..; ``mask`` (h, w) uint8 when masked."""
        h, w = data.shape[1:]
        b = self.block
        for br in range(r0 // b, (r0 + h - 1) // b + 1):
            for bc in range(c0 // b, (c0 + w - 1) // b + 1):
                y0, x0 = br * b, bc * b
                ya, yb = max(r0, y0), min(r0 + h, y0 + b)
                xa, xb = max(c0, x0), min(c0 + w, x0 + b)
                bh, bw = self._block_size(br, bc)
                if ya == y0 and xa == x0 and yb - ya == bh and xb - xa == bw:  # a whole block: write it directly
                    self._write(br, bc, data[:, ya - r0:yb - r0, xa - c0:xb - c0],
                                None if mask is None else mask[ya - r0:yb - r0, xa - c0:xb - c0])
                    continue
                entry = self.pending.get((br, bc))
                if entry is None:
                    entry = self.pending[(br, bc)] = [np.zeros((self.count, bh, bw), self.dtype),
                                                      np.zeros((bh, bw), np.uint8) if self.mask else None, bh * bw]
                entry[0][:, ya - y0:yb - y0, xa - x0:xb - x0] = data[:, ya - r0:yb - r0, xa - c0:xb - c0]
                if self.mask:
                    entry[1][ya - y0:yb - y0, xa - x0:xb - x0] = mask[ya - r0:yb - r0, xa - c0:xb - c0]
                entry[2] -= (yb - ya) * (xb - xa)
                if entry[2] == 0:
                    del self.pending[(br, bc)]
                    self._write(br, bc, entry[0], entry[1])

    def _write(self, br, bc, data, mask):
        import rasterio
        from rasterio.windows import Window
        win = Window(bc * self.block, br * self.block, data.shape[2], data.shape[1])
        try:
            self.write_block(np.ascontiguousarray(data), win)
            if mask is not None:
                self.dst.write_mask(np.ascontiguousarray(mask), window=win)
        except (rasterio.errors.RasterioError, OSError) as e:
            raise RasterError(f'{self.name}: cannot write the output ({_gdal_reason(e)}); free disk space or '
                              'choose another --output. Nothing was left under the output name.') from None
        self.written += 1

    def write_block(self, data, window):
        """One aligned block to the file (one seam, so tests can simulate a full disk)."""
        self.dst.write(data, window=window)

    def close(self):
        import rasterio
        try:
            self.dst.close()
        except (rasterio.errors.RasterioError, OSError) as e:
            raise RasterError(f'{self.name}: cannot finish the output ({_gdal_reason(e)}); free disk space or '
                              'choose another --output.') from None
        if self.pending:
            raise RuntimeError(f'{self.path}: {len(self.pending)} output block(s) were never completed (bug)')

    def abort(self):
        try:
            self.dst.close()
        except Exception:  # noqa: BLE001 - the output is deleted anyway
            pass


def translate_to_cog(src_path, dst_path, block=512, resampling='average'):
    """Copy a finished GeoTIFF into a Cloud-Optimised GeoTIFF (overviews, tiles, IFDs first), streaming."""
    import rasterio
    from rasterio.shutil import copy as gdal_copy
    try:
        gdal_copy(str(src_path), str(dst_path), driver='COG', compress='DEFLATE', blocksize=block,
                  overview_resampling=resampling, bigtiff='IF_SAFER', num_threads='ALL_CPUS')
    except (rasterio.errors.RasterioError, OSError) as e:
        raise RasterError(f'{dst_path}: cannot write the COG ({_gdal_reason(e)}); free disk space or choose another '
                          '--output.') from None


def gdal_env():
    """The GDAL settings for streaming: a small block cache (written blocks wait there until evicted)."""
    import rasterio
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True)


def remove_quietly(*paths: Sequence[os.PathLike]):
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass
