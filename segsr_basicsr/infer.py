"""Super-resolve images without ground truth: files, folders, or georeferenced scenes of any size.

    segsr-infer --model net_g_latest.pth --input scene.tif --output results/ --tile 256 --tile-batch 4

Checkpoints written by training name their network; older ones need the option file
(``-opt options/test_SeGSR_HAT_x4.yml``). Rasters that GDAL reads (GeoTIFF, COG, JP2,
VRT) are streamed window by window into a tiled GeoTIFF (``--cog``: Cloud-Optimised,
with overviews) that keeps the georeferencing, strip layout, dtype, nodata and alpha;
memory is set by ``--tile``, not by the scene. PNG/JPEG/BMP/WebP are read whole and
give PNG. Inputs are never overwritten, outputs only with ``--overwrite``; every file is
written under a temporary name and renamed when complete. Re-running a command does only what is
missing (records in ``<output>/.segsr-done/``). Many GPUs or machines:
``torchrun --nproc_per_node=N -m segsr_basicsr.infer ...`` shares the inputs among the ranks by pixel
count (:mod:`segsr_basicsr.inference.batch`). This is a thin layer over :mod:`segsr_basicsr.api`.
"""
import argparse
import sys
import time
import warnings

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)

from segsr_basicsr.api import load_model
from segsr_basicsr.errors import InferError, SceneWarning
from segsr_basicsr.io.images import TIFF_EXTS, add_image_args, image_kwargs, read_image
from segsr_basicsr.inference.batch import DoneRecords, fingerprint, list_inputs, plan_outputs, run_share, sort_out, streams
from segsr_basicsr.options import check_tile, tile_spec
from segsr_basicsr.utils.preflight import check_device
from segsr_basicsr.utils.progress import progress

#: default tile (LR pixels) for streamed rasters; images default to one whole-image pass
RASTER_TILE = 256


def check_inputs(files, args):
    """Open every input the way it will be read (images decoded with the strip/range options, rasters opened
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
    p.add_argument('--model', required=True, help='checkpoint (.pth or .safetensors) written by training, or an '
                   '.onnx file written by segsr-export')
    p.add_argument('--backend', default='auto', choices=('auto', 'torch', 'onnxruntime'),
                   help='auto: onnxruntime for an .onnx file, PyTorch otherwise (docs/export.md)')
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
                   help='rasters: map each RGB strip by its LOW..HIGH percentiles (e.g. 1 99) instead of '
                   '--max-value; inverted on output, so the dtype and range are kept')
    p.add_argument('--no-geo', action='store_true', help='write rasters without georeferencing')
    p.add_argument('--no-progress', action='store_true', help='no progress bar / progress lines')
    p.add_argument('--merge-lora', action='store_true', help='fold CLIP LoRA into its weights: a little faster, '
                   'pixels may then differ by one level from validation/test (docs/inference.md)')
    p.add_argument('--launcher', default='auto', choices=('auto', 'none', 'pytorch', 'slurm'),
                   help='many processes: auto (torchrun is detected), pytorch (RANK/WORLD_SIZE/MASTER_ADDR set by '
                   'your launcher), slurm (srun --ntasks=N, one process per GPU), none (this process alone)')
    p.add_argument('--no-split', action='store_true', help='many ranks: never share one raster among ranks (by '
                   'default a raster larger than an even share is cut into strips of tile rows; same pixels)')
    p.add_argument('--self-ensemble', action='store_true',
                   help='average the 8 flips/rotations of every tile, each through the whole network (8x the time)')
    add_image_args(p)
    return p.parse_args(argv)


def tile_args(args, raster: bool):
    """--tile/--tile-overlap/--tile-batch -> TileSpec (rasters default to RASTER_TILE, images to no tiling)."""
    size = (RASTER_TILE if raster else None) if args.tile is None else args.tile
    return tile_spec({'size': size, 'overlap': args.tile_overlap, 'batch': args.tile_batch}, '--tile')


def _raster_kw(args):
    return dict(bands=args.bands, max_value=args.max_value, stretch=args.stretch, cog=args.cog, no_geo=args.no_geo)


def _run_file(model, args, src, out, map_paths, strip=None, progress=True):
    """One input (or strip ``(k, n)`` of a raster) -> its output(s) (or parts); returns the line to print."""
    s = model.scale
    if streams(src):
        tile = tile_args(args, raster=True)
        st = model.upscale_file(src, out, tile=tile.size, overlap=tile.overlap, batch=tile.batch,
                                maps_dst=map_paths or None, progress=progress, strip=strip, **_raster_kw(args))
        (w, h), (sw, sh) = st['lr_size'], st['sr_size']
        what = f'{src} strip {strip[0] + 1}/{strip[1]} (LR rows {st["lr_rows"][0]}:{st["lr_rows"][1]})' if strip else str(src)
        return f'{what} -> {out} ({w}x{h} -> {sw}x{sh}, {st["tiles"]} tiles, {st["seconds"]:.1f} s)'
    tile = tile_args(args, raster=False)
    w, h = model.upscale_image_file(src, out, map_paths, tile=tile.size, overlap=tile.overlap, batch=tile.batch,
                                    image_kw=image_kwargs(args), progress=progress)
    return f'{src} -> {out} ({w}x{h} -> {w * s}x{h * s})'


def _ranks(launcher):
    """(rank, world, local rank). ``auto``: a torchrun job (TORCHELASTIC_RUN_ID set) is ``pytorch``, anything
    else one process; ``pytorch`` reads RANK/WORLD_SIZE/MASTER_ADDR, ``slurm`` SLURM_PROCID/NTASKS/NODELIST,
    as training does (nccl on CUDA, gloo on CPU, SEGSR_DIST_TIMEOUT)."""
    import os

    import torch.distributed as dist
    if launcher == 'auto':
        launcher = 'pytorch' if 'TORCHELASTIC_RUN_ID' in os.environ else 'none'
    if not dist.is_initialized() and launcher != 'none':
        world = int(os.environ.get('SLURM_NTASKS' if launcher == 'slurm' else 'WORLD_SIZE', '1'))
        if world > 1:
            from basicsr.utils.dist_util import init_dist

            from segsr_basicsr.utils.dist import patch_dist
            patch_dist()
            init_dist(launcher)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', '0'))
    return 0, 1, 0


def _rank_device(name, world, local_rank):
    """Under torchrun each rank runs on its own GPU (LOCAL_RANK), or on the CPU."""
    import torch
    if world > 1 and name in ('auto', 'cuda') and torch.cuda.is_available():
        return f'cuda:{local_rank}'
    return name


def _pixel_options(args):
    """The options that change an output's pixels or format (a change recomputes finished outputs)."""
    keys = ('opt', 'param_key', 'tile', 'tile_overlap', 'tile_batch', 'amp', 'self_ensemble', 'merge_lora',
            'bands', 'max_value', 'gray', 'stretch', 'cog', 'no_geo', 'save_maps')
    return {k: getattr(args, k, None) for k in keys}


def _prepare(args, device):
    """Every check before any work (identical on every rank): inputs, outputs, the model, the records."""
    for raster in (False, True):  # the tile options, checked before anything is read
        tile_args(args, raster)
    files = list_inputs(args.input)
    check_device(device)
    plan_outputs(files, args.output, 1, False, 0)  # input-safety checks before the slow part
    model = load_model(args.model, device, opt=args.opt, param_key=args.param_key,
                       amp=None if args.amp == 'none' else args.amp, self_ensemble=args.self_ensemble,
                       merge_lora=args.merge_lora, backend=args.backend)
    if args.tile is None:  # a fixed-tile ONNX file runs in its own tile size
        args.tile = getattr(model.net, 'fixed_tile', None)
    model.engine.tile_for(tile_args(args, raster=True))  # a fixed-tile file refuses another tile, before any work
    if args.tile:  # before any image is read: a tile off the window grid gives seams, silently
        check_tile(tile_args(args, False), model.multiple, '--tile', 'the window of the network,')
    if args.save_maps and not model.num_maps:
        raise InferError(f'--save-maps: {args.model} gives no semantic maps (a network without guidance, or an '
                         'ONNX file); save maps from the checkpoint, or export with segsr-export --maps for QA.')
    plan = plan_outputs(files, args.output, model.scale, args.save_maps, model.num_maps if args.save_maps else 0)
    records = DoneRecords(args.output, fingerprint(args.model, _pixel_options(args)))
    todo, skipped = sort_out(plan, records, args.overwrite)
    check_inputs([src for src, _, _ in todo], args)
    return model, records, todo, skipped


def _scene_progress(model, args, unit, job):
    """Under many ranks a raster's tiles advance the job's line (no line per scene); alone, a line per scene."""
    from segsr_basicsr.inference.batch import rank_and_world
    if args.no_progress:
        return False
    if rank_and_world()[1] == 1:
        return True
    if not streams(unit.src):
        return False
    tile = tile_args(args, raster=True)
    tiles = model.count_tiles(unit.src, tile.size, tile.overlap, unit.strip)
    return lambda n: job.advance(unit.pixels / 1e6 * n / tiles)


def _run_one(model, args, unit, outs, job):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', SceneWarning)
        line = _run_file(model, args, unit.src, outs[0], outs[1:], unit.strip, _scene_progress(model, args, unit, job))
    for w in caught:
        if issubclass(w.category, SceneWarning):
            print(f'segsr-infer: warning: {w.message}', file=sys.stderr, flush=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(line, flush=True)


def _split(model, args):
    """(assemble, strips_of) for run_share: how a large raster is shared among ranks in strips of tile rows."""
    if args.no_split:
        return None, None
    tile = tile_args(args, raster=True)

    def assemble(src, out, maps, parts, map_parts):
        model.assemble_file(src, parts, out, map_parts=map_parts, maps_dst=maps, **_raster_kw(args))
        print(f'{src} -> {out} (assembled from {len(parts)} bands)', flush=True)

    return assemble, lambda src, parts: model.scene_strips(src, parts, tile.size, tile.overlap)


def _summary(rank, world, done_mp, skipped, t0):
    """Rank 0: one line for the whole job (every rank's scenes and megapixels)."""
    from segsr_basicsr.utils.dist import gather_objects
    totals = gather_objects(done_mp)
    if rank == 0:
        n, mp = round(sum(t[0] for t in totals)), sum(t[1] for t in totals)
        skip = f'; {skipped} already done, skipped' if skipped else ''
        print(f'segsr-infer: {n} scene(s), {mp:.2f} LR MP on {world} rank(s) in {time.time() - t0:.1f} s{skip}',
              flush=True)


def main(argv=None):
    from segsr_basicsr.utils.cli import exit_on_user_error

    args = parse_args(argv)
    t0 = time.time()
    try:
        with exit_on_user_error('segsr-infer'):
            rank, world, local_rank = _ranks(args.launcher)
            model, records, todo, skipped = _prepare(args, _rank_device(args.device, world, local_rank))
            mine, mp, skipped = run_share(todo, skipped, records, args.output,
                                          lambda unit, outs, job: _run_one(model, args, unit, outs, job),
                                          *_split(model, args), progress=not args.no_progress,
                                          overwrite=args.overwrite)
            _summary(rank, world, (sum(u.share for u in mine), mp), len(skipped), t0)
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
