"""Super-resolve images without ground truth: files, folders, or georeferenced scenes of any size.

    segsr-infer --model net_g_latest.pth --input scene.tif --output results/ --tile 256 --tile-batch 4

Checkpoints written by training name their network; older ones need the option file
(``-opt options/test_SeGSR_HAT_x4.yml``). Rasters that GDAL reads (GeoTIFF, COG, JP2,
VRT) are streamed window by window into a tiled GeoTIFF (``--cog``: Cloud-Optimised,
with overviews) that keeps the georeferencing, strip layout, dtype, nodata and alpha;
memory is set by ``--tile``, not by the scene. PNG/JPEG/BMP/WebP are read whole and
give PNG. Inputs are never overwritten; every file is written under a temporary name and renamed
when complete. Re-running the same command after any stop does only what is missing (records in
``<output>/.segsr-done/``); an output another checkpoint or option made is refused unless
``--overwrite``, and one job at a time writes in a folder (docs/contract.md, "Who may replace an
output"). Many GPUs or machines:
``torchrun --nproc_per_node=N -m segsr_basicsr.infer ...`` shares the inputs among the ranks by pixel
count. A stop (SIGTERM, SIGINT, SIGUSR1, SIGUSR2; under torchrun sent to the launcher, which forwards it)
exits 75 and the same command finishes the job (``python -m segsr_basicsr.launch`` for torchrun's exit
code; docs/contract.md).

This module is argument parsing: the work is :meth:`SeGSRUpscaler.upscale_batch`, the one batch path
the API offers too (:mod:`segsr_basicsr.inference.batch`). """
import argparse
import time

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)

from segsr_basicsr.api import load_model
from segsr_basicsr.inference.batch_plan import check_job_paths
from segsr_basicsr.inference.scene_quality import summary_words
from segsr_basicsr.io.images import add_image_args, image_kwargs
from segsr_basicsr.options import RASTER_TILE, signal_numbers, tile_spec
from segsr_basicsr.utils.dist import end_process_group, gather_objects, init_process_group, rank_device, record_stop
from segsr_basicsr.utils.cli import STOP_EXIT_CODE, exit_on_stop_signals, exit_on_user_error
from segsr_basicsr.utils.preflight import check_device


def _tile_size(text):
    return text if text == 'auto' else int(text)


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
    p.add_argument('--tile', type=_tile_size, default='auto',
                   help=f'tile size in LR pixels (default auto: {RASTER_TILE} for rasters, whole image otherwise; '
                   '0: whole image at once)')
    p.add_argument('--tile-overlap', type=int, default=None,
                   help='overlap between tiles in LR pixels (default: 32, at most a quarter of the tile)')
    p.add_argument('--tile-batch', type=int, default=1, help='tiles per forward pass (more is faster on a GPU)')
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    p.add_argument('--amp', default='none', choices=('bf16', 'fp16', 'none'), help='autocast dtype')
    p.add_argument('--save-maps', action='store_true', help='also write semantic maps per SR unit (PNG overlays '
                   'for images; float32 GeoTIFFs on the LR grid for rasters)')
    p.add_argument('--overwrite', action='store_true', help='recompute and replace every output, also those another '
                   'checkpoint or option made or no record explains (never inputs; docs/contract.md)')
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
    p.add_argument('--quality', action='store_true', help='score each output against its input without ground truth: '
                   'LR-consistency in dB (the output brought back to the LR grid by the training degradation) on '
                   'its line, the summary and in <output>.quality.json (docs/metrics.md)')
    p.add_argument('--quality-map', action='store_true', help='--quality and its error map on the LR grid, '
                   '<output>_lrc.tif (float32, georeferenced like the input, NaN where not scored)')
    add_image_args(p)
    return p.parse_args(argv)


def _summary(rank, world, result, t0):
    """Rank 0: one line for the whole job (every rank's scenes and megapixels)."""
    totals = gather_objects((result['scenes'], result['megapixels'], result['quality']))
    if rank == 0:
        n, mp = round(sum(t[0] for t in totals)), sum(t[1] for t in totals)
        skip = f'; {result["skipped"]} already done, skipped' if result['skipped'] else ''
        print(f'segsr-infer: {n} scene(s), {mp:.2f} LR MP on {world} rank(s) in {time.time() - t0:.1f} s{skip}'
              f'{summary_words({k: v for t in totals for k, v in t[2].items()})}', flush=True)


def run(args):
    """Checks that need no model first (inputs, outputs, device), then the model, then the batch."""
    t0 = time.time()
    rank, world, local_rank = init_process_group(args.launcher)
    device = rank_device(args.device, world, local_rank)
    tile = tile_spec({'size': args.tile, 'overlap': args.tile_overlap, 'batch': args.tile_batch}, '--tile')
    check_job_paths(args.input, args.output)
    check_device(device)
    model = load_model(args.model, device, opt=args.opt, param_key=args.param_key,
                       amp=None if args.amp == 'none' else args.amp, self_ensemble=args.self_ensemble,
                       merge_lora=args.merge_lora, backend=args.backend)
    result = model.upscale_batch(args.input, args.output, tile=tile, save_maps=args.save_maps, cog=args.cog, no_geo=args.no_geo,
                                 stretch=args.stretch, **image_kwargs(args), overwrite=args.overwrite,
                                 split=not args.no_split, progress=not args.no_progress,
                                 log=lambda line: print(line, flush=True),
                                 quality='map' if args.quality_map else args.quality)
    _summary(rank, world, result, t0)


def main(argv=None):
    args = parse_args(argv)
    record = lambda: record_stop(STOP_EXIT_CODE, 'segsr-infer stopped by a signal; run the same command to finish')  # noqa: E731
    try:
        with exit_on_stop_signals('segsr-infer', signal_numbers(None), record), exit_on_user_error('segsr-infer'):
            run(args)
    finally:
        end_process_group()


if __name__ == '__main__':
    main()
