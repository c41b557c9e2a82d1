"""A batch of scenes: inputs listed, outputs planned, work shared among ranks, and what is already done.

``segsr-infer`` (one process or a torchrun job) and :meth:`SeGSRUpscaler.upscale_files` both go through
here. Work is shared by pixel count, not file count (:func:`shares`), the same way on every rank, so
each output is written by exactly one rank. A finished output gets a small record
(:class:`DoneRecords`: the input's size and mtime, the checkpoint's digest and the options that change
pixels); re-running the same command skips what a record proves finished, recomputes what a changed
checkpoint or option made stale, and never mistakes a half-written file (outputs appear only complete)
or somebody else's file (no record: refused unless ``--overwrite``) for done.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from segsr_basicsr.errors import InferError
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.io.images import IMG_EXTS, TIFF_EXTS
from segsr_basicsr.io.raster import RASTER_EXTS
from segsr_basicsr.utils.preflight import check_writable
from segsr_basicsr.utils.progress import JobProgress
from segsr_basicsr.io.digest import file_sha256

INPUT_EXTS = tuple(dict.fromkeys(IMG_EXTS + RASTER_EXTS))
RECORDS_DIR = '.segsr-done'
#: where ranks sharing one scene write their bands before one of them assembles the output
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
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_EXTS)
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


def rank_and_world():
    """(rank, world size) of an initialised process group, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree_on_plan(todo, skipped):
    """Rank 0's plan for every rank (one broadcast), and a token naming this job: a rank that starts later
    must not see outputs another rank already wrote as done and compute a different split (then some input
    would be nobody's)."""
    import uuid
    rank, world = rank_and_world()
    if world == 1:
        return todo, skipped, uuid.uuid4().hex
    import torch.distributed as dist
    box = [(todo, skipped, uuid.uuid4().hex)]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def scene_pixels(path) -> int:
    """LR pixels of an input, from its header (rasters through rasterio, images through io.images)."""
    if streams(path):
        import rasterio
        with rasterio.open(path) as src:
            return src.width * src.height
    from segsr_basicsr.io.images import image_size
    w, h = image_size(path)
    return w * h


class DoneRecords:
    """``<out_dir>/.segsr-done/<output name>.json`` for every finished output: what it was made from."""

    def __init__(self, out_dir, fingerprint: dict):
        self.dir = Path(out_dir) / RECORDS_DIR
        self.fingerprint = fingerprint

    def _path(self, out):
        return self.dir / f'{Path(out).name}.json'

    def _expected(self, src, outs):
        st = Path(src).stat()
        return {'input': str(Path(src).resolve()), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,
                **self.fingerprint, 'outputs': {Path(o).name: None for o in outs}}

    def status(self, src, outs) -> str:
        """'done' (record matches, outputs intact), 'stale' (our record, other inputs/settings), 'foreign'
        (an output exists that no record explains), or 'todo'."""
        rec_path = self._path(outs[0])
        existing = [o for o in outs if os.path.lexists(o)]
        if not rec_path.is_file():
            return 'foreign' if existing else 'todo'
        rec = json.loads(rec_path.read_text())
        want = self._expected(src, outs)
        sizes = rec.get('outputs') or {}
        intact = all(os.path.isfile(o) and os.path.getsize(o) == sizes.get(Path(o).name) for o in outs)
        same = all(rec.get(k) == v for k, v in want.items() if k != 'outputs') and set(sizes) == set(want['outputs'])
        return 'done' if same and intact else 'stale'

    def forget(self, out):
        """Drop the record of ``out`` (a part that became an output)."""
        self._path(out).unlink(missing_ok=True)

    def mark(self, src, outs):
        """Record finished ``outs`` of ``src`` (after they are complete on disk)."""
        rec = self._expected(src, outs)
        rec['outputs'] = {Path(o).name: os.path.getsize(o) for o in outs}
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(outs[0]), lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)),
                     durable=False)


def fingerprint(checkpoint, options: dict) -> dict:
    """What makes an output what it is besides its input: the checkpoint's SHA-256 and the pixel options."""
    digest = file_sha256(checkpoint) if checkpoint and os.path.isfile(checkpoint) else str(checkpoint)
    canon = json.dumps(options, sort_keys=True, default=str)
    return {'checkpoint_sha256': digest, 'options_sha256': hashlib.sha256(canon.encode()).hexdigest(),
            'options': json.loads(canon)}


def sort_out(plan, records, overwrite):
    """(todo, skipped): finished outputs skipped; stale ones of ours recomputed; anyone else's refused
    unless ``overwrite`` (then everything is recomputed)."""
    todo, skipped, foreign = [], [], []
    for src, out, maps in plan:
        status = 'todo' if overwrite else records.status(src, [out, *maps])
        if status == 'done':
            skipped.append((src, out, maps))
            continue
        if status == 'foreign':
            foreign += [str(o) for o in [out, *maps] if os.path.lexists(o)]
        todo.append((src, out, maps))
    if foreign:
        more = f' (and {len(foreign) - 5} more)' if len(foreign) > 5 else ''
        raise InferError(f'output exists: {", ".join(foreign[:5])}{more}, and no record says segsr-infer made it '
                         'from this input. Pass --overwrite to replace it, or choose another --output.')
    return todo, skipped


def remove_stale_temps(outputs):
    """Delete the temporary siblings (``.<name>.<pid>.tmp*``) that a killed run left beside ``outputs``."""
    for o in outputs:
        for tmp in Path(o).parent.glob(f'.{Path(o).name}.*.tmp*'):
            tmp.unlink(missing_ok=True)


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


def _barrier(world):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _assemble_split(units, records, rank, world, assemble):
    """Every strip of every split scene is done: each scene's parts become its output on one rank (round
    robin), recorded as done, and the parts go."""
    scenes = {}
    for u in units:
        if u.strip is not None:
            scenes.setdefault(u.out, []).append(u)
    for j, bands in enumerate(scenes.values()):
        if j % world != rank:
            continue
        u = bands[0]
        parts = [b.outputs() for b in sorted(bands, key=lambda b: b.strip)]
        assemble(u.src, u.out, list(u.maps), [p[0] for p in parts], [p[1:] for p in parts])
        records.mark(u.src, [u.out, *u.maps])
        for o in [u.out, *u.maps]:  # this run's parts, and any a stopped run with another rank count left
            for part in o.parent.joinpath(PARTS_DIR).glob(f'{o.stem}.strip*of*{o.suffix}'):
                part.unlink(missing_ok=True)
                records.forget(part)
    try:  # the parts folder goes with the last part (every part was written before the barrier)
        units[0].out.parent.joinpath(PARTS_DIR).rmdir()
    except OSError:
        pass


def _run_unit(u, records, work, job, overwrite):
    outs = u.outputs()
    if u.strip is not None and not overwrite and records.status(u.src, outs) == 'done':
        job.finish(u.pixels / 1e6, u.share)  # a strip a stopped run finished
        return
    Path(outs[0]).parent.mkdir(parents=True, exist_ok=True)
    work(u, outs, job)
    records.mark(u.src, outs)
    job.finish(u.pixels / 1e6, u.share)


def run_share(todo, skipped, records, out_dir, work, assemble=None, strips_of=None, progress=True, overwrite=False):
    """This rank's share of ``todo`` (rank 0's plan, split by pixels): ``work(unit, outputs, job)`` for each
    :class:`Unit` (with ``assemble``, large rasters are shared in bands, then ``assemble(src, out, maps,
    parts, map_parts)``), after clearing what a killed run left of its outputs, then its done-record. A
    finished strip is not recomputed (unless ``overwrite``). ``job`` (:class:`JobProgress`) takes
    ``advance(mp)`` calls; rank 0 prints the whole job's line. Returns (done units, LR MP, skipped)."""
    todo, skipped, token = agree_on_plan(todo, skipped)
    rank, world = rank_and_world()
    units = make_units(todo, world, strips_of if assemble else None)
    mine = [units[i] for i in shares([u.pixels for u in units], world)[rank]]
    remove_stale_temps(o for u in mine for o in u.outputs())  # only this rank's: others may be in progress
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = JobProgress(len(todo), sum(u.pixels for u in units) / 1e6, rank, world,
                      Path(out_dir) / RECORDS_DIR / 'progress', token, desc='segsr-infer',
                      enabled=progress and (world > 1 or len(todo) > 1))
    try:
        for u in mine:
            _run_unit(u, records, work, job, overwrite)
        if any(u.strip for u in units):
            _barrier(world)
            _assemble_split(units, records, rank, world, assemble)
    finally:
        job.close()
    return mine, sum(u.pixels for u in mine) / 1e6, skipped
