#!/usr/bin/env python
"""Generate the offline demo dataset: synthetic aerial-like scenes, HR + bicubic LR x4.

Deterministic (seeded) and a few seconds on CPU, so `make demo` and the tests need nothing
from outside the repo. Re-running with the same arguments on an existing demo folder is a
no-op; any other existing folder is never overwritten.
"""
import argparse
import json
from pathlib import Path

from segsr_basicsr.data import prep
from segsr_basicsr.data.synthetic import aerial_scene

SCALE = 4
STAMP = '.segsr_demo.json'
VAL_SIZES = [(128, 128), (100, 124), (64, 96), (116, 80)]  # (h, w), multiples of 4
SCENE_LR = (150, 200)  # (h, w): neither side a multiple of 16, to exercise tiling and padding


def build(out, seed, n_train, tile, lmdb):
    (out / 'train' / 'HR').mkdir(parents=True)
    (out / 'train' / f'LR_x{SCALE}').mkdir()
    for i in range(n_train):
        hr, lr = prep.hr_lr_pair(aerial_scene(tile, tile, [seed, 0, i]), SCALE)
        prep.write_png(out / 'train' / 'HR' / f'demo_train_{i:03d}.png', hr)
        prep.write_png(out / 'train' / f'LR_x{SCALE}' / f'demo_train_{i:03d}.png', lr)
    (out / 'val' / 'HR').mkdir(parents=True)
    (out / 'val' / f'LR_x{SCALE}').mkdir()
    for i, (h, w) in enumerate(VAL_SIZES):
        hr, lr = prep.hr_lr_pair(aerial_scene(h, w, [seed, 1, i]), SCALE)
        prep.write_png(out / 'val' / 'HR' / f'demo_val_{i:03d}.png', hr)
        prep.write_png(out / 'val' / f'LR_x{SCALE}' / f'demo_val_{i:03d}.png', lr)
    (out / 'scene').mkdir()
    hr, lr = prep.hr_lr_pair(aerial_scene(SCENE_LR[0] * SCALE, SCENE_LR[1] * SCALE, [seed, 2, 0]), SCALE)
    prep.write_png(out / 'scene' / 'demo_scene_HR.png', hr)
    prep.write_png(out / 'scene' / 'demo_scene_LR.png', lr)
    if lmdb:
        for sub in ('HR', f'LR_x{SCALE}'):
            prep.write_lmdb(out / 'train' / sub, out / 'train' / f'{sub}.lmdb', {})


def show_layout(out):
    print(f'\nDemo data in {out}/ (scale x{SCALE}):')
    for d in sorted(p for p in out.rglob('*') if p.is_dir() and not p.name.startswith('.')):
        if d.suffix == '.lmdb':
            print(f'  {d.relative_to(out)}/  (BasicSR LMDB, keys in meta_info.txt)')
            continue
        files = sorted(d.glob('*.png'))
        if files:
            from PIL import Image
            sizes = sorted({Image.open(f).size for f in files})
            size_txt = ', '.join(f'{w}x{h}' for w, h in sizes[:4]) + (' ...' if len(sizes) > 4 else '')
            print(f'  {str(d.relative_to(out)) + "/":<16} {len(files):3d} PNG  {size_txt} (WxH)')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='demo_data', help='output folder (default: demo_data)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=24, help='number of training tiles (default: 24)')
    parser.add_argument('--tile', type=int, default=128, help='training tile size in HR pixels (default: 128)')
    parser.add_argument('--lmdb', action='store_true', help='also pack train/HR and train/LR_x4 into LMDB')
    args = parser.parse_args()
    if args.num_train < 1:
        raise prep.PrepError(f'--num-train must be >= 1, got {args.num_train}.')
    if args.tile % SCALE or args.tile < 16:
        raise prep.PrepError(f'--tile must be a multiple of {SCALE} and >= 16, got {args.tile}.')
    out = Path(args.out)
    recipe = dict(seed=args.seed, num_train=args.num_train, tile=args.tile, lmdb=args.lmdb, scale=SCALE, version=1)
    stamp = out / STAMP
    if out.exists():
        if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
            print(f'{out} already holds this demo dataset (same recipe); nothing to do.')
            show_layout(out)
            return
        raise prep.PrepError(f'{out} exists and is not this demo dataset; refusing to overwrite. '
                             'Delete it (make clean-demo) or pass another --out.')
    prep.check_writable(out)
    with prep.staged_output(out) as tmp:
        build(tmp, args.seed, args.num_train, args.tile, args.lmdb)
        prep.write_json(tmp / STAMP, recipe)
    show_layout(out)


if __name__ == '__main__':
    prep.run_cli(main)
