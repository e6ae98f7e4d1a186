"""Helpers shared by the benchmarks: timing, the tutorial-style baseline loop, table output."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int = 3) -> float:
    """The fastest of several runs, in seconds: the least disturbed by a shared, noisy machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def row(figure: str, baseline: str, trainq: str, ratio: str, target: str) -> None:
    print(f"| {figure} | {baseline} | {trainq} | {ratio} | {target} |", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
