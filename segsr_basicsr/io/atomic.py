"""Write files and folders so that a final name only ever holds a complete result.

A file is written to a hidden temporary sibling (same folder, so the rename is
atomic on POSIX and Windows), flushed, then renamed over the final name. A folder
is built under a hidden sibling and renamed into place when the whole job succeeded.
Temporary names start with a dot and contain ``.tmp``, so neither BasicSR's
``scandir`` nor a ``*.pth`` / ``*.state`` glob picks them up, and leftovers of a
killed run are recognisable (and removed by the next successful write).
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from segsr_basicsr.errors import DataError

__all__ = ['TMP_MARK', 'temp_sibling', 'fsync_dir', 'atomic_write', 'check_free', 'staged_outputs', 'staged_output']

TMP_MARK = '.tmp'


def temp_sibling(path, keep_suffix=False) -> Path:
    """``dir/.name.<pid>.tmp`` (``+ suffix`` when the writer picks its format from the extension)."""
    path = Path(path)
    return path.parent / f'.{path.name}.{os.getpid()}{TMP_MARK}{path.suffix if keep_suffix else ""}'


def fsync_dir(folder):
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(folder: Path, name: str):
    """Temporaries of ``name`` left by killed runs (any pid) are garbage once the real file is in place."""
    prefix = f'.{name}.'
    for entry in os.listdir(folder):
        if entry.startswith(prefix):
            pid, mark, _ = entry[len(prefix):].partition(TMP_MARK)
            if mark and pid.isdigit():
                try:
                    os.remove(folder / entry)
                except OSError:
                    pass


def _commit(tmp: Path, path: Path):
    """The rename that publishes a finished file (one seam, so tests can interrupt a write here)."""
    os.replace(tmp, path)


def atomic_write(path, writer, keep_suffix=False, durable=True):
    """``writer(tmp_path)`` writes the file; then it is renamed to ``path``. Returns ``path``.

    ``keep_suffix``: the temporary name ends with ``path``'s suffix (for writers such as
    OpenCV or GDAL that choose the format by extension). ``durable``: fsync the file and
    the folder (checkpoints; costly for thousands of small images). On any error,
    including KeyboardInterrupt, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, keep_suffix)
    try:
        writer(tmp)
        if durable:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(folder)
    _remove_stale_temps(folder, path.name)
    return path


def check_free(*paths):
    """Refuse before any work if an output exists: we never overwrite or merge into user data."""
    taken = [str(p) for p in paths if os.path.lexists(p)]
    if taken:
        raise DataError('refusing to overwrite existing output: ' + ', '.join(taken) +
                        '. Delete it or choose another output path.')


@contextmanager
def staged_outputs(*finals):
    """Yield hidden sibling paths (not created) for the folders/files ``finals``; rename them all into
    place only if the block succeeds, delete them if it fails. A run leaves complete outputs or none."""
    finals = [Path(f) for f in finals]
    check_free(*finals)
    dup = sorted({str(f) for f in finals if finals.count(f) > 1})
    if dup:
        raise DataError(f'two outputs of this run would be written to the same path: {", ".join(dup)}. '
                        'Give each input its own output.')
    tmps, made = [], []
    for final in finals:
        for d in reversed([final.parent, *final.parent.parents]):
            if not d.exists():
                d.mkdir()
                made.append(d)
        # keep the suffix: BasicSR's LmdbMaker insists on '.lmdb'
        tmp = temp_sibling(final, keep_suffix=True)
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)  # our own leftover from a killed run that had the same pid
        tmps.append(tmp)
    try:
        yield tmps
    except BaseException:
        for tmp in tmps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.remove(tmp)
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
    """:func:`staged_outputs` for one output."""
    with staged_outputs(final) as tmps:
        yield tmps[0]
