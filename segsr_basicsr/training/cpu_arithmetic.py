"""CPU arithmetic that does not depend on the machine: the option file's ``num_threads`` and ``cpu_kernels``.

The same run on two CPUs can end at different weights: torch picks its vectorised kernels (ATen), oneDNN its
convolutions and MKL its matrix products by what the CPU offers (AVX-512 on one machine, AVX2 on another),
and the thread count sets the order of their reductions. Over the demo's 3000 steps these last-digit
differences moved its PSNR by 0.45 dB (MKL's path on an Intel AVX-512 CPU against its path for any x86 CPU) and by
0.02 dB (threads; ATen's and oneDNN's AVX-512 against AVX2) (docs/limits.md#reproducing-the-demo-figures).
``cpu_kernels: avx2`` makes all three take their AVX2 path, which every x86-64 CPU since 2013 has, with MKL
in its reproducible mode for Intel and AMD CPUs alike (``MKL_CBWR=COMPATIBLE``); ``native`` (the default)
keeps the fastest path. The three libraries read these settings at their first computation, so they are
set before the run builds anything, and the process refuses to go on when torch already chose its kernels.
"""
import os
import platform

import torch

from segsr_basicsr.errors import OptionError

#: the environment each library reads once, at its first computation
AVX2_ENV = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_CBWR': 'COMPATIBLE'}


def cpu_has_avx2(cpuinfo='/proc/cpuinfo') -> bool:
    """An x86-64 CPU with AVX2 and FMA (what the AVX2 kernels use)."""
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    except OSError:
        return False
    return 'avx2' in flags and 'fma' in flags


def pin_cpu_arithmetic(opt, warn=print):
    """Apply ``num_threads`` and ``cpu_kernels`` of the option dict ``opt`` (checked by
    :func:`~segsr_basicsr.options.check_cpu_options`) to this process and its children.

    ``warn(line)`` is told when ``cpu_kernels: avx2`` cannot apply (not an x86-64 CPU with AVX2): the run goes
    on with the CPU's own kernels, so its figures may differ in the last digits from an AVX2 machine's.
    """
    if opt.get('num_threads'):
        torch.set_num_threads(int(opt['num_threads']))
    kernels = opt.get('cpu_kernels') or 'native'
    if kernels == 'native':
        return
    if not cpu_has_avx2():
        warn(f'cpu_kernels: avx2: this CPU ({platform.machine()}) has no AVX2; its own kernels run, so results '
             'may differ in the last digits from those of an x86-64 machine.')
        return
    for name, value in AVX2_ENV.items():
        have = os.environ.get(name)
        if have is not None and have.lower() != value.lower():
            raise OptionError(f'cpu_kernels: avx2 needs {name}={value}, but the environment sets {name}={have}; '
                              f'unset it, or set cpu_kernels: native to keep it.')
        os.environ[name] = value
    chosen = torch.backends.cpu.get_cpu_capability()  # computed once per process, at the first use
    if chosen != 'AVX2':
        exports = ' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())
        raise OptionError(f'cpu_kernels: avx2: torch already runs its {chosen} kernels in this process (something '
                          f'computed before the option file was read); start it with {exports} in the environment.')
