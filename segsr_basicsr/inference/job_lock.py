"""One job at a time in an output folder: ``<output>/.segsr-done/job.lock`` names the job writing there.

Two jobs in one folder would delete each other's temporaries and could replace each other's outputs; with
the lock the second refuses in one line (docs/contract.md). The lock holds the job's settings digest, host,
pid and token; its mtime is a heartbeat the holder renews every :data:`HEARTBEAT` seconds. A lock whose
process is gone (same host) or whose heartbeat stopped :data:`STALE_AFTER` seconds ago (any host: a
preempted node) belongs to a stopped job and is taken over, so the same command after SIGKILL goes on.
Under torchrun, rank 0 takes it for every rank of its job (:func:`segsr_basicsr.inference.batch.agree_on_plan`).
"""
import json
import os
import socket
import threading
import time
from pathlib import Path

from segsr_basicsr.errors import InferError

LOCK_NAME = 'job.lock'
HEARTBEAT = 30.0
STALE_AFTER = 120.0


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # another user's process, or a pid we cannot judge: alive
    return True


def _publish(tmp, path):
    """``tmp`` appears at ``path`` whole, unless ``path`` exists (FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic and exclusive: the whole lock or none
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then the content
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, 'w') as f:
            f.write(Path(tmp).read_text())


class JobLock:
    """``acquire()`` or refuse; ``release()`` when the job ends (any way but a kill)."""

    def __init__(self, records_dir, settings_sha256, token):
        self.path = Path(records_dir) / LOCK_NAME
        self.me = {'settings_sha256': settings_sha256, 'host': socket.gethostname(), 'pid': os.getpid(),
                   'token': token, 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
        self._stop = threading.Event()
        self._thread = None
        self.held = False
        self._made = []  # folders acquire() created: removed on release when empty

    def _holder(self):
        """(the lock's content or {} when unreadable, seconds since its heartbeat), or None if there is none."""
        try:
            age = time.time() - self.path.stat().st_mtime
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}, float('inf')  # never half-written (hard-linked whole); unreadable: nobody's
        return (holder if isinstance(holder, dict) else {}), age

    def _stale(self, holder, age) -> bool:
        if age > STALE_AFTER:
            return True
        return holder.get('host') == self.me['host'] and not _alive(holder.get('pid'))

    def _take_over(self, holder) -> bool:
        """Move a stopped job's lock aside; False if it changed meanwhile (another job took it first)."""
        aside = self.path.with_name(f'{LOCK_NAME}.{os.getpid()}.stale')
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved.get('token') != holder.get('token'):
            try:
                os.link(aside, self.path)  # put the new holder's lock back
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self):
        """Take the lock (a stopped job's is taken over) or raise :class:`InferError` naming the holder."""
        self._made = [d for d in (self.path.parent, self.path.parent.parent) if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f'.{LOCK_NAME}.{os.getpid()}.tmp')
        mine.write_text(json.dumps(self.me))
        try:
            for _ in range(5):
                try:
                    _publish(mine, self.path)
                    self.held = True
                    self._thread = threading.Thread(target=self._beat, name='segsr-job-lock', daemon=True)
                    self._thread.start()
                    self._clear_leftovers()
                    return
                except FileExistsError:
                    pass
                found = self._holder()
                if found is None:
                    continue
                holder, age = found
                if not self._stale(holder, age) or not self._take_over(holder):
                    raise InferError(self._refusal(holder))
        finally:
            mine.unlink(missing_ok=True)
        raise InferError(f'{self.path}: could not take the output folder\'s lock; run the command again.')

    def _clear_leftovers(self):
        """Temporaries of acquisitions by processes of this host that are gone (a kill between two lines)."""
        for p in self.path.parent.glob(f'.{LOCK_NAME}.*.tmp'):
            pid = p.name[len(LOCK_NAME) + 2:-len('.tmp')]
            if pid.isdigit() and not _alive(pid):
                p.unlink(missing_ok=True)

    def _refusal(self, holder):
        same = 'the same' if holder.get('settings_sha256') == self.me['settings_sha256'] else 'other'
        return (f'{self.path.parent.parent}: another segsr-infer job is writing here (pid {holder.get("pid")} on '
                f'{holder.get("host")}, since {holder.get("started")}, {same} settings; lock {self.path}). Wait for it '
                f'to end, or choose another --output; a stopped job\'s lock is taken over {STALE_AFTER:.0f} s after '
                'its last heartbeat.')

    def _beat(self):
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self):
        """Remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = self._holder()
        if self.held and found is not None and found[0].get('token') == self.me['token']:
            self.path.unlink(missing_ok=True)
        self.held = False
        for d in self._made:  # a job refused or stopped before any output leaves no folders behind
            try:
                d.rmdir()
            except OSError:
                pass
