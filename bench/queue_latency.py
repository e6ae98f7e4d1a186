"""Queue latency with a warm worker: submit to claim (the worker starts training right after), p50 and p95,
from the service's own timestamps. Jobs are submitted one at a time so each finds the worker waiting."""

from __future__ import annotations

import time
from datetime import datetime

import common
from stack import running_stack

TINY = {"name": "latency", "dataset": {"name": "xor"},
        "model": {"layers": [{"type": "dense", "units": 1}]}, "loss": {"type": "bce"},
        "optimizer": {"type": "sgd", "lr": 0.1}, "training": {"epochs": 1, "batch_size": 4}}


def main(jobs: int = 30) -> None:
    with running_stack() as stack:
        stack.wait(stack.submit(TINY), timeout=120)  # warm up
        latencies = []
        for _ in range(jobs):
            time.sleep(0.3)  # let the worker's next child process be forked and waiting
            job = stack.wait(stack.submit(TINY), timeout=60)
            started = datetime.fromisoformat(job["started_at"])
            created = datetime.fromisoformat(job["created_at"])
            latencies.append((started - created).total_seconds() * 1000)
    p50, p95 = common.percentile(latencies, 50), common.percentile(latencies, 95)
    print(f"submit to claim over {jobs} jobs: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(latencies):.1f} ms")
    common.row("queue latency, submit to claim, warm worker (p50 / p95)", "Celery+Redis alone ≈ 8–9 ms p50",
               f"{p50:.1f} / {p95:.1f} ms", "—", "≤ 30 / ≤ 100 ms")


if __name__ == "__main__":
    main()
