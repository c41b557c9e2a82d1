"""Shared data-preparation logic for `datasets_prep/` scripts and `SeGSRBicubicDataset`.

One image reader (:func:`decode_image`) enforces the input rules for every entry point,
and one LR maker (:func:`bicubic_lr`) guarantees that an LR file written by
`datasets_prep/make_bicubic.py` is byte-for-byte the LR that the on-the-fly dataset makes.
Outputs are written through :func:`staged_output`: a target that exists is never
touched, and a failed run leaves nothing half-written behind.
"""
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from basicsr.data.transforms import mod_crop
from basicsr.utils import scandir
from basicsr.utils.lmdb_util import LmdbMaker
from basicsr.utils.matlab_functions import imresize

logger = logging.getLogger('basicsr')

#: file types the scripts and the dataset pick up (case-insensitive)
IMG_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.webp')
SPLITS = ('train', 'val', 'test')
#: PNG compression used for every image we write (the level only changes size, never pixels)
PNG_LEVEL = 3
_TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')


class PrepError(ValueError):
    """A user-facing data problem: the message names the file and says what to do."""


class ImageError(PrepError):
    """An input image that breaks the 8-bit RGB rules (see :func:`decode_image`)."""


# ----------------------------------------------------------------------------- reading
_gray_noted = False


def read_image(path, **kwargs):
    """Read a file with :func:`decode_image`; a missing file is an :class:`ImageError` too."""
    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as e:
        raise ImageError(f'{path}: cannot read file ({e.strerror}).') from e
    return decode_image(content, path, **kwargs)


def decode_image(content, name, bands=None, max_value=None, gray='convert'):
    """Decode image bytes into an 8-bit, 3-channel BGR array (BasicSR's convention), or raise.

    The rules, applied on purpose rather than left to whatever OpenCV does:

    - grayscale (1 band): ``gray='convert'`` replicates it to 3 channels and logs a note
      (once per process); ``gray='error'`` rejects it.
    - RGBA: the alpha channel is dropped when it is fully opaque; any transparent pixel is
      an error (we would have to invent the colour behind it).
    - more bands (multi-band TIFF, or a 4-band TIFF whose 4th band is not alpha, e.g.
      RGB+NIR): rejected unless ``bands=(r, g, b)`` (1-based, file order) picks three.
    - not 8-bit (16-bit, float): rejected unless ``max_value`` is given; then the conversion
      is explicit and linear, ``round(v * 255 / max_value)`` clipped to 0..255
      (65535 for full-range 16-bit, 4095 for 12-bit sensors, ...).
    - bytes that do not decode: an error naming the file.

    Args:
        content (bytes): the encoded file (PNG, JPEG, TIFF, BMP, WebP).
        name (str): file path or LMDB key, used in messages.
    """
    global _gray_noted
    if not content:
        raise ImageError(f'{name}: file is empty (0 bytes); re-download or remove it.')
    arr, alpha_band = _decode_any(content, name)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    nbands = arr.shape[2]

    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != 3 or min(bands) < 1 or max(bands) > nbands:
            raise ImageError(f'{name}: bands={bands} does not pick 3 of its {nbands} bands '
                             f'(1-based band numbers, e.g. --bands 3 2 1).')
        arr, alpha_band = arr[:, :, [b - 1 for b in bands]], False
        nbands = 3

    if nbands in (2, 4) and alpha_band:
        alpha = arr[:, :, -1]
        full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else (max_value or 1.0)
        n_transparent = int(np.count_nonzero(alpha != full))
        if n_transparent:
            raise ImageError(f'{name}: has an alpha channel with {n_transparent} transparent pixel(s); '
                             'SR needs fully opaque RGB. Flatten it onto a background or remove the file.')
        arr = arr[:, :, :-1]
        nbands -= 1
    if nbands > 3:
        raise ImageError(f'{name}: has {nbands} bands; SeG-SR needs 3-band RGB. Pick the red, green and blue '
                         'bands with --bands R G B (1-based, e.g. --bands 4 3 2 for Sentinel-2 B4,B3,B2; '
                         'dataset option `bands: [4, 3, 2]`), or write an RGB copy first '
                         '(e.g. gdal_translate -b 4 -b 3 -b 2 in.tif out.tif).')
    if nbands == 2:  # gray + non-alpha band: ambiguous
        raise ImageError(f'{name}: has 2 bands that are not gray+alpha; pick bands with --bands R G B.')

    if arr.dtype != np.uint8:
        if max_value is None:
            kind = f'{arr.dtype.itemsize * 8}-bit' if np.issubdtype(arr.dtype, np.integer) else str(arr.dtype)
            raise ImageError(f'{name}: is {kind} ({arr.dtype}, values {arr.min()}..{arr.max()}); models here train on '
                             '8-bit images. Convert explicitly with --max-value M (dataset option `max_value`): '
                             'v -> round(v*255/M), e.g. M=65535 for full-range 16-bit, 4095 for 12-bit data.')
        arr = np.clip(np.round(arr.astype(np.float64) * (255.0 / float(max_value))), 0, 255).astype(np.uint8)

    if nbands == 1:
        if gray == 'error':
            raise ImageError(f'{name}: is grayscale (1 band) and grayscale is set to be rejected (--gray error / '
                             'gray: error). Use convert to replicate it to 3 channels, or remove the file.')
        if not _gray_noted:
            logger.warning(f'{name}: grayscale image replicated to 3 channels '
                           '(further grayscale inputs are converted without a note).')
            _gray_noted = True
        arr = np.repeat(arr, 3, axis=2)
    # arr is in file band order (R, G, B); BasicSR works in BGR
    return np.ascontiguousarray(arr[:, :, ::-1])


def _decode_any(content, name):
    """Return (array H x W [x bands] in file band order, whether a 2nd/4th band is alpha)."""
    if content[:4] in _TIFF_MAGIC:
        try:
            return _decode_tiff(content, name)
        except ImageError:
            raise
        except Exception as e:  # tifffile lacks a codec (e.g. JPEG-in-TIFF): let OpenCV try
            tiff_error = e
    else:
        tiff_error = None
    arr = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        why = f' (tifffile: {tiff_error})' if tiff_error else ''
        raise ImageError(f'{name}: cannot be decoded as an image (truncated, corrupted or not an image '
                         f'file){why}; re-download or remove it.')
    if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV gives BGR / BGRA
        arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)
    return arr, arr.ndim == 3 and arr.shape[2] in (2, 4)


def _decode_tiff(content, name):
    import tifffile
    with tifffile.TiffFile(io.BytesIO(content)) as tif:
        series = tif.series[0]
        page = tif.pages[0]
        arr = series.asarray()
        axes = series.axes
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise ImageError(f'{name}: is a palette (indexed-colour) TIFF; convert it to RGB first.')
        is_rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
        extras = tuple(getattr(page, 'extrasamples', ()) or ())
    keep = [i for i, (ax, n) in enumerate(zip(axes, arr.shape)) if n > 1 or ax in 'YX']
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = ''.join(axes[i] for i in keep)
    if arr.ndim == 3:
        band_axis = next(i for i, ax in enumerate(axes) if ax not in 'YX')
        arr = np.moveaxis(arr, band_axis, -1)
    elif arr.ndim != 2:
        raise ImageError(f'{name}: TIFF layout {axes} {arr.shape} is not one image (several pages or '
                         'a stack?); save each image as its own file.')
    alpha = arr.ndim == 3 and ((arr.shape[2] == 4 and is_rgb) or (arr.shape[2] == 2 and bool(extras)))
    return arr, alpha


def add_image_args(parser):
    """Command-line options for :func:`decode_image`, shared by every prep script."""
    parser.add_argument('--bands', type=int, nargs=3, metavar=('R', 'G', 'B'),
                        help='1-based band numbers to use as red, green, blue (for multi-band TIFFs)')
    parser.add_argument('--max-value', type=float, default=None, metavar='M',
                        help='convert non-8-bit images linearly: v -> round(v*255/M) (default: reject them)')
    parser.add_argument('--gray', choices=('convert', 'error'), default='convert',
                        help='grayscale inputs: replicate to 3 channels (default) or reject')


def image_kwargs(args):
    return dict(bands=args.bands, max_value=args.max_value, gray=args.gray)


# ----------------------------------------------------------------------------- LR making
def bicubic_lr(hr, scale):
    """MATLAB-compatible bicubic x1/scale of an 8-bit HR (H and W multiples of scale), rounded to 8 bit.

    Same rounding as BasicSR's ``tensor2img`` (round half to even, clip 0..255), so the
    on-the-fly LR equals the PNG the prep script writes, bit for bit.
    """
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'HR size {w}x{h} is not a multiple of scale {scale}; mod-crop it first.')
    lr = imresize(hr.astype(np.float32) / 255., 1. / scale)
    # imresize returns a transposed (non-contiguous) view; BasicSR's augment flips in place with cv2
    return np.ascontiguousarray(np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8))


def hr_lr_pair(hr, scale, name='image'):
    """Mod-crop an 8-bit HR to `scale` and make its LR; an image smaller than `scale` is an error."""
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise ImageError(f'{name}: {hr.shape[1]}x{hr.shape[0]} is smaller than scale {scale}.')
    hr = mod_crop(hr, scale)
    return hr, bicubic_lr(hr, scale)


# ----------------------------------------------------------------------------- files
def list_images(folder):
    """Image files directly in `folder`, sorted, as names relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepError(f'{folder}: not a directory.')
    return sorted(p for p in scandir(str(folder)) if p.lower().endswith(IMG_EXTS))


def encode_png(img):
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise PrepError('PNG encoding failed.')
    return buf.tobytes()


def write_png(path, img):
    """Write deterministic PNG bytes (no timestamps), also to non-ASCII paths."""
    Path(path).write_bytes(encode_png(img))


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


def check_free(*paths):
    """Refuse before any work if an output exists: we never overwrite or merge into user data."""
    taken = [str(p) for p in paths if os.path.lexists(p)]
    if taken:
        raise PrepError('refusing to overwrite existing output: ' + ', '.join(taken) +
                        '. Delete it or choose another output path.')


@contextmanager
def staged_outputs(*finals):
    """Yield hidden sibling paths (not created) for `finals`; rename them all into place only if the
    block succeeds, delete them if it fails. So a run leaves complete outputs or none."""
    finals = [Path(f) for f in finals]
    check_free(*finals)
    tmps, made = [], []
    for final in finals:
        for d in reversed([final.parent, *final.parent.parents]):
            if not d.exists():
                d.mkdir()
                made.append(d)
        # keep the suffix: BasicSR's LmdbMaker insists on '.lmdb'
        tmp = final.parent / f'.{final.name}.partial-{os.getpid()}{final.suffix}'
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)  # our own leftover from a killed run that had the same pid
        tmps.append(tmp)
    try:
        yield tmps
    except BaseException:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(made):  # parents this run created, if still empty
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    check_free(*finals)
    for tmp, final in zip(tmps, finals):
        os.rename(tmp, final)


@contextmanager
def staged_output(final):
    with staged_outputs(final) as tmps:
        yield tmps[0]


def _progress(items, desc):
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit='img', file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- splits
def scan_classes(root):
    """{class: [relative paths]} of a class-per-folder tree; a flat folder is one class ``''``."""
    root = Path(root)
    if not root.is_dir():
        raise PrepError(f'{root}: not a directory.')
    classes = {'': list_images(root)} if list_images(root) else {}
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
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
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
        for lineno, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
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
def convert_images(src_root, relpaths, dst, image_kw, desc='convert'):
    """Read each file with the shared rules and write it as ``<output_name>.png`` into new dir `dst`."""
    names = [output_name(r) for r in relpaths]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PrepError(f'{src_root}: several files map to the same output name(s) {sorted(dup)[:5]}; rename them.')
    Path(dst).mkdir()
    for rel, name in zip(_progress(relpaths, desc), names):
        write_png(Path(dst) / f'{name}.png', read_image(Path(src_root) / rel, **image_kw))


def make_bicubic(src, out, scales, image_kw):
    """For each scale s: ``out/HR_xs`` (HR mod-cropped to s) and ``out/LR_xs`` (bicubic LR), PNG."""
    files, stems = folder_keys(src)
    targets = [Path(out) / f'{kind}_x{s}' for s in scales for kind in ('HR', 'LR')]
    check_free(*targets)
    with staged_outputs(*targets) as tmps:
        for tmp in tmps:
            tmp.mkdir()
        for f, stem in zip(_progress(files, f'bicubic x{",x".join(map(str, scales))}'), stems):
            img = read_image(Path(src) / f, **image_kw)
            for i, s in enumerate(scales):
                hr, lr = hr_lr_pair(img, s, Path(src) / f)
                write_png(tmps[2 * i] / f'{stem}.png', hr)
                write_png(tmps[2 * i + 1] / f'{stem}.png', lr)
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
        raise PrepError('--crop-size and --step must be positive.')
    files, stems = folder_keys(src, sanitize=True)
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

    Images go through :func:`decode_image` first, so the LMDB holds the same 8-bit BGR pixels
    the folder dataset would read. Keys are the file stems, sorted.
    """
    files, keys = folder_keys(src)
    maker = LmdbMaker(str(lmdb_path), compress_level=compress_level)
    try:
        for f, key in zip(_progress(files, desc or f'lmdb {Path(src).name}'), keys):
            img = read_image(Path(src) / f, **image_kw)
            ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
            maker.put(buf.tobytes(), key, img.shape)
    finally:
        maker.close()
    # lock.mdb is LMDB's runtime reader table (differs run to run; BasicSR opens with lock=False and
    # LMDB recreates it on demand): drop it so reruns are byte-identical
    (Path(lmdb_path) / 'lock.mdb').unlink(missing_ok=True)
    return keys


def make_lmdb(pairs, image_kw, compress_level=1):
    """Pack each (folder, lmdb_path) of `pairs`; all LMDBs appear only if every one succeeds."""
    pairs = [(Path(src), Path(dst)) for src, dst in pairs]
    for src, dst in pairs:
        if dst.suffix != '.lmdb':
            raise PrepError(f'{dst}: an LMDB path must end with .lmdb (BasicSR checks the suffix).')
        folder_keys(src)  # fail on bad names before writing anything
    with staged_outputs(*[dst for _, dst in pairs]) as tmps:
        return [write_lmdb(src, tmp, image_kw, compress_level, desc=f'lmdb {dst.name}')
                for (src, dst), tmp in zip(pairs, tmps)]


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n', encoding='utf-8')


def run_cli(main):
    """Run a script's main(); a :class:`PrepError` becomes one clear line on stderr and exit code 2."""
    try:
        main()
    except PrepError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
