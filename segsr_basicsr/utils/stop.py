"""Stopping training from outside (preemption, a time limit, Ctrl-C) at an iteration boundary, losing nothing.

A cluster scheduler sends SIGTERM (or the signal the job asked for, ``#SBATCH --signal=USR1@120``) and
kills the job a grace period later. :class:`StopRequest` turns the signals of ``train.stop_signals`` into
a flag; the model checks it after every optimizer step (all ranks agree first under torchrun), writes
that iteration's checkpoint exactly as a periodic save does, and the process exits with
:data:`STOP_EXIT_CODE`, so a job script can tell "stopped early, requeue me" from "finished" (0) and
from "failed" (1, 2). ``--auto_resume`` then continues from the saved iteration.
"""
import os
import signal
import sys
import threading

from segsr_basicsr.errors import OptionError
from segsr_basicsr.io.option_file import suggest

__all__ = ['STOP_EXIT_CODE', 'DEFAULT_STOP_SIGNALS', 'StopRequest', 'STOP', 'signal_numbers']

#: exit code of a run stopped by a signal after saving (EX_TEMPFAIL: "try again"); docs/training.md
STOP_EXIT_CODE = 75
DEFAULT_STOP_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGUSR1', 'SIGUSR2')


def signal_numbers(names, where='train:stop_signals'):
    """['SIGTERM', 'USR1', 15, ...] -> signal numbers; an unknown name is an OptionError naming it."""
    if names is None:
        names = DEFAULT_STOP_SIGNALS
    if not isinstance(names, (list, tuple)):
        raise OptionError(f'{where} must be a list of signal names, e.g. [SIGTERM, SIGUSR1], got {names!r}.')
    known = {s.name: s for s in signal.Signals}
    numbers = []
    for name in names:
        text = str(name).upper()
        text = text if text.startswith('SIG') or text.isdigit() else f'SIG{text}'
        sig = known.get(text) or (signal.Signals(int(text)) if text.isdigit() and int(text) in
                                  {s.value for s in signal.Signals} else None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise OptionError(f'{where}: {name!r} is not a signal a process can catch{suggest(text, known)}.')
        numbers.append(int(sig))
    return numbers


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
