"""Super-resolve images without ground truth: files, folders, or georeferenced scenes of any size.

    segsr-infer --model net_g_latest.pth --input scene.tif --output results/ --tile 256 --tile-batch 4

Checkpoints written by training name their network; older ones need the option file
(``-opt options/test_SeGSR_HAT_x4.yml``). Rasters that GDAL reads (GeoTIFF, COG, JP2,
VRT) are streamed window by window into a tiled GeoTIFF (``--cog``: Cloud-Optimised,
with overviews) that keeps the georeferencing, band layout, dtype, nodata and alpha;
memory is set by ``--tile``, not by the scene. PNG/JPEG/BMP/WebP are read whole and
give PNG. Inputs are never overwritten, outputs only with ``--overwrite``; every file is
written under a temporary name and renamed when complete. This is a thin layer over
:mod:`segsr_basicsr.api` (``segsr_basicsr.load_model``).
"""
import argparse
import os
import sys
import warnings
from pathlib import Path

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)
import numpy as np

from segsr_basicsr.api import load_model
from segsr_basicsr.errors import InferError, SceneWarning
from segsr_basicsr.io.images import IMG_EXTS, TIFF_EXTS, add_image_args, image_kwargs, read_image, write_image
from segsr_basicsr.io.raster import RASTER_EXTS
from segsr_basicsr.utils.options import check_tile, tile_spec
from segsr_basicsr.utils.preflight import check_device, check_writable
from segsr_basicsr.utils.progress import Progress, progress

INPUT_EXTS = tuple(dict.fromkeys(IMG_EXTS + RASTER_EXTS))
#: default tile (LR pixels) for streamed rasters; images default to one whole-image pass
RASTER_TILE = 256


def _has_rasterio():
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def streams(path):
    """True for inputs read window by window through GDAL."""
    return path.suffix.lower() in RASTER_EXTS and _has_rasterio()


# ----------------------------------------------------------------------------- files
def list_inputs(inputs):
    """The files named by --input (files, folders), each once, in order; refuses what is not an image."""
    files = []
    for text in inputs:
        if not str(text).strip():
            raise InferError("--input '': an empty path; name an image, raster or folder.")
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_EXTS)
            if not found:
                raise InferError(f'{p}: folder holds no images ({", ".join(INPUT_EXTS)}).')
            files += found
        elif p.is_file():
            if p.suffix.lower() not in INPUT_EXTS:
                raise InferError(f'{p}: not an image or raster file ({", ".join(INPUT_EXTS)}).')
            files.append(p)
        else:
            raise InferError(f'--input {p}: no such file or folder.')
    seen = {}
    for f in files:
        if f.resolve() in seen:
            raise InferError(f'--input names {f} twice (also as {seen[f.resolve()]}); name each input once.')
        seen[f.resolve()] = f
    return files


def plan_outputs(files, out_dir, scale, save_maps, num_maps, overwrite):
    """(input, output, [map outputs]) per file; refuses anything that could destroy an input or an output."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InferError(f'--output {out_dir}: exists and is not a folder.')
    check_writable(out_dir, '--output')
    in_dirs = {f.parent.resolve() for f in files}
    if out_dir.resolve() in in_dirs:
        raise InferError(f'--output {out_dir}: is the folder of the input image(s); results must go to another '
                         'folder so that inputs are never overwritten (e.g. --output results/sr).')
    inputs = {f.resolve() for f in files}
    plan, seen = [], set()
    for f in files:
        raster = streams(f)
        ext = '.tif' if raster or f.suffix.lower() in TIFF_EXTS else '.png'
        out = out_dir / f'{f.stem}_SeGSR_x{scale}{ext}'
        map_ext = '.tif' if raster else '.png'
        maps = [out_dir / f'{f.stem}_SeGSR_x{scale}_semantic_unit{k + 1}{map_ext}' for k in range(num_maps)] \
            if save_maps else []
        for o in [out] + maps:
            if o.resolve() in inputs:
                raise InferError(f'{o}: is one of the inputs; refusing to overwrite it. Choose another --output.')
            if o in seen:
                raise InferError(f'{f}: two inputs map to the same output {o} (same name, different extension?); '
                                 'process them separately.')
            seen.add(o)
        plan.append((f, out, maps))
    if not overwrite:
        taken = [str(o) for _, out, maps in plan for o in [out] + maps if os.path.lexists(o)]
        if taken:
            more = f' (and {len(taken) - 5} more)' if len(taken) > 5 else ''
            raise InferError(f'output exists: {", ".join(taken[:5])}{more}. Pass --overwrite to replace it, '
                             'or choose another --output.')
    return plan


def check_inputs(files, args):
    """Open every input the way it will be read (images decoded with the band/range options, rasters opened
    with them) before the first output is written, so a bad file late in a folder costs no half-done run."""
    from segsr_basicsr.io import raster as R
    for src in progress(files, 'checking inputs', unit='files', closing_line=False):
        if streams(src):
            with R.gdal_env():
                R.RasterScene(src, args.bands, args.max_value, args.stretch).close()
            continue
        if args.stretch is not None or args.cog:
            raise InferError(f'{src}: --stretch and --cog apply to rasters read through GDAL (GeoTIFF, JP2, VRT); '
                             'this file is read whole as an image.')
        if src.suffix.lower() in TIFF_EXTS:
            check_plain_tiff(src, args.no_geo)
        read_image(src, **image_kwargs(args))


def check_plain_tiff(path, no_geo):
    """Without rasterio a TIFF is read whole; a GeoTIFF then needs --no-geo (its georeferencing would be lost)."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            geo = any(t in tif.pages[0].tags for t in (33550, 33922, 34264, 34735))
    except Exception:  # noqa: BLE001 - not readable as TIFF: the image reader reports it
        return
    if geo and not no_geo:
        raise InferError(f'{path}: is a GeoTIFF, and keeping its georeferencing needs rasterio '
                         "(pip install 'segsr_basicsr[geo]'). Or pass --no-geo to write a plain TIFF.")


# ----------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='segsr-infer', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', default=None, help='option file whose network_g built the checkpoint (only for '
                   'checkpoints that do not carry it)')
    p.add_argument('--model', required=True, help='checkpoint (.pth) written by training')
    p.add_argument('--param-key', default=None, help='params_ema (default when present) or params')
    p.add_argument('--input', required=True, nargs='+', help='image/raster file(s) and/or folder(s)')
    p.add_argument('--output', required=True, help='output folder (not an input folder)')
    p.add_argument('--tile', type=int, default=None,
                   help=f'tile size in LR pixels (default: {RASTER_TILE} for rasters, whole image otherwise; '
                   '0: whole image at once)')
    p.add_argument('--tile-overlap', type=int, default=None,
                   help='overlap between tiles in LR pixels (default: 32, at most a quarter of the tile)')
    p.add_argument('--tile-batch', type=int, default=1, help='tiles per forward pass (more is faster on a GPU)')
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    p.add_argument('--amp', default='none', choices=('bf16', 'fp16', 'none'), help='autocast dtype')
    p.add_argument('--save-maps', action='store_true', help='also write semantic maps per SR unit (PNG overlays '
                   'for images; float32 GeoTIFFs on the LR grid for rasters)')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs (never inputs)')
    p.add_argument('--cog', action='store_true', help='rasters: write a Cloud-Optimised GeoTIFF with overviews')
    p.add_argument('--stretch', type=float, nargs=2, metavar=('LOW', 'HIGH'), default=None,
                   help='rasters: map each RGB band by its LOW..HIGH percentiles (e.g. 1 99) instead of '
                   '--max-value; inverted on output, so the dtype and range are kept')
    p.add_argument('--no-geo', action='store_true', help='write rasters without georeferencing')
    p.add_argument('--no-progress', action='store_true', help='no progress bar / progress lines')
    p.add_argument('--merge-lora', action='store_true', help='fold CLIP LoRA into its weights: a little faster, '
                   'pixels may then differ by one level from validation/test (docs/inference.md)')
    p.add_argument('--self-ensemble', action='store_true',
                   help='average the 8 flips/rotations of every tile, each through the whole network (8x the time)')
    add_image_args(p)
    return p.parse_args(argv)


def tile_args(args, raster: bool):
    """--tile/--tile-overlap/--tile-batch -> TileSpec (rasters default to RASTER_TILE, images to no tiling)."""
    size = (RASTER_TILE if raster else None) if args.tile is None else args.tile
    return tile_spec({'size': size, 'overlap': args.tile_overlap, 'batch': args.tile_batch}, '--tile')


def _run_file(model, args, src, out, map_paths):
    """One input -> its output(s); returns the line to print."""
    s = model.scale
    progress = not args.no_progress
    if streams(src):
        tile = tile_args(args, raster=True)
        st = model.upscale_file(src, out, tile=tile.size, overlap=tile.overlap, batch=tile.batch,
                                bands=args.bands, max_value=args.max_value, stretch=args.stretch, cog=args.cog,
                                no_geo=args.no_geo, maps_dst=map_paths or None, progress=progress)
        (w, h), (sw, sh) = st['lr_size'], st['sr_size']
        return f'{src} -> {out} ({w}x{h} -> {sw}x{sh}, {st["tiles"]} tiles, {st["seconds"]:.1f} s)'
    from segsr_basicsr.utils.visualize import semantic_overlays
    img = read_image(src, **image_kwargs(args))
    h, w = img.shape[:2]
    tile = tile_args(args, raster=False)
    bar = Progress(model.count_tiles(h, w, tile.size, tile.overlap), src.name, 'tiles', megapixels=h * w / 1e6,
                   every=5.0, enabled=progress)
    try:
        res = model.upscale(img[..., ::-1], tile=tile.size, overlap=tile.overlap, batch=tile.batch,
                            return_maps=bool(map_paths), progress=bar)
    finally:
        bar.close()
    sr, maps = res if map_paths else (res, [])
    sr = np.ascontiguousarray(sr[..., ::-1])
    write_image(out, sr)
    for path, overlay in zip(map_paths, semantic_overlays(sr, maps)):
        write_image(path, overlay)
    return f'{src} -> {out} ({w}x{h} -> {w * s}x{h * s})'


def main(argv=None):
    from segsr_basicsr.utils.cli import exit_on_user_error

    args = parse_args(argv)
    with exit_on_user_error('segsr-infer'):
        for raster in (False, True):  # the tile options, checked before anything is read
            tile_args(args, raster)
        files = list_inputs(args.input)
        check_device(args.device)
        plan_outputs(files, args.output, 1, False, 0, True)  # input-safety checks before the slow part
        model = load_model(args.model, args.device, opt=args.opt, param_key=args.param_key,
                           amp=None if args.amp == 'none' else args.amp, self_ensemble=args.self_ensemble,
                           merge_lora=args.merge_lora)
        if args.tile:  # before any image is read: a tile off the window grid gives seams, silently
            check_tile(tile_args(args, False), model.multiple, '--tile', 'the window of the network,')
        num_maps = 0
        if args.save_maps:
            num_maps = model.num_maps
            if not num_maps:
                raise InferError(f'--save-maps: the network of {args.model} has no semantic guidance, so there are '
                                 'no maps to save.')
        plan = plan_outputs(files, args.output, model.scale, args.save_maps, num_maps, args.overwrite)
        check_inputs(files, args)
        Path(args.output).mkdir(parents=True, exist_ok=True)
        for src, out, map_paths in plan:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always', SceneWarning)
                line = _run_file(model, args, src, out, map_paths)
            for w in caught:
                if issubclass(w.category, SceneWarning):
                    print(f'segsr-infer: warning: {w.message}', file=sys.stderr, flush=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            print(line, flush=True)


if __name__ == '__main__':
    main()
