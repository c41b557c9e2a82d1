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
from basicsr.utils.matlab_functions import imresize
from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of HR images (mod-cropped to the scale)')
    parser.add_argument('--lr', required=True, help='folder of LR images with the same names')
    parser.add_argument('--scale', type=int, required=True)
    args = parser.parse_args()

    hr_dir, lr_dir = Path(args.hr), Path(args.lr)
    names = prep.list_images(hr_dir)
    if not names:
        raise prep.PrepError(f'{hr_dir}: no images found.')
    psnr, ssim = [], []
    for name in names:
        lr_path = lr_dir / name
        if not lr_path.is_file():
            raise prep.PrepError(f'{lr_path}: missing (every HR image needs an LR image of the same name).')
        hr, lr = prep.read_image(hr_dir / name), prep.read_image(lr_path)
        if (lr.shape[0] * args.scale, lr.shape[1] * args.scale) != hr.shape[:2]:
            raise prep.PrepError(f'{lr_path}: {lr.shape[1]}x{lr.shape[0]} x{args.scale} does not give the HR size '
                                 f'{hr.shape[1]}x{hr.shape[0]}; check --scale.')
        up = np.clip(np.round(imresize(lr.astype(np.float64) / 255., args.scale) * 255.), 0, 255)
        psnr.append(calculate_psnr(up, hr, args.scale, test_y_channel=True))
        ssim.append(calculate_ssim(up, hr, args.scale, test_y_channel=True))
    print(f'bicubic x{args.scale} on {len(names)} images of {hr_dir}: '
          f'PSNR {np.mean(psnr):.4f} dB, SSIM {np.mean(ssim):.4f} (Y channel, crop {args.scale})')


if __name__ == '__main__':
    prep.run_cli(main)
