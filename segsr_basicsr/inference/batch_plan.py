"""A batch of scenes planned: inputs listed, outputs named, and the units of work ranks share.

Work is shared by pixel count, not file count (:func:`shares`), the same way on every rank, so each output
is written by exactly one rank; a streamed raster larger than an even share becomes strips of tile rows
(:class:`Unit`), each written as a part that one rank assembles afterwards (:mod:`.batch`).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from segsr_basicsr.errors import InferError
from segsr_basicsr.io.images import IMG_EXTS, TIFF_EXTS, read_image, readable_images
from segsr_basicsr.io.raster import RASTER_EXTS
from segsr_basicsr.utils.preflight import check_writable
from segsr_basicsr.utils.progress import progress as progress_bar

INPUT_EXTS = tuple(dict.fromkeys(IMG_EXTS + RASTER_EXTS))
#: where ranks sharing one scene write their strips before one of them assembles the output
PARTS_DIR = '.segsr-parts'


def _has_rasterio():
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def streams(path):
    """True for inputs read window by window through GDAL."""
    return path.suffix.lower() in RASTER_EXTS and _has_rasterio()


def list_inputs(inputs):
    """The files named by --input (files, folders), each once, in order; refuses what is not an image."""
    files = []
    for text in inputs:
        if not str(text).strip():
            raise InferError("--input '': an empty path; name an image, raster or folder.")
    for p in map(Path, inputs):
        if p.is_dir():
            found = [p / name for name in readable_images(p, INPUT_EXTS, on_unreadable='skip')]
            if not found:
                raise InferError(f'{p}: folder holds no images ({", ".join(INPUT_EXTS)}).')
            files += found
        elif p.is_file():
            if p.suffix.lower() not in INPUT_EXTS:
                raise InferError(f'{p}: not an image or raster file ({", ".join(INPUT_EXTS)}).')
            files.append(p)
        else:
            raise InferError(f'--input {p}: no such file or folder.')
    seen = {}
    for f in files:
        if f.resolve() in seen:
            raise InferError(f'--input names {f} twice (also as {seen[f.resolve()]}); name each input once.')
        seen[f.resolve()] = f
    return files


def plan_outputs(files, out_dir, scale, save_maps, num_maps):
    """(input, output, [map outputs]) per file; refuses anything that could destroy an input or an output."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InferError(f'--output {out_dir}: exists and is not a folder.')
    check_writable(out_dir, '--output')
    in_dirs = {f.parent.resolve() for f in files}
    if out_dir.resolve() in in_dirs:
        raise InferError(f'--output {out_dir}: is the folder of the input image(s); results must go to another '
                         'folder so that inputs are never overwritten (e.g. --output results/sr).')
    inputs = {f.resolve() for f in files}
    plan, seen = [], set()
    for f in files:
        raster = streams(f)
        ext = '.tif' if raster or f.suffix.lower() in TIFF_EXTS else '.png'
        out = out_dir / f'{f.stem}_SeGSR_x{scale}{ext}'
        map_ext = '.tif' if raster else '.png'
        maps = [out_dir / f'{f.stem}_SeGSR_x{scale}_semantic_unit{k + 1}{map_ext}' for k in range(num_maps)] \
            if save_maps else []
        for o in [out] + maps:
            if o.resolve() in inputs:
                raise InferError(f'{o}: is one of the inputs; refusing to overwrite it. Choose another --output.')
            if o in seen:
                raise InferError(f'{f}: two inputs map to the same output {o} (same name, different extension?); '
                                 'process them separately.')
            seen.add(o)
        plan.append((f, out, maps))
    return plan


def shares(weights, world):
    """Indices of ``weights`` for each of ``world`` ranks, largest first to the least loaded rank (ties: the
    lower rank), so every rank computes the same split and the loads differ by at most one item's weight."""
    loads, out = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += weights[i]
        out[r].append(i)
    return [sorted(s) for s in out]


def scene_pixels(path) -> int:
    """LR pixels of an input, from its header (rasters through rasterio, images through io.images)."""
    if streams(path):
        import rasterio
        with rasterio.open(path) as src:
            return src.width * src.height
    from segsr_basicsr.io.images import image_size
    w, h = image_size(path)
    return w * h


@dataclass(frozen=True)
class Unit:
    """One piece of work: a whole input, or strip ``k`` of ``n`` strips of tile rows of one large raster."""
    src: Path
    out: Path
    maps: tuple
    pixels: int
    strip: Optional[Tuple[int, int]] = None

    @property
    def share(self) -> float:
        """How much of its scene this unit is (1, or 1/n for a strip)."""
        return 1 / self.strip[1] if self.strip else 1.0

    def outputs(self):
        """What this unit writes: the outputs, or for a strip its parts in ``<output>/.segsr-parts/``."""
        if self.strip is None:
            return [self.out, *self.maps]
        k, n = self.strip
        return [self.out.parent / PARTS_DIR / f'{o.stem}.strip{k + 1}of{n}{o.suffix}' for o in [self.out, *self.maps]]


def make_units(todo, world, strips_of=None):
    """Units of ``todo`` for ``world`` ranks: a streamed raster larger than an even share of all pixels is cut
    into up to ``world`` strips of tile rows (``strips_of(src, parts)`` says how many it has) when given."""
    pixels = [scene_pixels(src) for src, _, _ in todo]
    fair = sum(pixels) / max(world, 1)
    units = []
    for (src, out, maps), px in zip(todo, pixels):
        n = strips_of(src, world) if strips_of and world > 1 and px > fair and streams(src) else 1
        if n < 2:
            units.append(Unit(src, out, tuple(maps), px))
            continue
        units += [Unit(src, out, tuple(maps), px // n, (k, n)) for k in range(n)]
    return units


def check_job_paths(inputs, out_dir):
    """The inputs named (files, folders) -> files, after the checks that protect inputs and outputs (cheap:
    run before the model is loaded, and again by the batch)."""
    files = list_inputs(inputs)
    plan_outputs(files, out_dir, 1, False, 0)
    return files


def check_inputs(files, out):
    """Open every input the way it will be read (images decoded with the band/range options of ``out``,
    rasters opened with them) before the first output is written, so a bad file late in a folder costs
    no half-done run."""
    from segsr_basicsr.io import raster as R
    for src in progress_bar(files, 'checking inputs', unit='files', closing_line=False):
        if streams(src):
            with R.gdal_env():
                R.RasterScene(src, out.bands, out.max_value, out.stretch).close()
            continue
        if out.stretch is not None or out.cog:
            raise InferError(f'{src}: --stretch and --cog apply to rasters read through GDAL (GeoTIFF, JP2, VRT); '
                             'this file is read whole as an image.')
        if src.suffix.lower() in TIFF_EXTS:
            check_plain_tiff(src, out.no_geo)
        read_image(src, **out.image_kw())


def check_plain_tiff(path, no_geo):
    """Without rasterio a TIFF is read whole; a GeoTIFF then needs --no-geo (its georeferencing would be lost)."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            geo = any(t in tif.pages[0].tags for t in (33550, 33922, 34264, 34735))
    except Exception:  # noqa: BLE001 - not readable as TIFF: the image reader reports it
        return
    if geo and not no_geo:
        raise InferError(f'{path}: is a GeoTIFF, and keeping its georeferencing needs rasterio '
                         "(pip install 'segsr_basicsr[geo]'). Or pass --no-geo to write a plain TIFF.")
