"""Super-resolve images without ground truth: a file, a folder, or a large scene.

    python -m segsr_basicsr.infer -opt options/test/HAT/test_SeGSR_HAT_x4.yml --model net_g_latest.pth \\
        --input scene.tif --output results/scene --tile 256 --tile-overlap 32

The network is built from ``network_g`` of the option file and loaded from
``--model`` (``params_ema`` when present). Large inputs are processed in
overlapping tiles (:mod:`segsr_basicsr.utils.tiling`) so memory depends on the
tile size. PNG/JPEG/BMP/WebP inputs give PNG outputs; TIFF gives TIFF, and a
GeoTIFF keeps its CRS with the pixel size divided by the scale (needs the
``geo`` extra, rasterio). Inputs are never overwritten, outputs only with
``--overwrite``; every file is written to a temporary name and renamed.
"""
import argparse
import copy
import os
import sys
from pathlib import Path

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)
import numpy as np
import torch

from segsr_basicsr.errors import CheckpointError, InferError, SeGSRError  # noqa: F401
from segsr_basicsr.io.checkpoint import load_state_dict
from segsr_basicsr.io.images import (IMG_EXTS, TIFF_EXTS, add_image_args, image_kwargs, list_images, read_image,
                                     write_image)

GEO_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory


# ----------------------------------------------------------------------------- network
def build_net(opt_path, model_path, param_key=None, device='cpu'):
    """Option file + checkpoint -> network in eval mode on ``device`` (LoRA merged when offered)."""
    from basicsr.archs import build_network

    from segsr_basicsr.utils.options import load_yaml
    opt = load_yaml(opt_path)
    if 'network_g' not in opt:
        raise InferError(f'{opt_path}: has no network_g section; use the option file the model was trained with.')
    net = build_network(copy.deepcopy(opt['network_g']))
    state, param_key = load_state_dict(model_path, param_key, hint='pick one with --param-key')
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InferError(f'{model_path} [{param_key}] does not match network_g of {opt_path}: '
                         f'{len(result.missing_keys)} missing key(s) {result.missing_keys[:3]}, '
                         f'{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:3]}. '
                         'Use the option file the model was trained with.')
    if callable(getattr(net, 'merge_lora', None)):  # GuidedBackbone: fold CLIP LoRA into its weights
        net.merge_lora()
    return net.to(device).eval(), opt


def resolve_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise InferError(f'--device {name}: CUDA is not available here; use --device cpu (or auto).')
    return torch.device(name)


# ----------------------------------------------------------------------------- files
def list_inputs(inputs):
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = [p / n for n in list_images(p)]
            if not found:
                raise InferError(f'{p}: folder holds no images ({", ".join(IMG_EXTS)}).')
            files += found
        elif p.is_file():
            if not p.name.lower().endswith(IMG_EXTS):
                raise InferError(f'{p}: not an image file ({", ".join(IMG_EXTS)}).')
            files.append(p)
        else:
            raise InferError(f'--input {p}: no such file or folder.')
    return files


def plan_outputs(files, out_dir, scale, save_maps, num_maps, overwrite):
    """(input, output, [map outputs]) per file; refuses anything that could destroy an input or an output."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InferError(f'--output {out_dir}: exists and is not a folder.')
    in_dirs = {f.parent.resolve() for f in files}
    if out_dir.resolve() in in_dirs:
        raise InferError(f'--output {out_dir}: is the folder of the input image(s); results must go to another '
                         'folder so that inputs are never overwritten (e.g. --output results/sr).')
    inputs = {f.resolve() for f in files}
    plan, seen = [], set()
    for f in files:
        ext = '.tif' if f.suffix.lower() in TIFF_EXTS else '.png'
        out = out_dir / f'{f.stem}_SeGSR_x{scale}{ext}'
        maps = [out_dir / f'{f.stem}_SeGSR_x{scale}_semantic_unit{k + 1}.png' for k in range(num_maps)] \
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


def is_geotiff(path):
    if Path(path).suffix.lower() not in TIFF_EXTS:
        return False
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            return any(t in tif.pages[0].tags for t in GEO_TAGS)
    except Exception:  # noqa: BLE001 - not readable as TIFF: the image reader reports it
        return False


def geo_profile(path, scale, no_geo):
    """GeoTIFF input -> (crs, transform of the SR grid) via rasterio; None for plain images."""
    if not is_geotiff(path):
        return None
    try:
        import rasterio
        from rasterio.transform import Affine
    except ImportError:
        if no_geo:
            return None
        raise InferError(f'{path}: is a GeoTIFF, and keeping its georeferencing needs rasterio '
                         "(pip install 'segsr_basicsr[geo]'). Or pass --no-geo to write a plain TIFF.")
    if no_geo:
        return None
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    # same origin and extent, pixel size / scale (affine >= 2.4 spells composition '@')
    shrink = Affine.scale(1 / scale)
    return {'crs': crs, 'transform': transform @ shrink if hasattr(Affine, '__matmul__') else transform * shrink}


# ----------------------------------------------------------------------------- one image
def super_resolve(net, img_bgr, device, tile=None, overlap=32, batch=1, amp=None, save_maps=False, progress=None,
                  scale=None):
    """uint8 BGR (H, W, 3) -> SR uint8 BGR (H*s, W*s, 3), and K maps (E, H, W) float32 when ``save_maps``.

    The scene stays uint8 (tiles are converted on the fly); the SR result is rounded
    like BasicSR's tensor2img and written into a uint8 array block by block as the
    tiles finish, so only about one tile (plus an overlap strip) is held in float.
    """
    from segsr_basicsr.models.segsr_model import autocast, forward_padded
    from segsr_basicsr.utils.tiling import tiled_forward

    h, w = img_bgr.shape[:2]
    # a uint8 BGR view of the scene; each tile becomes float RGB on the device only when it is processed
    lq = torch.from_numpy(np.ascontiguousarray(img_bgr)).permute(2, 0, 1).unsqueeze(0)
    scale = scale or getattr(net, 'upscale', None) or _infer_scale(net, device)
    sr = None
    maps = []

    def sink(i, r0, r1, c0, c1, block):
        nonlocal sr
        if i == 0:
            if sr is None:
                sr = np.empty((h * scale, w * scale, 3), np.uint8)
            rgb = block[0].clamp_(0, 1).mul_(255).round_().byte().permute(1, 2, 0).numpy()
            sr[r0:r1, c0:c1] = rgb[..., ::-1]
        else:
            if len(maps) < i:
                maps.append(np.empty((block.shape[1], h, w), np.float32))
            maps[i - 1][:, r0:r1, c0:c1] = block[0].numpy()

    if save_maps:
        net.record_semantic_maps = True
    try:
        with torch.no_grad(), autocast(device, amp):
            fn = lambda t: forward_padded(net, t.flip(1).float().div_(255), save_maps)  # noqa: E731
            size = tile or max(h, w)
            tiled_forward(fn, lq, size, min(overlap, size - 1) if tile else 0,
                          multiple=getattr(net, 'size_multiple', 1), batch=batch, device=device,
                          out_device=torch.device('cpu'), sink=sink, progress=progress)
    finally:
        if save_maps:
            net.record_semantic_maps = False
            net.semantic_maps = None
    return sr, maps


def count_tiles(h, w, tile, overlap, multiple):
    from segsr_basicsr.utils.tiling import tile_starts
    if not tile:
        return 1
    import math
    t = math.ceil(tile / multiple) * multiple
    return len(tile_starts(h, min(t, h), overlap, multiple)) * len(tile_starts(w, min(t, w), overlap, multiple))


# ----------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='segsr-infer', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', required=True, help='option file whose network_g built the checkpoint')
    p.add_argument('--model', required=True, help='checkpoint (.pth) written by training')
    p.add_argument('--param-key', default=None, help='params_ema (default when present) or params')
    p.add_argument('--input', required=True, nargs='+', help='image file(s) and/or folder(s)')
    p.add_argument('--output', required=True, help='output folder (not an input folder)')
    p.add_argument('--tile', type=int, default=0, help='tile size in LR pixels (0: whole image at once)')
    p.add_argument('--tile-overlap', type=int, default=32, help='overlap between tiles in LR pixels')
    p.add_argument('--tile-batch', type=int, default=1, help='tiles per forward pass')
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    p.add_argument('--amp', default='none', choices=('bf16', 'fp16', 'none'), help='autocast dtype')
    p.add_argument('--save-maps', action='store_true', help='also write semantic heat maps per SR unit')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs (never inputs)')
    p.add_argument('--no-geo', action='store_true', help='write GeoTIFF inputs as plain TIFF (no rasterio)')
    add_image_args(p)
    args = p.parse_args(argv)
    if args.tile < 0 or (args.tile and not 0 <= args.tile_overlap < args.tile):
        p.error(f'--tile {args.tile} --tile-overlap {args.tile_overlap}: need tile > 0 and 0 <= overlap < tile '
                '(or --tile 0 for no tiling)')
    if args.tile_batch < 1:
        p.error('--tile-batch must be >= 1')
    return args


def main(argv=None):
    from tqdm import tqdm

    from segsr_basicsr.models.segsr_model import parse_amp
    from segsr_basicsr.utils.cli import exit_on_user_error
    from segsr_basicsr.utils.visualize import semantic_overlays

    args = parse_args(argv)
    with exit_on_user_error('segsr-infer'):
        files = list_inputs(args.input)
        device = resolve_device(args.device)
        amp = parse_amp(args.amp, '--amp')
        plan_outputs(files, args.output, 1, False, 0, True)  # input-safety checks before the slow part
        net, _ = build_net(args.opt, args.model, args.param_key, device)
        scale = getattr(net, 'upscale', None) or _infer_scale(net, device)
        num_maps = 0
        if args.save_maps:
            if getattr(net, 'guidance', None) is None or not hasattr(net, 'record_semantic_maps'):
                raise InferError(f'--save-maps: network_g of {args.opt} has no semantic guidance, so there are '
                                 'no maps to save.')
            num_maps = len(net.sr_units)
        plan = plan_outputs(files, args.output, scale, args.save_maps, num_maps, args.overwrite)
        multiple = getattr(net, 'size_multiple', 1)
        for src, out, map_paths in plan:
            geo = geo_profile(src, scale, args.no_geo) if out.suffix == '.tif' else None
            img = read_image(src, **image_kwargs(args))
            h, w = img.shape[:2]
            with tqdm(total=count_tiles(h, w, args.tile, args.tile_overlap, multiple), unit='tile',
                      desc=src.name, disable=None) as bar:
                sr, maps = super_resolve(net, img, device, args.tile, args.tile_overlap, args.tile_batch, amp,
                                         args.save_maps, bar.update, scale)
            write_image(out, sr, geo)
            for path, overlay in zip(map_paths, semantic_overlays(sr, maps)):
                write_image(path, overlay)
            tqdm.write(f'{src} -> {out} ({w}x{h} -> {sr.shape[1]}x{sr.shape[0]})')


def _infer_scale(net, device):
    """Scale of a plain BasicSR arch without ``upscale``: run it once on a small input."""
    with torch.no_grad():
        x = torch.zeros(1, 3, 16, 16, device=device)
        return net(x).shape[-1] // 16


if __name__ == '__main__':
    main()
