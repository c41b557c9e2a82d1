#!/usr/bin/env python
"""PSNR/SSIM of plain bicubic upsampling on an HR/LR folder pair: the floor any SR model must beat.

Metrics as BasicSR's validation computes them (Y channel, crop_border = scale), with the LR
upsampled by BasicSR's MATLAB-compatible bicubic, so the numbers sit beside a test log:

    python datasets_prep/bicubic_baseline.py --hr datasets/UCMerced/test/HR_x4 --lr datasets/UCMerced/test/LR_x4 --scale 4
"""
import argparse
from pathlib import Path

import numpy as np

import segsr_basicsr  # noqa: F401  (makes basicsr importable)
from basicsr.metrics import calculate_psnr, calculate_ssim
from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of HR images (mod-cropped to the scale)')
    parser.add_argument('--lr', required=True, help='folder of LR images with the same names')
    parser.add_argument('--scale', type=int, required=True)
    args = parser.parse_args()

    if args.scale < 1:
        raise prep.PrepError(f'--scale must be >= 1, got {args.scale}.')
    hr_dir, lr_dir = Path(args.hr), Path(args.lr)
    names = prep.list_images(hr_dir)
    if not names:
        raise prep.PrepError(f'{hr_dir}: no images found.')
    lr_names = set(prep.list_images(lr_dir))
    extra = sorted(lr_names - set(names))
    if extra:
        raise prep.PrepError(f'{lr_dir / extra[0]}: has no HR image of the same name in {hr_dir} ({len(names)} HR, '
                             f'{len(lr_names)} LR images); pass matching folders.')
    # the plan: every pair present, sizes that fit the scale and SSIM's window after crop_border = scale
    need = 2 * args.scale + 11
    for name in prep.progress(names, 'checking pairs', unit='images'):
        lr_path = lr_dir / name
        if name not in lr_names:
            raise prep.PrepError(f'{lr_path}: missing (every HR image needs an LR image of the same name).')
        (hw, hh), (lw, lh) = prep.image_size(hr_dir / name), prep.image_size(lr_path)
        if (lw * args.scale, lh * args.scale) != (hw, hh):
            raise prep.PrepError(f'{lr_path}: {lw}x{lh} x{args.scale} does not give the HR size '
                                 f'{hw}x{hh}; check --scale.')
        if min(hw, hh) < need:
            raise prep.PrepError(f'{hr_dir / name}: {hw}x{hh} is too small for SSIM with crop_border {args.scale} '
                                 f'(needs {need}x{need}); remove it.')
    psnr, ssim = [], []
    for name in prep.progress(names, f'bicubic x{args.scale}', unit='images'):
        hr, lr = prep.read_image(hr_dir / name), prep.read_image(lr_dir / name)
        up = prep.bicubic_up(lr, args.scale)
        psnr.append(calculate_psnr(up, hr, args.scale, test_y_channel=True))
        ssim.append(calculate_ssim(up, hr, args.scale, test_y_channel=True))
    print(f'bicubic x{args.scale} on {len(names)} images of {hr_dir}: '
          f'PSNR {np.mean(psnr):.4f} dB, SSIM {np.mean(ssim):.4f} (Y channel, crop {args.scale})')


if __name__ == '__main__':
    prep.run_cli(main)
