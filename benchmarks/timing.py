"""Timing shared by the benchmarks: interleaved runs, so a shared machine's load hits every candidate alike."""
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(wall s, process CPU s) of one call; CPU time is less disturbed by other jobs on a shared machine."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_times(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """name -> [(wall s, CPU s)] per repeat; fns run A, B, C, A, B, C, ... after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times
