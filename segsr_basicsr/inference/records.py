"""What made an output, as data: the settings that change its pixels or format, and the records that prove it.

:class:`ModelSettings` (filled by ``load_model``) and :class:`OutputSettings` (one batch's reading, tiling
and writing options) are the only way those settings reach the upscaler and the batch job, so the record
of a finished output (:func:`done_record`, one function for the CLI and the API) holds every one of them
by construction. A finished output gets ``<output>/.segsr-done/<name>.json``; re-running skips what a
record proves finished, recomputes what other settings made (our record, other settings: stale), and
refuses an output that no record explains (somebody else's file) unless ``overwrite``.
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
        self.extra = extra_outputs or (lambda out: [])

    def path(self, out) -> Path:
        return self.dir / f'{Path(out).name}.json'

    def _expected(self, src, outs):
        outs = [*outs, *self.extra(outs[0])]
        st = Path(src).stat()
        return {'input': str(Path(src).resolve()), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,
                **self.settings, 'outputs': {Path(o).name: None for o in outs}}

    def status(self, src, outs) -> str:
        """'done' (record matches, outputs intact), 'stale' (our record, other inputs/settings), 'foreign'
        (an output exists that no record explains), or 'todo'."""
        rec_path = self.path(outs[0])
        every = [*outs, *self.extra(outs[0])]
        existing = [o for o in every if os.path.lexists(o)]
        if not rec_path.is_file():
            return 'foreign' if existing else 'todo'
        rec = json.loads(rec_path.read_text())
        want = self._expected(src, outs)
        sizes = rec.get('outputs') or {}
        intact = all(os.path.isfile(o) and os.path.getsize(o) == sizes.get(Path(o).name) for o in every)
        same = all(rec.get(k) == v for k, v in want.items() if k != 'outputs') and set(sizes) == set(want['outputs'])
        return 'done' if same and intact else 'stale'

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
