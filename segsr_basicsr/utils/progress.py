"""The one progress reporter: a tqdm bar on a terminal, plain lines in a log file.

Cluster jobs write stderr to a file, where a tqdm bar is one endless line of carriage returns;
there :class:`Progress` prints ``desc: done/total unit (rate, elapsed)`` every few seconds
(``SEGSR_PROGRESS_SECONDS``, default 10) and once at the end. With ``megapixels`` (scenes) the
line carries megapixels done, MP/s and the ETA instead.
"""
import json
import math
import os
import sys
import threading
import time

__all__ = ['Progress', 'JobProgress', 'progress', 'PROGRESS_SECONDS_ENV']

#: seconds between two progress lines when stderr is not a terminal
PROGRESS_SECONDS_ENV = 'SEGSR_PROGRESS_SECONDS'


class Progress:
    """Count work done (``bar(n)``) out of ``total``; ``close()`` at the end."""

    def __init__(self, total, desc, unit='files', megapixels=None, stream=None, every=None, enabled=True):
        self.total, self.desc, self.unit, self.mp = total, desc, unit, megapixels
        self.stream = sys.stderr if stream is None else stream
        self.every = float(os.environ.get(PROGRESS_SECONDS_ENV, 10)) if every is None else every
        self.enabled, self.done = enabled, 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and getattr(self.stream, 'isatty', lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        of = f'/{self.total}' if self.total is not None else ''
        head = f'{self.desc}: {self.done}{of} {self.unit}'
        if self.mp is None:
            return f'{head} ({self.done / elapsed:.2f} {self.unit}/s, {elapsed:.0f} s)'
        mp = self.mp * self.done / max(self.total or 1, 1)
        return f'{head}, {megapixel_rate(mp, self.mp, elapsed)}'

    def __call__(self, n=1):
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.mp is None:
            print(self.line(), file=self.stream, flush=True)


def megapixel_rate(done, total, elapsed) -> str:
    """``'12.5/40.0 MP, 1.20 MP/s, ETA 00:00:30'`` (the ETA from the mean rate so far)."""
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / rate if done > 0 else float('nan')
    eta_s = time.strftime('%H:%M:%S', time.gmtime(max(eta, 0))) if math.isfinite(eta) else '?'
    return f'{done:.1f}/{total:.1f} MP, {rate:.2f} MP/s, ETA {eta_s}'


class JobProgress:
    """One line for a whole job on every rank: scenes and LR megapixels done, rate, ETA.

    Each rank counts what it finished (:meth:`advance` during a scene, :meth:`finish` after one). On many
    ranks the counts go to ``folder/rank<N>.json`` (tagged with the job's ``token``) every second or so
    and rank 0 adds them up; rank 0 prints from a thread every ``every`` seconds, so it keeps reporting
    while it waits for the other ranks.
    """

    def __init__(self, scenes, megapixels, rank=0, world=1, folder=None, token='', stream=None, every=None,
                 enabled=True, desc='job'):
        self.total, self.mp_total, self.rank, self.world = scenes, megapixels, rank, world
        self.folder, self.token, self.desc = folder, token, desc
        self.stream = sys.stderr if stream is None else stream
        self.every = float(os.environ.get(PROGRESS_SECONDS_ENV, 10)) if every is None else every
        self.scenes = self.mp = self.unit_mp = 0.0
        self.t0 = self.saved = time.monotonic()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = None
        if enabled and rank == 0:
            self.thread = threading.Thread(target=self._report, name='segsr-progress', daemon=True)
            self.thread.start()

    def advance(self, mp):
        """``mp`` more LR megapixels of the current scene are done."""
        with self.lock:
            self.mp += mp
            self.unit_mp += mp
        self._save(force=False)

    def finish(self, mp, scenes=1.0):
        """The current scene (or ``scenes``, a fraction for a band) is done: ``mp`` LR megapixels in all."""
        with self.lock:
            self.mp += mp - self.unit_mp
            self.scenes += scenes
            self.unit_mp = 0.0
        self._save(force=True)

    def _save(self, force):
        if self.world == 1 or self.folder is None or (not force and time.monotonic() - self.saved < 1.0):
            return
        self.saved = time.monotonic()
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f'rank{self.rank}.json')
        with open(f'{path}.tmp', 'w') as f:
            json.dump({'token': self.token, 'scenes': self.scenes, 'mp': self.mp}, f)
        os.replace(f'{path}.tmp', path)

    def totals(self):
        """(scenes, MP) done on all ranks (rank 0 reads the others' files; a missing one counts as 0)."""
        scenes, mp = self.scenes, self.mp
        for r in range(1, self.world if self.folder else 1):
            try:
                with open(os.path.join(self.folder, f'rank{r}.json')) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if rec.get('token') == self.token:
                scenes, mp = scenes + rec['scenes'], mp + rec['mp']
        return scenes, mp

    def line(self) -> str:
        scenes, mp = self.totals()
        rate = megapixel_rate(mp, self.mp_total, time.monotonic() - self.t0)
        ranks = f' on {self.world} ranks' if self.world > 1 else ''
        return f'{self.desc}: {int(scenes + 1e-9)}/{self.total} scenes{ranks}, {rate}'

    def _report(self):
        while not self.stop.wait(self.every):
            print(self.line(), file=self.stream, flush=True)

    def close(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def progress(items, desc, unit='files', total=None, stream=None, every=None, closing_line=True):
    """Iterate ``items`` while reporting through :class:`Progress` (``closing_line=False``: a log file gets
    lines only while it takes long, none at the end, e.g. for a quick check before the real work)."""
    total = len(items) if total is None and hasattr(items, '__len__') else total
    bar = Progress(total, desc, unit, stream=stream, every=every)
    for item in items:
        yield item
        bar(1)
    if closing_line or bar.bar is not None:
        bar.close()  # the closing line only when all went through (an error line says the rest)
