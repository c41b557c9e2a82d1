"""Does my tile size change the numbers? The tiled result against the untiled one, for your image and network.

    python -m segsr_basicsr.seams --model net_g_latest.pth --input scene.png --tile 64 128 --tile-overlap 8 16

For each tile size and overlap: the largest and mean |tiled - untiled| in 8-bit levels, how many output
pixels differ, and the PSNR in dB of tiled against untiled (``inf``: identical). The image is read as
``segsr-infer`` reads images (8-bit, ``--bands``/``--max-value``); a large one is cut to its central
``--crop`` x ``--crop`` LR pixels, since the untiled run holds the whole crop at once.
"""
import argparse

import numpy as np

import segsr_basicsr  # noqa: F401,I001  (compat layer + registration, before basicsr)

from segsr_basicsr.api import load_model
from segsr_basicsr.io.images import add_image_args, image_kwargs, read_image


def seam_table(model, img, tiles, overlaps):
    """Rows (tile, overlap, max |diff|, mean |diff|, share of pixels that differ, PSNR dB) of the tiled
    result against the untiled one on ``img`` (H, W, 3) uint8; pairs the network cannot run are left out."""
    whole = model.upscale(img, tile=0).astype(np.float64)
    rows = []
    for tile in tiles:
        for overlap in overlaps:
            if overlap * 4 > tile or tile >= max(img.shape[:2]):
                continue
            diff = np.abs(model.upscale(img, tile=tile, overlap=overlap).astype(np.float64) - whole)
            mse = float((diff ** 2).mean())
            psnr = float('inf') if mse == 0 else 10 * np.log10(255. ** 2 / mse)
            rows.append((tile, overlap, float(diff.max()), float(diff.mean()), float((diff > 0).mean()), psnr))
    return rows


def center_crop(img, size):
    """The central ``size`` x ``size`` pixels of ``img`` (all of it when smaller)."""
    h, w = img.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y0:y0 + size, x0:x0 + size]


def render(rows, name, shape) -> str:
    lines = [f'{name}: {shape[1]}x{shape[0]} LR pixels, tiled vs untiled (8-bit levels)',
             '| tile | overlap | max abs diff | mean abs diff | pixels that differ | PSNR tiled vs untiled (dB) |',
             '|---:|---:|---:|---:|---:|---:|']
    for tile, overlap, mx, mean, share, psnr in rows:
        lines.append(f'| {tile} | {overlap} | {mx:.0f} | {mean:.4f} | {100 * share:.2f}% | {psnr:.2f} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='python -m segsr_basicsr.seams', description=__doc__.split('\n\n')[0])
    p.add_argument('-opt', default=None, help='option file whose network_g built the checkpoint (older checkpoints)')
    p.add_argument('--model', required=True, help='checkpoint written by training, or an .onnx file')
    p.add_argument('--input', required=True, help='an image (PNG, JPEG, TIFF) read whole, as segsr-infer reads it')
    p.add_argument('--tile', type=int, nargs='+', default=[64, 128, 256], help='tile sizes in LR pixels')
    p.add_argument('--tile-overlap', type=int, nargs='+', default=[8, 16, 32], help='overlaps in LR pixels')
    p.add_argument('--crop', type=int, default=512, help='cut a larger image to its central CROP x CROP pixels')
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    add_image_args(p)
    return p.parse_args(argv)


def main(argv=None):
    from segsr_basicsr.utils.cli import exit_on_user_error
    args = parse_args(argv)
    with exit_on_user_error('segsr-seams'):
        model = load_model(args.model, args.device, opt=args.opt)
        img = center_crop(read_image(args.input, **image_kwargs(args))[..., ::-1], args.crop)
        print(render(seam_table(model, np.ascontiguousarray(img), args.tile, args.tile_overlap), args.input,
                     img.shape), flush=True)


if __name__ == '__main__':
    main()
