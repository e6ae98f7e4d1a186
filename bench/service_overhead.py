"""End-to-end time of a 20-epoch digits MLP through the service (submit to succeeded, PostgreSQL, Redis, a
warm worker) against the same spec trained by calling the engine directly in one process."""

from __future__ import annotations

import time

import common
from stack import running_stack

from engine_speed import MLP

from trainq.models.engine import fit
from trainq.models.spec import parse_spec

SPEC = {**MLP, "name": "digits-mlp-20", "training": {**MLP["training"], "epochs": 20}}


def main(repeats: int = 3) -> None:
    spec = parse_spec(SPEC)
    fit(spec)  # warm up
    direct = common.best_of(lambda: fit(spec), repeats)
    with running_stack() as stack:
        stack.wait(stack.submit(SPEC), timeout=120)  # warm up the worker
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            job_id = stack.submit(SPEC)
            while stack.job(job_id)["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.01)
            times.append(time.perf_counter() - start)
        service = min(times)
    print(f"direct engine {direct:.2f}s, through the service {service:.2f}s: ratio {service / direct:.2f}, "
          f"fixed cost {service - direct:+.2f}s")
    common.row("service end-to-end ÷ direct engine, 20-epoch digits MLP", f"{direct:.2f} s", f"{service:.2f} s",
               f"{service / direct:.2f} ({service - direct:+.2f} s)", "≤ 1.10 (+ ≤ 1 s)")


if __name__ == "__main__":
    main()
