"""End-to-end time of digits MLP jobs through the service (submit to succeeded, PostgreSQL, Redis, a warm worker)
against the same spec trained by calling the engine directly in one process: a 20-epoch job and a 600-epoch one
(short epochs, where what the worker sends besides training, checkpoints above all, shows most)."""

from __future__ import annotations

import time

import common
from stack import running_stack

from engine_speed import MLP

from trainq.models.engine import fit
from trainq.models.spec import parse_spec


def spec_of(epochs: int) -> dict:
    return {**MLP, "name": f"digits-mlp-{epochs}", "training": {**MLP["training"], "epochs": epochs}}


def through(stack, spec: dict) -> float:
    start = time.perf_counter()
    job_id = stack.submit(spec)
    while stack.job(job_id)["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.01)
    return time.perf_counter() - start


def main(repeats: int = 3) -> None:
    cases = [spec_of(20), spec_of(600)]
    fit(parse_spec(cases[0]))  # warm up
    direct = {c["name"]: common.best_of(lambda c=c: fit(parse_spec(c)), repeats) for c in cases}
    with running_stack() as stack:
        stack.wait(stack.submit(cases[0]), timeout=120)  # warm up the worker
        service = {c["name"]: min(through(stack, c) for _ in range(repeats)) for c in cases}
    for c in cases:
        d, s = direct[c["name"]], service[c["name"]]
        print(f"{c['name']}: direct engine {d:.2f}s, through the service {s:.2f}s: ratio {s / d:.2f}, "
              f"fixed cost {s - d:+.2f}s, {'PASS' if s <= 1.05 * d + 0.5 else 'FAIL'} (≤ 1.05x + 0.5 s)")
        common.row(f"service end-to-end ÷ direct engine, {c['training']['epochs']}-epoch digits MLP", f"{d:.2f} s",
                   f"{s:.2f} s", f"{s / d:.2f} ({s - d:+.2f} s)", "≤ 1.05 + 0.5 s")


if __name__ == "__main__":
    main()
