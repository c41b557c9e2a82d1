"""A batch of scenes run: this rank's share of the units, what is already done skipped, shared scenes assembled.

:func:`run_batch` is the one batch path (``segsr-infer`` and :meth:`SeGSRUpscaler.upscale_batch`): list the
inputs, plan the outputs, take the output folder's job lock and sort out under it what the done-records
(:mod:`.records`) prove finished and who may replace what (docs/contract.md), check every input the way it
will be read, then run this rank's units and assemble the scenes shared in strips.
"""
import sys
import warnings
from pathlib import Path

from segsr_basicsr.errors import InferError, SceneWarning
from segsr_basicsr.inference.batch_plan import (PARTS_DIR, check_inputs, check_job_paths, make_units, plan_outputs,
                                                shares, streams)
from segsr_basicsr.inference.job_lock import JobLock
from segsr_basicsr.inference.records import RECORDS_DIR, DoneRecords, done_record, remove_stale_temps, sort_out
from segsr_basicsr.inference.scene_quality import describe as describe_quality
from segsr_basicsr.inference.scene_quality import quality_outputs, score_image_files, write_quality
from segsr_basicsr.utils.progress import JobProgress


def rank_and_world():
    """(rank, world size) of an initialised process group, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree_on_plan(plan, records, overwrite):
    """Rank 0 takes the output folder's :class:`JobLock` for the whole job, sorts out the plan under it
    (:func:`sort_out`: docs/contract.md's rule; inputs hashed once, by rank 0) and clears what a stopped run
    left of the plan's outputs; then its decision goes to every rank (one broadcast) with a token naming this
    job, or its refusal, which every rank raises. A rank that sorted out on its own could see outputs another
    rank already wrote as done and compute a different split (then some input would be nobody's). Returns
    (todo, skipped, changed, token, lock or None); only rank 0 holds the lock."""
    import uuid
    rank, world = rank_and_world()
    decided, lock, failure = None, None, None
    if rank == 0:
        token = uuid.uuid4().hex
        lock = JobLock(records.dir, records.settings['settings_sha256'], token)
        try:
            lock.acquire()
            decided = (*sort_out(plan, records, overwrite), token)
            remove_stale_temps(o for src, out, maps in plan for o in [out, *maps])
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, then it is raised
            lock.release()
            failure, lock = e, None
    if world > 1:
        import torch.distributed as dist
        box = [(decided, failure and (isinstance(failure, InferError), str(failure)), records.digests)]
        dist.broadcast_object_list(box, src=0)
        decided, refused, records.digests = box[0]
        if refused and rank > 0:
            raise InferError(refused[1]) if refused[0] else RuntimeError(f'rank 0 failed planning: {refused[1]}')
    if failure is not None:
        raise failure
    return (*decided, lock)


def _barrier(world):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _drop_parts(outs, records):
    """The parts of finished ``outs`` (any strip count, a stopped run's too), their records and temporaries."""
    for o in outs:
        folder = o.parent / PARTS_DIR
        for part in [*folder.glob(f'{o.stem}.strip*of*{o.suffix}'), *folder.glob(f'.{o.stem}.strip*of*.tmp*')]:
            part.unlink(missing_ok=True)
            records.forget(part)
    try:  # the parts folder goes with the last part
        outs[0].parent.joinpath(PARTS_DIR).rmdir()
    except OSError:
        pass


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
        _drop_parts([u.out, *u.maps], records)


def _run_unit(u, records, work, job, overwrite):
    outs = u.outputs()
    if u.strip is not None and not overwrite and records.status(u.src, outs) == 'done':
        job.finish(u.pixels / 1e6, u.share)  # a strip a stopped run of this job finished
        return
    Path(outs[0]).parent.mkdir(parents=True, exist_ok=True)
    records.input_digest(u.src)  # the record names the input as it was when the work began
    work(u, outs, job)
    records.mark(u.src, outs)
    if u.strip is None:
        _drop_parts(outs, records)  # a stopped run under another rank count shared it in strips
    job.finish(u.pixels / 1e6, u.share)


def run_share(todo, token, records, out_dir, work, assemble=None, strips_of=None, progress=True, overwrite=False):
    """This rank's share of ``todo`` (rank 0's plan, split by pixels): ``work(unit, outputs, job)`` for each
    :class:`Unit` (with ``assemble``, large rasters are shared in strips, then ``assemble(src, out, maps,
    parts, map_parts)``), after clearing what a killed run left of its parts, then its done-record. A
    finished strip is not recomputed (unless ``overwrite``). ``job`` (:class:`JobProgress`, named by the
    job's ``token``) takes ``advance(mp)`` calls; rank 0 prints the whole job's line. Returns (done units,
    LR MP); every rank has finished when it returns."""
    rank, world = rank_and_world()
    units = make_units(todo, world, strips_of if assemble else None)
    mine = [units[i] for i in shares([u.pixels for u in units], world)[rank]]
    remove_stale_temps(o for u in mine for o in u.outputs())  # the parts of this rank's strips
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
        _barrier(world)  # the job's lock goes when every rank is done
    finally:
        job.close()
    return mine, sum(u.pixels for u in mine) / 1e6


# ----------------------------------------------------------------------------- the one batch path
def run_batch(model, inputs, out_dir, out, overwrite=False, split=True, progress=True, log=None) -> dict:
    """``model`` (a :class:`SeGSRUpscaler`) on ``inputs`` into ``out_dir`` with :class:`OutputSettings` ``out``;
    every check before any work (identical on every rank). See :meth:`SeGSRUpscaler.upscale_batch`."""
    files = check_job_paths(inputs, out_dir)
    if out.save_maps and not model.num_maps:
        raise InferError(f'--save-maps: {model.name} gives no semantic maps (a network without guidance, or an '
                         'ONNX file); save maps from the checkpoint, or export with segsr-export --maps for QA.')
    plan = plan_outputs(files, out_dir, model.scale, out.save_maps, model.num_maps if out.save_maps else 0)
    records = DoneRecords(out_dir, done_record(model.settings, out), lambda o: [] if Path(o).parent.name == PARTS_DIR
                          else quality_outputs(o, out.quality))
    todo, skipped, changed, token, lock = agree_on_plan(plan, records, overwrite)
    scores = {}  # output -> LR-consistency in dB, of this rank's scenes (with out.quality)
    try:
        check_inputs([src for src, _, _ in todo], out)
        for src, dst in changed if log is not None and rank_and_world()[0] == 0 else []:
            log(f'{src}: changed since {dst} was made from it (content digest); recomputing it')

        def work(unit, outs, job):
            _run_one(model, out, unit, outs, _unit_progress(model, out, unit, job, progress), log, scores)

        assemble, strips_of = _sharing(model, out, log, scores) if split else (None, None)
        mine, mp = run_share(todo, token, records, out_dir, work, assemble, strips_of, progress=progress,
                             overwrite=overwrite)
    finally:
        if lock is not None:
            lock.release()
    return {'done': sorted({(u.src, u.out) for u in mine}), 'skipped': len(skipped),
            'scenes': sum(u.share for u in mine), 'megapixels': mp, 'quality': scores}


def _upscale_unit(model, out, unit, outs, progress, scores) -> str:
    """One input (or strip ``(k, n)`` of a raster) -> its output(s) (or parts); returns the line to print."""
    src, dst, maps = unit.src, outs[0], outs[1:]
    qfiles = quality_outputs(dst, out.quality) if unit.strip is None else []
    if streams(src):
        st = model.upscale_raster(src, dst, tile=out.tile, maps_dst=maps or None, progress=progress,
                                  strip=unit.strip, quality=bool(qfiles), quality_map=(qfiles[1] if len(qfiles) > 1 else None),
                                  **out.raster_kw())
        (w, h), (sw, sh) = st['lr_size'], st['sr_size']
        what = f'{src} strip {unit.strip[0] + 1}/{unit.strip[1]} (LR rows {st["lr_rows"][0]}:{st["lr_rows"][1]})' \
            if unit.strip else str(src)
        line = f'{what} -> {dst} ({w}x{h} -> {sw}x{sh}, {st["tiles"]} tiles, {st["seconds"]:.1f} s)'
        return line + _save_quality(src, dst, qfiles, st.get('quality'), scores)
    w, h = model.upscale_image_file(src, dst, maps, tile=out.tile, image_kw=out.image_kw(), progress=progress)
    figures = score_image_files(src, dst, (qfiles[1] if len(qfiles) > 1 else None), out.image_kw()) if qfiles else None
    return f'{src} -> {dst} ({w}x{h} -> {w * model.scale}x{h * model.scale})' + _save_quality(src, dst, qfiles,
                                                                                                figures, scores)


def _save_quality(src, dst, qfiles, figures, scores) -> str:
    """The figures of a finished output into its quality JSON (and ``scores``); the words for its line."""
    if not qfiles:
        return ''
    write_quality(qfiles[0], dict(figures, input=str(src), output=Path(dst).name,
                                  map=qfiles[1].name if len(qfiles) > 1 else None))
    scores[str(dst)] = figures['lr_consistency_db']
    return f', {describe_quality(figures)}'


def _unit_progress(model, out, unit, job, progress):
    """Alone, a bar per scene; under many ranks a raster's tiles advance the job's line (no bar per scene)."""
    if not progress:
        return False
    if rank_and_world()[1] == 1:
        return True
    if not streams(unit.src):
        return False
    tiles = model.count_tiles(unit.src, out.tile, strip=unit.strip)
    return lambda n: job.advance(unit.pixels / 1e6 * n / tiles)


def _run_one(model, out, unit, outs, progress, log, scores):
    """:func:`_upscale_unit`; with ``log`` (the CLI) its line is logged and scene warnings become lines."""
    if log is None:
        _upscale_unit(model, out, unit, outs, progress, scores)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', SceneWarning)
        line = _upscale_unit(model, out, unit, outs, progress, scores)
    for w in caught:
        if issubclass(w.category, SceneWarning):
            print(f'segsr-infer: warning: {w.message}', file=sys.stderr, flush=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    log(line)


def _sharing(model, out, log, scores):
    """(assemble, strips_of) for :func:`run_share`: how a large raster is shared among ranks in strips (a
    shared scene's quality is scored on the assembled output: the halo crosses strip edges)."""

    def assemble(src, dst, maps, parts, map_parts):
        model.assemble_raster(src, parts, dst, map_parts=map_parts, maps_dst=maps, **out.raster_kw())
        qfiles = quality_outputs(dst, out.quality)
        figures = model.score_raster(src, dst, (qfiles[1] if len(qfiles) > 1 else None), out.bands, out.max_value, out.stretch,
                                     out.no_geo) if qfiles else None
        words = _save_quality(src, dst, qfiles, figures, scores)
        if log is not None:
            log(f'{src} -> {dst} (assembled from {len(parts)} strips{words})')

    return assemble, lambda src, parts: model.scene_strips(src, parts, out.tile)
