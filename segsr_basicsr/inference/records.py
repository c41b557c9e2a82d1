"""What made an output, as data: the settings that change its pixels or format, and the records that prove it.

:class:`ModelSettings` (filled by ``load_model``) and :class:`OutputSettings` (one batch's reading, tiling
and writing options) are the only way those settings reach the upscaler and the batch job, so the record
of a finished output (:func:`done_record`, one function for the CLI and the API) holds every one of them
by construction, with the input's path and SHA-256. A finished output gets
``<output>/.segsr-done/<name>.json``. Who may replace an output is docs/contract.md's rule
(:func:`sort_out`): a record of these settings and this input's content proves it done (skipped); these
settings and this input path with other content: the input changed, recomputed; a record of other
settings or another input, or no record at all, is another job's output: refused unless ``overwrite``.
"""
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from segsr_basicsr.errors import InferError
from segsr_basicsr.io.atomic import atomic_write
from segsr_basicsr.io.digest import file_sha256
from segsr_basicsr.options import TileSpec

RECORDS_DIR = '.segsr-done'


@dataclass(frozen=True)
class ModelSettings:
    """How ``load_model`` made the network. ``checkpoint``/``network_g``: SHA-256 of the weights file and of
    the network options used (the option file's or the checkpoint's own)."""
    checkpoint: str
    network_g: str = ''
    param_key: Optional[str] = None
    amp: Optional[str] = None
    self_ensemble: bool = False
    merge_lora: bool = False
    backend: str = 'torch'


@dataclass(frozen=True)
class OutputSettings:
    """How a batch reads, tiles and writes each input (``segsr-infer``'s flags, the API's arguments)."""
    tile: TileSpec = TileSpec('auto')
    save_maps: bool = False
    bands: Optional[Tuple[int, int, int]] = None
    max_value: Optional[float] = None
    gray: str = 'convert'
    stretch: Optional[Tuple[float, float]] = None
    cog: bool = False
    no_geo: bool = False
    quality: Optional[str] = None  # LR-consistency beside each output: None, 'figure' or 'map' (scene_quality)

    def image_kw(self) -> dict:
        """Keyword arguments of :func:`segsr_basicsr.io.images.read_image`."""
        return dict(bands=self.bands, max_value=self.max_value, gray=self.gray)

    def raster_kw(self) -> dict:
        """Reading and writing options of a streamed raster (``upscale_raster``, ``assemble_raster``)."""
        return dict(bands=self.bands, max_value=self.max_value, stretch=self.stretch, cog=self.cog,
                    no_geo=self.no_geo)


def done_record(model: ModelSettings, output: OutputSettings) -> dict:
    """The settings part of every done-record: all fields of both settings, and one digest of them."""
    settings = json.loads(json.dumps({'model': dataclasses.asdict(model), 'output': dataclasses.asdict(output)},
                                     sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {'settings_sha256': digest, 'settings': settings}


class DoneRecords:
    """``<out_dir>/.segsr-done/<output name>.json`` for every finished output: what it was made from."""

    def __init__(self, out_dir, settings: dict, extra_outputs=None):
        """``extra_outputs(output)``: files written beside an output that its record also holds (quality files)."""
        self.dir = Path(out_dir) / RECORDS_DIR
        self.settings = settings
        self.digests = {}  # input path -> SHA-256, once per job (rank 0's go to every rank)
        self.extra = extra_outputs or (lambda out: [])

    def path(self, out) -> Path:
        return self.dir / f'{Path(out).name}.json'

    def input_digest(self, src) -> str:
        """SHA-256 of the input's bytes: other pixels of the same size and time are another input."""
        key = str(Path(src).resolve())
        if key not in self.digests:
            try:
                self.digests[key] = file_sha256(src)
            except OSError as e:
                raise InferError(f'{src}: cannot read it ({e.strerror}); fix its permissions or leave it out '
                                 'of --input.') from None
        return self.digests[key]

    def _expected(self, src, outs):
        outs = [*outs, *self.extra(outs[0])]
        st = Path(src).stat()
        return {'input': str(Path(src).resolve()), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,
                'input_sha256': self.input_digest(src), **self.settings, 'outputs': {Path(o).name: None for o in outs}}

    def read(self, out) -> Optional[dict]:
        """The record of ``out``, or None (none, or unreadable: then it proves nothing)."""
        try:
            rec = json.loads(self.path(out).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def status(self, src, outs) -> str:
        """'done' (these settings, this input's content, outputs intact), 'changed' (these settings and this
        input path, other content or outputs not intact: ours to recompute), 'other' (a record of other
        settings or another input, its outputs on disk), 'foreign' (an output exists that no record explains),
        or 'todo'."""
        every = [*outs, *self.extra(outs[0])]
        existing = [o for o in every if os.path.lexists(o)]
        rec = self.read(outs[0])
        if rec is None:
            return 'foreign' if existing else 'todo'
        if not existing:
            return 'todo'
        if rec.get('settings_sha256') != self.settings['settings_sha256']:
            return 'other'
        sizes = rec.get('outputs') or {}
        intact = set(sizes) == {Path(o).name for o in every} and \
            all(os.path.isfile(o) and os.path.getsize(o) == sizes.get(Path(o).name) for o in every)
        same_path = rec.get('input') == str(Path(src).resolve())
        same_content = rec.get('size') == Path(src).stat().st_size and rec.get('input_sha256') == self.input_digest(src)
        if same_content and intact:
            return 'done'  # a moved input of the same content made it too
        return 'changed' if same_path else 'other'

    def made_by(self, src, out) -> str:
        """What made ``out`` instead of this job (for a refusal): the setting fields that differ, or the input."""
        rec = self.read(out) or {}
        theirs, ours = rec.get('settings') or {}, self.settings['settings']
        diff = [f'{k} {_short(theirs.get(part, {}).get(k))} (this job: {_short(v)})'
                for part in ('model', 'output') for k, v in ours[part].items() if theirs.get(part, {}).get(k) != v]
        if diff:
            more = f' and {len(diff) - 3} more' if len(diff) > 3 else ''
            return 'was made by other settings: ' + ', '.join(diff[:3]) + more
        return f'was made from another input ({rec.get("input")})'

    def forget(self, out):
        """Drop the record of ``out`` (a part that became an output)."""
        self.path(out).unlink(missing_ok=True)

    def mark(self, src, outs):
        """Record finished ``outs`` of ``src`` (after they are complete on disk)."""
        rec = self._expected(src, outs)
        rec['outputs'] = {Path(o).name: os.path.getsize(o) for o in [*outs, *self.extra(outs[0])]}
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path(outs[0]), lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)),
                     durable=False)


def _short(value):
    text = str(value)
    return text[:12] + '…' if len(text) == 64 and all(c in '0123456789abcdef' for c in text) else text


def _refusal(names, what):
    more = f' (and {len(names) - 1} more)' if len(names) > 1 else ''
    return f'{names[0]}{more}: {what}. Pass --overwrite to replace it, or choose another --output (docs/contract.md).'


def sort_out(plan, records, overwrite):
    """(todo, skipped, changed) by docs/contract.md's rule: finished outputs skipped; ours whose input changed
    (``changed``) recomputed; an output no record explains, or one a record of other settings or another
    input made, refused in one line unless ``overwrite`` (then everything is recomputed)."""
    todo, skipped, changed, foreign, other = [], [], [], [], []
    for src, out, maps in plan:
        status = 'todo' if overwrite else records.status(src, [out, *maps])
        if status == 'done':
            skipped.append((src, out, maps))
            continue
        if status == 'foreign':
            foreign += [str(o) for o in [out, *maps] if os.path.lexists(o)]
        elif status == 'other':
            other.append((src, out))
        elif status == 'changed':
            changed.append((src, out))
        todo.append((src, out, maps))
    if foreign:
        raise InferError(_refusal(foreign, 'output exists, and no record says segsr-infer made it from this input'))
    if other:
        raise InferError(_refusal([str(o) for _, o in other], records.made_by(*other[0])))
    return todo, skipped, changed


def remove_stale_temps(outputs):
    """Delete the temporary siblings (``.<name>.<pid>.tmp*``, a COG's ``.tmp.gtiff.tmp`` too) that a stopped
    run left beside ``outputs`` (only ever called by the job holding the folder's :mod:`.job_lock`)."""
    for o in outputs:
        for tmp in Path(o).parent.glob(f'.{Path(o).name}.*.tmp*'):
            tmp.unlink(missing_ok=True)
