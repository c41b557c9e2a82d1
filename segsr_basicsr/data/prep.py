"""Dataset preparation for the `datasets_prep/` scripts (and the LR maker `SeGSRBicubicDataset` shares).

One LR maker (:func:`bicubic_lr`) guarantees that an LR file written by
`datasets_prep/make_bicubic.py` is byte-for-byte the LR that the on-the-fly dataset
makes. Images are read and written through :mod:`segsr_basicsr.io`; outputs are
built under :func:`~segsr_basicsr.io.atomic.staged_outputs`, so a target that exists
is never touched and a failed run leaves nothing half-written behind.
"""
import json
import logging
import math
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np

from basicsr.data.transforms import mod_crop
from basicsr.utils.lmdb_util import LmdbMaker
from basicsr.utils.matlab_functions import imresize
from segsr_basicsr.errors import DataError, ImageError
from segsr_basicsr.metrics.quality import MIN_LR_SIDE, degrade
from segsr_basicsr.io.atomic import check_free, staged_output, staged_outputs  # noqa: F401  (scripts use prep.*)
from segsr_basicsr.io.images import (IMG_EXTS, add_image_args, encode_png, image_kwargs, list_images,  # noqa: F401
                                     read_image, write_png)
from segsr_basicsr.io.images import image_size, readable_images  # noqa: F401
from segsr_basicsr.utils.preflight import check_apart, check_writable  # noqa: F401  (scripts use prep.*)
from segsr_basicsr.utils.progress import progress  # noqa: F401

logger = logging.getLogger('basicsr')

SPLITS = ('train', 'val', 'test')

#: the error for dataset-preparation problems (one family with every user-facing error)
PrepError = DataError


# ----------------------------------------------------------------------------- LR making
def bicubic_lr(hr, scale):
    """MATLAB-compatible bicubic x1/scale of an 8-bit HR (H and W multiples of scale), rounded to 8 bit by
    :func:`segsr_basicsr.metrics.quality.degrade` (round half to even, clip 0..255, as BasicSR's
    ``tensor2img``), so the on-the-fly LR equals the PNG the prep script writes, bit for bit."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'HR size {w}x{h} is not a multiple of scale {scale}; mod-crop it first.')
    lr = degrade(hr, scale, np.uint8).astype(np.uint8)
    # contiguous: BasicSR's augment flips in place with cv2
    return np.ascontiguousarray(lr[..., 0] if hr.ndim == 2 else lr)


def min_hr_side(scale: int) -> int:
    """Smallest HR side that gives an LR at ``scale`` (measured: below 2 LR pixels imresize fails)."""
    return MIN_LR_SIDE * scale


def bicubic_up(lr, scale):
    """MATLAB-compatible bicubic x``scale`` of an 8-bit LR, rounded to 8 bit: the baseline beside SR tables."""
    up = imresize(lr.astype(np.float64) / 255., scale)
    return np.clip(np.round(up * 255.), 0, 255).astype(np.uint8)


def hr_lr_pair(hr, scale, name='image'):
    """Mod-crop an 8-bit HR to `scale` and make its LR; an image too small for `scale` is an error."""
    if min(hr.shape[:2]) < min_hr_side(scale):
        raise ImageError(f'{name}: {hr.shape[1]}x{hr.shape[0]} is too small for scale {scale}: the bicubic LR needs '
                         f'at least {MIN_LR_SIDE} pixels a side (HR >= {min_hr_side(scale)}).')
    hr = mod_crop(hr, scale)
    return hr, bicubic_lr(hr, scale)


# ----------------------------------------------------------------------------- files
def check_key(name, where):
    """Output names become LMDB keys: BasicSR needs ASCII, cuts at the first '.', splits at spaces."""
    if not re.fullmatch(r'[A-Za-z0-9_\-]+', name):
        raise PrepError(f'{where}: name {name!r} must use only A-Z a-z 0-9 _ - (BasicSR LMDB keys are ASCII and '
                        "end at the first '.'); rename the file.")


def safe_stem(stem):
    return re.sub(r'[^A-Za-z0-9_\-]+', '_', stem)


def folder_keys(src, sanitize=False):
    """(files, output stems) of the images in `src`; stems must be unique (a.tif + a.png would collide).

    ``sanitize`` maps odd characters to '_' (new names); otherwise a name that cannot be a BasicSR
    LMDB key is an error, so HR/LR/LMDB names keep matching the user's files.
    """
    files = list_images(src)
    if not files:
        raise PrepError(f'{src}: no images ({", ".join(IMG_EXTS)}) in it.')
    keys = [os.path.splitext(f)[0] for f in files]
    if sanitize:
        keys = [safe_stem(k) for k in keys]
    else:
        for f, k in zip(files, keys):
            check_key(k, Path(src) / f)
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise PrepError(f'{src}: several files would get the same output name {dup[:5]} (same stem); rename them.')
    return files, keys


def _progress(items, desc, total=None):
    return progress(items, desc, unit='images', total=total)


def check_images(paths, min_side=1, why=''):
    """The validation pass over inputs: read every header (decodable, size) before any output exists.
    Returns {path: (w, h)}; an image smaller than ``min_side`` is an :class:`ImageError` naming it."""
    sizes = {}
    for path in progress(paths, 'checking inputs', unit='images'):
        w, h = image_size(path)
        if min(w, h) < min_side:
            raise ImageError(f'{path}: {w}x{h} is smaller than {why or min_side}; remove the file or change the '
                             'setting.')
        sizes[path] = (w, h)
    return sizes


# ----------------------------------------------------------------------------- splits
def scan_classes(root):
    """{class: [relative paths]} of a class-per-folder tree; a flat folder is one class ``''``."""
    root = Path(root)
    if not root.is_dir():
        raise PrepError(f'{root}: not a directory.')
    top = list_images(root)
    classes = {'': top} if top else {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        files = list_images(sub)
        if files:
            classes[sub.name] = [f'{sub.name}/{f}' for f in files]
    if not classes:
        raise PrepError(f'{root}: no images ({", ".join(IMG_EXTS)}) in it or in its sub-folders.')
    if '' in classes and len(classes) > 1:
        raise PrepError(f'{root}: has images both directly inside and in sub-folders; '
                        'point --src at a folder of class folders or at a flat folder of scenes.')
    return classes


def output_name(relpath):
    """Flat output name of ``class/file.ext``: the stem, prefixed by the class unless it already is
    (UCMerced ``agricultural/agricultural00.tif`` -> ``agricultural00``;
    SIRI-WHU ``river/1.tif`` -> ``river_1``)."""
    cls, _, fname = relpath.rpartition('/')
    stem = safe_stem(os.path.splitext(fname)[0])
    if cls and not stem.lower().startswith(safe_stem(cls).lower()):
        stem = f'{safe_stem(cls)}_{stem}'
    return stem


def stratified_split(classes, ratios, seed):
    """Split each class with its own seeded shuffle (adding a class never changes the others).

    Per class of n files: n_val = round(n * r_val), n_test = round(n * r_test) (half up),
    train gets the rest. Ratios are normalised, so ``8 1 1`` == ``0.8 0.1 0.1``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PrepError(f'--seed must be an integer >= 0, got {seed!r}.')
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios) or sum(ratios) <= 0:
        raise PrepError(f'--ratios needs 3 non-negative numbers (train val test), got {ratios}.')
    total = sum(ratios)
    r_val, r_test = ratios[1] / total, ratios[2] / total
    out = {s: [] for s in SPLITS}
    for cls, files in classes.items():
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode('utf-8'))])
        order = [files[i] for i in rng.permutation(len(files))]
        n_val, n_test = math.floor(len(files) * r_val + 0.5), math.floor(len(files) * r_test + 0.5)
        out['val'] += order[:n_val]
        out['test'] += order[n_val:n_val + n_test]
        out['train'] += order[n_val + n_test:]
    return {s: sorted(v) for s, v in out.items()}


def read_split_dir(split_dir, classes):
    """Read ``train.txt`` / ``val.txt`` / ``test.txt`` (any present) from a user's split.

    Lines are ``class/file.ext`` relative to --src, or a bare file name if unique; ``#`` starts a comment.
    """
    split_dir = Path(split_dir)
    known = [f for files in classes.values() for f in files]
    by_name = {}
    for f in known:
        by_name.setdefault(f.rpartition('/')[2], []).append(f)
    known = set(known)
    out, seen = {}, {}
    for split in SPLITS:
        path = split_dir / f'{split}.txt'
        if not path.is_file():
            continue
        out[split] = []
        try:
            text = path.read_text(encoding='utf-8')
        except (OSError, UnicodeDecodeError) as e:
            raise PrepError(f'{path}: cannot be read as a split list of UTF-8 text lines ({e}).') from None
        for lineno, line in enumerate(text.splitlines(), 1):
            entry = line.split('#', 1)[0].strip().replace('\\', '/')
            if not entry:
                continue
            if entry not in known:
                cands = by_name.get(entry.rpartition('/')[2], [])
                if '/' in entry or len(cands) != 1:
                    why = 'is ambiguous (in several classes); write class/file' if cands else 'is not in --src'
                    raise PrepError(f'{path}:{lineno}: {entry!r} {why}.')
                entry = cands[0]
            if entry in seen:
                raise PrepError(f'{path}:{lineno}: {entry!r} is already listed in {seen[entry]}.')
            seen[entry] = f'{path.name}:{lineno}'
            out[split].append(entry)
    if not out:
        raise PrepError(f'{split_dir}: no train.txt, val.txt or test.txt in it.')
    return {s: sorted(v) for s, v in out.items()}


def class_of(relpath):
    return relpath.rpartition('/')[0]


# ----------------------------------------------------------------------------- conversions
def output_names(src_root, relpaths):
    """The output names of :func:`convert_images`; two files mapping to one name are refused (in the plan)."""
    names = [output_name(r) for r in relpaths]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PrepError(f'{src_root}: several files map to the same output name(s) {sorted(dup)[:5]}; rename them.')
    return names


def convert_images(src_root, relpaths, dst, image_kw, desc='convert'):
    """Read each file with the shared rules and write it as ``<output_name>.png`` into new dir `dst`."""
    names = output_names(src_root, relpaths)
    Path(dst).mkdir()
    for rel, name in zip(_progress(relpaths, desc), names):
        write_png(Path(dst) / f'{name}.png', read_image(Path(src_root) / rel, **image_kw))


def make_bicubic(src, out, scales, image_kw):
    """For each scale s: ``out/HR_xs`` (HR mod-cropped to s) and ``out/LR_xs`` (bicubic LR), PNG."""
    return make_bicubic_many([(src, out)], scales, image_kw)[0]


def make_bicubic_many(jobs, scales, image_kw):
    """:func:`make_bicubic` for every (src, out) of ``jobs`` as one plan: all inputs are listed and their
    headers read, all outputs checked free, distinct and writable, and they appear together only if every
    image of every job succeeded. Returns the targets of each job."""
    plan, targets = [], []
    for src, out in jobs:
        files, stems = folder_keys(src)
        plan.append((Path(src), files, stems))
        targets.append([Path(out) / f'{kind}_x{s}' for s in scales for kind in ('HR', 'LR')])
        check_writable(out)
    flat = [t for ts in targets for t in ts]
    check_free(*flat)
    check_images([src / f for src, files, _ in plan for f in files], min_hr_side(max(scales)),
                 f'{min_hr_side(max(scales))}, the least that gives {MIN_LR_SIDE} LR pixels a side at scale '
                 f'{max(scales)}')
    items = [(src, f, stem, i) for i, (src, files, stems) in enumerate(plan) for f, stem in zip(files, stems)]
    with staged_outputs(*flat) as tmps:
        for tmp in tmps:
            tmp.mkdir()
        for src, f, stem, job in _progress(items, f'bicubic x{",x".join(map(str, scales))}'):
            img = read_image(src / f, **image_kw)
            for i, s in enumerate(scales):
                hr, lr = hr_lr_pair(img, s, src / f)
                base = 2 * len(scales) * job + 2 * i
                write_png(tmps[base] / f'{stem}.png', hr)
                write_png(tmps[base + 1] / f'{stem}.png', lr)
    return targets


def subimage_positions(length, crop, step, thresh):
    """Top-left offsets along one axis, BasicSR's extract_subimages rule: regular steps, plus a last
    crop flush with the border when more than `thresh` pixels would be left over."""
    pos = list(range(0, length - crop + 1, step))
    if length - (pos[-1] + crop) > thresh:
        pos.append(length - crop)
    return pos


def extract_subimages(src, dst, crop, step, thresh, image_kw):
    """Cut every image of `src` into crop x crop tiles named ``<stem>_s001.png`` ..."""
    if step <= 0 or crop <= 0:
        raise PrepError(f'--crop-size and --step must be positive, got {crop} and {step}.')
    if thresh < 0:
        raise PrepError(f'--thresh-size must be >= 0, got {thresh}.')
    check_apart(dst, [src])
    files, stems = folder_keys(src, sanitize=True)
    check_free(dst)
    check_writable(dst)
    check_images([Path(src) / f for f in files], crop, f'--crop-size {crop}')
    with staged_output(dst) as tmp:
        tmp.mkdir()
        n = 0
        for f, stem in zip(_progress(files, 'sub-images'), stems):
            img = read_image(Path(src) / f, **image_kw)
            h, w = img.shape[:2]
            if h < crop or w < crop:
                raise ImageError(f'{Path(src) / f}: {w}x{h} is smaller than --crop-size {crop}; '
                                 'lower --crop-size or move the file out.')
            idx = 0
            for y in subimage_positions(h, crop, step, thresh):
                for x in subimage_positions(w, crop, step, thresh):
                    idx += 1
                    write_png(tmp / f'{stem}_s{idx:03d}.png', img[y:y + crop, x:x + crop])
            n += idx
    return n


def write_lmdb(src, lmdb_path, image_kw, compress_level=1, desc=None):
    """Pack a folder into a new BasicSR LMDB at `lmdb_path` with BasicSR's LmdbMaker
    (data.mdb + meta_info.txt). Prefer :func:`make_lmdb`, which stages and never overwrites.

    Images go through :func:`~segsr_basicsr.io.images.decode_image` first, so the LMDB holds the same 8-bit BGR pixels
    the folder dataset would read. Keys are the file stems, sorted.
    """
    files, keys = folder_keys(src)
    maker = LmdbMaker(str(lmdb_path), compress_level=compress_level)
    try:
        for f, key in zip(_progress(files, desc or f'lmdb {Path(src).name}'), keys):
            img = read_image(Path(src) / f, **image_kw)
            buf = encode_png(img, compress_level)
            maker.put(buf, key, img.shape)
    finally:
        maker.close()
    # lock.mdb is LMDB's runtime reader table (differs run to run; BasicSR opens with lock=False and
    # LMDB recreates it on demand): drop it so reruns are byte-identical
    (Path(lmdb_path) / 'lock.mdb').unlink(missing_ok=True)
    return keys


def make_lmdb(pairs, image_kw, compress_level=1):
    """Pack each (folder, lmdb_path) of `pairs`; all LMDBs appear only if every one succeeds."""
    pairs = [(Path(src), Path(dst)) for src, dst in pairs]
    check_free(*[dst for _, dst in pairs])
    inputs = []
    for src, dst in pairs:
        if dst.suffix != '.lmdb':
            raise PrepError(f'{dst}: an LMDB path must end with .lmdb (BasicSR checks the suffix).')
        inputs += [src / f for f in folder_keys(src)[0]]  # fail on bad names before writing anything
        check_writable(dst)
    check_images(inputs)
    with staged_outputs(*[dst for _, dst in pairs]) as tmps:
        return [write_lmdb(src, tmp, image_kw, compress_level, desc=f'lmdb {dst.name}')
                for (src, dst), tmp in zip(pairs, tmps)]


def split_manifest(src_root, splits, method, hr_folders=None):
    """:func:`segsr_basicsr.data.manifest.split_manifest` with this module's output names."""
    from segsr_basicsr.data.manifest import split_manifest as manifest
    return manifest(src_root, splits, method, output_name, hr_folders)


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n', encoding='utf-8')


def run_cli(main):
    """Run a script's main(); a user error becomes one line on stderr and exit code 2."""
    from segsr_basicsr.utils.cli import exit_on_user_error
    with exit_on_user_error(Path(sys.argv[0]).name):
        main()


# ----------------------------------------------------------------------------- what makes a dataset folder
_SPLIT_DIR = re.compile(r'^(?P<root>.*?)/?(?P<split>[^/]+)/(?P<kind>HR|LR)(_x(?P<scale>\d+))?(?P<lmdb>\.lmdb)?/?$')


def prep_command(folder: str) -> str:
    """The datasets_prep command that makes ``folder`` (docs/datasets.md), or where to read how."""
    m = _SPLIT_DIR.match(folder.replace(os.sep, '/'))
    if not m:
        return 'prepare it as docs/datasets.md shows (datasets_prep/), or fix the path'
    root, split, scale = m['root'] or '.', m['split'], m['scale']
    hr = f'{root}/{split}/HR'
    make = (f'python datasets_prep/split_dataset.py --src YOUR_DOWNLOADED_DATASET --out {root} --ratios 8 1 1 '
            '--seed 0')
    if scale and os.path.isdir(hr):
        make = f'python datasets_prep/make_bicubic.py --input {hr} --scales {scale}'
    elif scale:
        make += f', then python datasets_prep/make_bicubic.py --input {hr} --scales {scale}'
    if m['lmdb']:
        make += (f', then python datasets_prep/make_lmdb.py {root}/{split}/HR_x{scale} '
                 f'{root}/{split}/LR_x{scale}')
    return f'make it with: {make} (docs/datasets.md)'
