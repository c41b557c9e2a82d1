#!/usr/bin/env python
"""Cut large scenes into overlapping sub-images (BasicSR's extract_subimages rule).

Tiles start every --step pixels; one more tile flush with the right/bottom border is added
when more than --thresh-size pixels would be left over. Output: --out/<stem>_s001.png, ...
Run it on HR images before make_bicubic.py (or before training on the fly) so that each
training sample is a small file.
"""
import argparse

from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True, help='folder of large images')
    parser.add_argument('--out', required=True, help='new folder for the sub-images')
    parser.add_argument('--crop-size', type=int, default=480, help='sub-image size (default: 480)')
    parser.add_argument('--step', type=int, default=240, help='stride between sub-images (default: 240)')
    parser.add_argument('--thresh-size', type=int, default=0,
                        help='add a border-flush tile if more than this many pixels remain (default: 0)')
    prep.add_image_args(parser)
    args = parser.parse_args()
    image_kw = prep.image_kwargs(args)
    n = prep.extract_subimages(args.input, args.out, args.crop_size, args.step, args.thresh_size, image_kw)
    print(f'wrote {n} sub-images to {args.out}')


if __name__ == '__main__':
    prep.run_cli(main)
