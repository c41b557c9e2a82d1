"""Timing shared by the benchmarks: interleaved runs, so a shared machine's load hits every candidate alike.

A ratio (net / reference) is taken per round from two runs seconds apart, so a load change between
rounds cancels; rounds go on until the spread of those per-round ratios is small (or a budget ends).
"""
import os
import statistics
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


def spread(values) -> float:
    """Relative spread of ``values``: interquartile range / median (0 for fewer than 2 values)."""
    values = list(values)
    if len(values) < 2:
        return 0.
    q1, _, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return (q3 - q1) / statistics.median(values)


def round_ratios(times: dict, ref: str) -> dict:
    """(name, 'wall'|'cpu') -> per-round ratios time(name) / time(ref) of the same round."""
    out = {}
    for name, ts in times.items():
        if name == ref:
            continue
        for i, kind in enumerate(('wall', 'cpu')):
            out[(name, kind)] = [t[i] / r[i] for t, r in zip(ts, times[ref])]
    return out


def interleaved_until_steady(fns: dict, device: torch.device, ref: str, *, watch=None, warmup: int = 1,
                             min_repeats: int = 5, max_repeats: int = 30, max_seconds: float = 600.,
                             target_spread: float = 0.05, report=None) -> dict:
    """Interleaved rounds until every ratio fn / ``ref`` (wall and CPU) of the names in ``watch`` (default:
    all) has spread < ``target_spread``.

    Returns dict(times: name -> [(wall, cpu)], ratios: (name, kind) -> per-round ratios, steady: bool,
    rounds, loads: 1-min load average after each round).  Stops unsteady after ``max_repeats`` rounds
    or ``max_seconds``.  ``report(round, ratios of this round, load)`` is called after each round.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    loads = []
    start = time.perf_counter()
    steady = False
    while True:
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
        loads.append(os.getloadavg()[0])
        rounds = len(loads)
        ratios = round_ratios(times, ref)
        if report is not None:
            report(rounds, {key: r[-1] for key, r in ratios.items() if watch is None or key[0] in watch}, loads[-1])
        steady = rounds >= min_repeats and all(spread(r) < target_spread for (name, _), r in ratios.items()
                                               if watch is None or name in watch)
        if steady or rounds >= max_repeats or time.perf_counter() - start > max_seconds:
            return dict(times=times, ratios=ratios, steady=steady, rounds=rounds, loads=loads)
