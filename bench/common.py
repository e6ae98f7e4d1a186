"""Helpers shared by the benchmarks: timing, the tutorial-style baseline loop, table output."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int = 3) -> float:
    """The fastest of several runs, in seconds: the least disturbed by a shared, noisy machine. As `timeit` does,
    the garbage collector is off while a run is timed (after a collection): a full pass over torch's objects costs
    about 0.2 s here and landed in one side or the other at random (trainq's worker freezes those objects, so its
    jobs do not pay it either)."""
    return best_of_each([fn], repeats)[0]


def best_of_each(fns: list, repeats: int = 3) -> list[float]:
    """The fastest of several runs of each function, the functions taking turns (a baseline and what is measured
    against it: a slow spell of the machine falls on both, not on all the runs of one)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, taken in zip(fns, times):
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                fn()
                taken.append(time.perf_counter() - start)
            finally:
                gc.enable()
    return [min(taken) for taken in times]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def row(figure: str, baseline: str, trainq: str, ratio: str, target: str) -> None:
    print(f"| {figure} | {baseline} | {trainq} | {ratio} | {target} |", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
