"""The one image reader and writer of the package.

:func:`decode_image` turns any supported file (PNG, JPEG, TIFF, BMP, WebP) into the
8-bit BGR array BasicSR works on, applying the input rules on purpose (bands, bit
depth, alpha, grayscale) rather than leaving them to whatever OpenCV does. Every
entry point (dataset preparation, the on-the-fly dataset, inference) reads through it.
:func:`write_image` writes PNG, TIFF or GeoTIFF atomically; :func:`encode_png`
gives deterministic PNG bytes (no timestamps) for files and LMDB values alike.
"""
import errno
import io
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from segsr_basicsr.errors import DataError, ImageError
from segsr_basicsr.io.atomic import atomic_write

__all__ = ['IMG_EXTS', 'TIFF_EXTS', 'PNG_LEVEL', 'read_image', 'decode_image', 'add_image_args', 'image_kwargs',
           'list_images', 'encode_png', 'write_png', 'write_image']

logger = logging.getLogger('basicsr')

#: file types the scripts, the dataset and inference pick up (case-insensitive)
IMG_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.webp')
TIFF_EXTS = ('.tif', '.tiff')
#: PNG compression used for every image we write (the level only changes size, never pixels)
PNG_LEVEL = 3
_TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')

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
    if not content:
        raise ImageError(f'{name}: file is empty (0 bytes); re-download or remove it.')
    arr, alpha_band = _decode_any(content, name)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = _rgb_bands(arr, alpha_band, name, bands, max_value)
    arr = _to_8bit(arr, name, max_value)
    if arr.shape[2] == 1:
        arr = _gray_to_rgb(arr, name, gray)
    # arr is in file band order (R, G, B); BasicSR works in BGR
    return np.ascontiguousarray(arr[:, :, ::-1])


def _rgb_bands(arr, alpha_band, name, bands, max_value):
    """(H, W, n) in file band order -> (H, W, 3) or (H, W, 1): bands picked, opaque alpha dropped."""
    nbands = arr.shape[2]
    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != 3 or min(bands) < 1 or max(bands) > nbands:
            raise ImageError(f'{name}: bands={bands} does not pick 3 of its {nbands} bands '
                             f'(1-based band numbers, e.g. --bands 3 2 1).')
        return arr[:, :, [b - 1 for b in bands]]
    if nbands in (2, 4) and alpha_band:
        alpha = arr[:, :, -1]
        full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else (max_value or 1.0)
        n_transparent = int(np.count_nonzero(alpha != full))
        if n_transparent:
            raise ImageError(f'{name}: has an alpha channel with {n_transparent} transparent pixel(s); '
                             'SR needs fully opaque RGB. Flatten it onto a background or remove the file.')
        arr, nbands = arr[:, :, :-1], nbands - 1
    if nbands > 3:
        raise ImageError(f'{name}: has {nbands} bands; SeG-SR needs 3-band RGB. Pick the red, green and blue '
                         'bands with --bands R G B (1-based, e.g. --bands 4 3 2 for Sentinel-2 B4,B3,B2; '
                         'dataset option `bands: [4, 3, 2]`), or write an RGB copy first '
                         '(e.g. gdal_translate -b 4 -b 3 -b 2 in.tif out.tif).')
    if nbands == 2:  # gray + non-alpha band: ambiguous
        raise ImageError(f'{name}: has 2 bands that are not gray+alpha; pick bands with --bands R G B.')
    return arr


def _to_8bit(arr, name, max_value):
    """Explicit, linear: round(v * 255 / max_value) clipped to 0..255; no max_value for non-8-bit is an error."""
    if arr.dtype == np.uint8:
        return arr
    if max_value is None:
        kind = f'{arr.dtype.itemsize * 8}-bit' if np.issubdtype(arr.dtype, np.integer) else str(arr.dtype)
        raise ImageError(f'{name}: is {kind} ({arr.dtype}, values {arr.min()}..{arr.max()}); models here train on '
                         '8-bit images. Convert explicitly with --max-value M (dataset option `max_value`): '
                         'v -> round(v*255/M), e.g. M=65535 for full-range 16-bit, 4095 for 12-bit data.')
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / float(max_value))), 0, 255).astype(np.uint8)


def _gray_to_rgb(arr, name, gray):
    global _gray_noted
    if gray == 'error':
        raise ImageError(f'{name}: is grayscale (1 band) and grayscale is set to be rejected (--gray error / '
                         'gray: error). Use convert to replicate it to 3 channels, or remove the file.')
    if not _gray_noted:
        logger.warning(f'{name}: grayscale image replicated to 3 channels '
                       '(further grayscale inputs are converted without a note).')
        _gray_noted = True
    return np.repeat(arr, 3, axis=2)


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
    """Command-line options for :func:`decode_image`, shared by every script that reads images."""
    parser.add_argument('--bands', type=int, nargs=3, metavar=('R', 'G', 'B'),
                        help='1-based band numbers to use as red, green, blue (for multi-band TIFFs)')
    parser.add_argument('--max-value', type=float, default=None, metavar='M',
                        help='convert non-8-bit images linearly: v -> round(v*255/M) (default: reject them)')
    parser.add_argument('--gray', choices=('convert', 'error'), default='convert',
                        help='grayscale inputs: replicate to 3 channels (default) or reject')


def image_kwargs(args):
    """The :func:`decode_image` keyword arguments from :func:`add_image_args` options."""
    if args.max_value is not None and not args.max_value > 0:
        raise ImageError(f'--max-value must be > 0 (the value that maps to white, e.g. 65535 or 4095), '
                         f'got {args.max_value:g}.')
    return dict(bands=args.bands, max_value=args.max_value, gray=args.gray)


# ----------------------------------------------------------------------------- listing
def list_images(folder):
    """Image files directly in ``folder``, sorted, as names relative to it. Entries that cannot be read
    (symlink loop, dangling link, no permission) are skipped with a warning naming them."""
    return readable_images(folder, IMG_EXTS, on_unreadable='skip')


def _entry_problem(entry):
    """Why a folder entry cannot be read as a file (None if it can)."""
    try:
        if not entry.is_file():  # follows symlinks; a dangling link or a loop is not a file
            if entry.is_symlink():
                try:
                    os.stat(entry.path)
                except OSError as e:
                    return 'a symlink loop' if e.errno == errno.ELOOP else f'a broken symlink ({e.strerror})'
            return None if entry.is_dir() else 'not a regular file'
        with open(entry.path, 'rb') as f:
            f.read(1)
    except OSError as e:
        return e.strerror or str(e)
    return None


def readable_images(folder, exts, on_unreadable='error', warn=None, all_files=False):
    """Sorted names of the image files directly in ``folder`` that can be opened.

    An entry that cannot be read (symlink loop, dangling link, permission denied) is refused with
    one line naming it (``on_unreadable='error'``: BasicSR's datasets list the folder themselves and
    would stop on it mid-run), or skipped with a warning naming it (``'skip'``). ``all_files``:
    also return names that are not images (BasicSR's folder datasets read every file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f'{folder}: not a directory.')
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f'{folder}: cannot list the folder ({e.strerror}); fix its permissions.') from None
    names, bad = [], []
    for entry in entries:
        if entry.name.startswith('.'):
            continue
        is_image = entry.name.lower().endswith(tuple(exts))
        if not (is_image or all_files):
            continue
        problem = _entry_problem(entry)
        if problem == 'not a regular file' or (problem is None and entry.is_dir()):
            continue
        if problem:
            bad.append((entry.path, problem))
        else:
            names.append(entry.name)
    if bad:
        listed = '; '.join(f'{p} ({why})' for p, why in bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
        if on_unreadable == 'error':
            raise DataError(f'cannot read {listed}: fix or remove the entry, then rerun.')
        (warn or _stderr_warning)(f'skipping {len(bad)} unreadable entr{"y" if len(bad) == 1 else "ies"}: {listed}.')
    return names


def _stderr_warning(message):
    print(f'{Path(sys.argv[0]).name}: warning: {message}', file=sys.stderr, flush=True)


def image_size(path):
    """(width, height) of an image file from its header (PIL, or tifffile for TIFF); a file neither can
    identify goes through the full reader, whose :class:`ImageError` names the file and the fix."""
    path = Path(path)
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
        if head in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise ImageError(f'{path}: cannot read file ({e.strerror}).') from None
    except Exception:  # noqa: BLE001 - the full reader below gives the precise message
        pass
    img = read_image(path)
    return img.shape[1], img.shape[0]


# ----------------------------------------------------------------------------- outputs



# ----------------------------------------------------------------------------- writing
def encode_png(img, level=PNG_LEVEL):
    """uint8 BGR (H, W, 3) or gray (H, W) -> deterministic PNG bytes (no timestamps)."""
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ImageError(f'PNG encoding failed for an array of shape {img.shape} and dtype {img.dtype}.')
    return buf.tobytes()


def write_png(path, img):
    """Write :func:`encode_png` bytes to ``path`` (also non-ASCII paths). Not atomic: for files inside a
    folder that :func:`segsr_basicsr.io.atomic.staged_outputs` publishes as a whole."""
    Path(path).write_bytes(encode_png(img))


def write_image(path, img_bgr, geo=None):
    """uint8 (H, W, 3) BGR -> PNG, TIFF, or GeoTIFF (bands R, G, B) when ``geo`` = {crs, transform}, atomically."""
    path = Path(path)

    def png(tmp):
        Path(tmp).write_bytes(encode_png(img_bgr))

    def tiff(tmp):
        rgb = np.ascontiguousarray(img_bgr[..., ::-1])
        if geo is None:
            import tifffile
            tifffile.imwrite(tmp, rgb, photometric='rgb', compression='zlib')
            return
        import rasterio
        h, w = rgb.shape[:2]
        with rasterio.open(tmp, 'w', driver='GTiff', width=w, height=h, count=3, dtype='uint8', crs=geo['crs'],
                           transform=geo['transform'], photometric='RGB', compress='deflate') as dst:
            dst.write(np.moveaxis(rgb, -1, 0))

    return atomic_write(path, tiff if path.suffix.lower() in TIFF_EXTS else png, keep_suffix=True, durable=False)
