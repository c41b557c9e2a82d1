#!/usr/bin/env python
"""Pack image folders into BasicSR LMDBs (basicsr.utils.lmdb_util.LmdbMaker).

Each FOLDER becomes FOLDER.lmdb (or --lmdb PATH for a single folder) with data.mdb and
meta_info.txt (`NAME.png (h,w,c) level` per line), keys = file stems, sorted. Point
PairedImageDataset (io_backend: lmdb) at HR_x4.lmdb / LR_x4.lmdb, or SeGSRBicubicDataset at an
HR .lmdb. Several folders given together must hold the same names (an HR/LR pair), unless
--unpaired. Existing LMDBs are never overwritten or appended to; all LMDBs of a run appear only if
every one succeeds. Reruns are byte-identical
(lock.mdb, LMDB's runtime lock table, is not kept; LMDB recreates it when needed).
"""
import argparse
import os
from pathlib import Path

from segsr_basicsr.data import prep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', help='image folders, e.g. OUT/train/HR_x4 OUT/train/LR_x4')
    parser.add_argument('--lmdb', help='output path (one folder only; must end with .lmdb)')
    parser.add_argument('--unpaired', action='store_true', help='do not require the folders to hold the same names')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG level inside the LMDB (BasicSR: 1)')
    prep.add_image_args(parser)
    args = parser.parse_args()
    image_kw = prep.image_kwargs(args)
    if not 0 <= args.compress_level <= 9:
        raise prep.PrepError(f'--compress-level must be 0..9 (PNG levels), got {args.compress_level}.')
    if args.lmdb and len(args.folders) > 1:
        raise prep.PrepError('--lmdb takes one folder; with several, each FOLDER becomes FOLDER.lmdb.')
    folders = [Path(f) for f in args.folders]
    targets = [Path(args.lmdb)] if args.lmdb else [f.parent / f'{f.name}.lmdb' for f in folders]
    prep.check_free(*targets)
    if len(folders) > 1 and not args.unpaired:
        names = [{os.path.splitext(f)[0] for f in prep.list_images(d)} for d in folders]
        for d, n in zip(folders[1:], names[1:]):
            if n != names[0]:
                diff = sorted(n ^ names[0])
                raise prep.PrepError(f'{folders[0]} and {d} do not hold the same image names (e.g. {diff[:3]}); '
                                     'pass --unpaired if that is intended.')
    all_keys = prep.make_lmdb(zip(folders, targets), image_kw, args.compress_level)
    for target, keys in zip(targets, all_keys):
        print(f'{target}: {len(keys)} images, meta_info: {target / "meta_info.txt"}')


if __name__ == '__main__':
    prep.run_cli(main)
