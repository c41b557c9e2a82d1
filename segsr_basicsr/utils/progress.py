"""The one progress reporter: a tqdm bar on a terminal, plain lines in a log file.

Cluster jobs write stderr to a file, where a tqdm bar is one endless line of carriage returns;
there :class:`Progress` prints ``desc: done/total unit (rate, elapsed)`` every few seconds
(``SEGSR_PROGRESS_SECONDS``, default 10) and once at the end. With ``megapixels`` (scenes) the
line carries megapixels done, MP/s and the ETA instead.
"""
import math
import os
import sys
import time

__all__ = ['Progress', 'progress', 'PROGRESS_SECONDS_ENV']

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
        eta = (self.total - self.done) * elapsed / self.done if self.done and self.total else float('nan')
        eta_s = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
        return f'{head}, {mp:.1f}/{self.mp:.1f} MP, {mp / elapsed:.2f} MP/s, ETA {eta_s}'

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
