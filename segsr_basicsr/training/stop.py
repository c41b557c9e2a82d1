"""Stopping training from outside (preemption, a time limit, Ctrl-C) at an iteration boundary, losing nothing.

A cluster scheduler sends SIGTERM (or the signal the job asked for, ``#SBATCH --signal=USR1@120``) and
kills the job a grace period later. :class:`StopRequest` turns the signals of ``train.stop_signals`` into
a flag; the model checks it after every optimizer step (all ranks agree first under torchrun), writes
that iteration's checkpoint exactly as a periodic save does, and the process exits with
:data:`STOP_EXIT_CODE`, so a job script can tell "stopped early, requeue me" from "finished" (0) and
from "failed" (1, 2). ``--auto_resume`` then continues from the saved iteration. Under torchrun the
scheduler signals torchrun, which exits 1 whatever the ranks did: each rank leaves a stop record
(:func:`segsr_basicsr.utils.dist.record_stop`) and :mod:`segsr_basicsr.launch` exits 75 on it.
"""
import os
import signal
import sys
import threading

from segsr_basicsr.options import DEFAULT_STOP_SIGNALS, signal_numbers  # noqa: F401
from segsr_basicsr.utils.cli import STOP_EXIT_CODE  # noqa: F401

__all__ = ['STOP_EXIT_CODE', 'DEFAULT_STOP_SIGNALS', 'StopRequest', 'STOP', 'signal_numbers']



class StopRequest:
    """The process-wide stop flag: set by a signal handler, read by the model between iterations."""

    def __init__(self):
        self.signum = None
        self.epoch = 0  # the training epoch in progress (the sampler reports it), for the saved state
        self._installed = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self, numbers):
        """Catch ``numbers`` (main thread only); a repeated signal is ignored, so a save in progress finishes."""
        if threading.current_thread() is not threading.main_thread():
            return
        for num in numbers:
            self._installed[num] = signal.signal(num, self._handle)

    def uninstall(self):
        for num, previous in self._installed.items():
            signal.signal(num, previous)
        self._installed.clear()

    def _handle(self, signum, frame):
        if self.signum is not None:
            return
        self.signum = signum
        rank = os.environ.get('RANK')
        who = f' (rank {rank})' if rank is not None else ''
        print(f'segsr-train: {signal.Signals(signum).name} received{who}: stopping after this iteration, '
              'saving a checkpoint first.', file=sys.stderr, flush=True)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else 'a signal on another rank'


STOP = StopRequest()
