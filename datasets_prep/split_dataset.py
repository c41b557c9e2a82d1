#!/usr/bin/env python
"""Split a class-per-folder dataset (UCMerced, AID, SIRI-WHU, ...) into train/val/test.

Stratified: every class is shuffled with its own seeded generator and cut by the ratios
(n_val = round(n*val), n_test = round(n*test), train gets the rest). Or give your own split
with --split-from DIR (train.txt / val.txt / test.txt, lines `class/file.ext`).

Writes, under --out:
  splits/{train,val,test}.txt   the exact lists used (share these to reproduce the split)
  splits/split.json             seed, ratios, per-class counts
  splits/manifest.json          every file of each split with its SHA-256, the seed and ratios, and one
                                digest of the whole split (cite it; a test run records the digest of
                                the images it scored), and the SHA-256 of every HR image written:
                                training and testing refuse a split whose images changed since
  {train,val,test}/HR/*.png     each image as 8-bit RGB PNG, named <class-prefixed stem>.png
                                (skip with --lists-only)

A flat folder of scenes (no class sub-folders) works too: it is one class.
Next step: datasets_prep/make_bicubic.py --input OUT/{train,val,test}/HR --scales 4
"""
import argparse
from collections import Counter
from pathlib import Path

from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', required=True, help='dataset root: a folder of class folders, or a flat folder')
    parser.add_argument('--out', required=True, help='output root')
    parser.add_argument('--ratios', type=float, nargs=3, default=[8, 1, 1], metavar=('TRAIN', 'VAL', 'TEST'),
                        help='split ratios, normalised (default: 8 1 1)')
    parser.add_argument('--seed', type=int, default=0, help='shuffle seed (default: 0)')
    parser.add_argument('--split-from', metavar='DIR', help='use the split lists in DIR instead of a random split')
    parser.add_argument('--lists-only', action='store_true', help='write the split lists, not the images')
    prep.add_image_args(parser)
    args = parser.parse_args()

    image_kw = prep.image_kwargs(args)
    src, out = Path(args.src), Path(args.out)
    prep.check_writable(out)
    prep.check_apart(out, [src])
    classes = prep.scan_classes(src)
    if args.split_from:
        splits = prep.read_split_dir(args.split_from, classes)
        method = dict(split_from=str(args.split_from))
    else:
        splits = prep.stratified_split(classes, args.ratios, args.seed)
        method = dict(seed=args.seed, ratios=args.ratios)
    splits = {s: v for s, v in splits.items() if v}
    targets = [out / 'splits'] + ([] if args.lists_only else [out / s / 'HR' for s in splits])

    prep.check_free(*targets)
    prep.check_writable(out)
    if not args.lists_only:  # the plan: output names, every header, before any file is written
        for files in splits.values():
            prep.output_names(src, files)
        prep.check_images([src / f for files in splits.values() for f in files])
    counts = {s: dict(sorted(Counter(prep.class_of(f) for f in files).items())) for s, files in splits.items()}
    with prep.staged_outputs(*targets) as tmps:
        tmps[0].mkdir()
        for split, files in splits.items():
            (tmps[0] / f'{split}.txt').write_text(''.join(f + '\n' for f in files), encoding='utf-8')
        prep.write_json(tmps[0] / 'split.json', dict(method, counts=counts, classes=sorted(classes)))
        for (split, files), tmp in zip(splits.items(), tmps[1:]):
            prep.convert_images(src, files, tmp, image_kw, desc=split)
        manifest = prep.split_manifest(src, splits, method, None if args.lists_only else dict(zip(splits, tmps[1:])))
        prep.write_json(tmps[0] / 'manifest.json', manifest)

    print(f'{len(classes)} class(es); ' + ', '.join(f'{s}: {len(v)}' for s, v in splits.items()))
    unlisted = sum(len(v) for v in classes.values()) - sum(len(v) for v in splits.values())
    if unlisted:
        print(f'note: {unlisted} image(s) in {src} are in no split list.')
    print(f'lists: {out / "splits"}' + ('' if args.lists_only else f'; images: {out}/{{{",".join(splits)}}}/HR'))
    print(f'split digest (sha256 of manifest.json\'s files and hashes): {manifest["digest"]}')


if __name__ == '__main__':
    prep.run_cli(main)
