"""Throughput of 40 small jobs through 1 worker process and through 4 (PostgreSQL, Redis, real workers).

On a two-core machine the gain is bounded by the cores: four processes share two of them."""

from __future__ import annotations

import os
import time

import common
from stack import running_stack

SMALL = {"name": "small", "dataset": {"name": "moons", "n_samples": 600},
         "model": {"layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                              {"type": "dense", "units": 2}]},
         "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.01},
         "training": {"epochs": 30, "batch_size": 16}}


def throughput(workers: int, jobs: int = 40) -> float:
    with running_stack(workers=workers) as stack:
        stack.wait(stack.submit(SMALL), timeout=120)  # warm up one worker
        start = time.perf_counter()
        ids = [stack.submit({**SMALL, "name": f"small-{i}"}) for i in range(jobs)]
        for job_id in ids:
            assert stack.wait(job_id, timeout=600)["status"] == "succeeded"
        return jobs / (time.perf_counter() - start)


def main() -> None:
    one, four = throughput(1), throughput(4)
    print(f"40 jobs: 1 worker {one:.2f} jobs/s, 4 workers {four:.2f} jobs/s: {four / one:.2f}x on {os.cpu_count()} cores")
    common.row("40 small jobs, 4 worker processes ÷ 1", f"{one:.2f} jobs/s", f"{four:.2f} jobs/s",
               f"{four / one:.2f}x", f"bounded by {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
