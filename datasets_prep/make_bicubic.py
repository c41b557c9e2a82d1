#!/usr/bin/env python
"""Make HR/LR pairs with BasicSR's MATLAB-compatible bicubic (basicsr.utils.matlab_functions.imresize).

For each --scales s, writes under --out (default: next to each --input folder):
  HR_x<s>/NAME.png   the HR mod-cropped to a multiple of s (so HR = LR * s exactly)
  LR_x<s>/NAME.png   imresize(HR/255, 1/s), rounded half-to-even and clipped to 8 bit

The rounding is the one SeGSRBicubicDataset uses on the fly, so these LR files equal the
on-the-fly LR bit for bit. Existing outputs are never overwritten; all outputs of a run (every
--input) are planned together and appear only when every image succeeded.
"""
import argparse
from pathlib import Path

from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True, nargs='+', help='folder(s) of HR images, e.g. OUT/*/HR')
    parser.add_argument('--out', help='output root, one --input only (default: the parent of each --input)')
    parser.add_argument('--scales', type=int, nargs='+', default=[4], help='integer scales (default: 4)')
    prep.add_image_args(parser)
    args = parser.parse_args()
    image_kw = prep.image_kwargs(args)
    if min(args.scales) < 2 or len(set(args.scales)) != len(args.scales):
        raise prep.PrepError(f'--scales must be distinct integers >= 2, got {args.scales}.')
    if args.out and len(args.input) > 1:
        raise prep.PrepError('--out takes one --input; with several, outputs go next to each input folder.')
    outs = [Path(args.out)] if args.out else [Path(i).resolve().parent for i in args.input]
    # one plan for every input: clashing, existing or unwritable outputs are refused before any work
    for targets in prep.make_bicubic_many(list(zip(args.input, outs)), args.scales, image_kw):
        print('wrote ' + ', '.join(str(t) for t in targets))

if __name__ == '__main__':
    prep.run_cli(main)
