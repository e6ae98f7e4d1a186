"""Soak (not in CI): N jobs through 3 workers with a fault every M seconds (a worker killed with SIGKILL or sent
SIGTERM in turn, then replaced), printing jobs accepted, finished, lost (must be 0) and duplicated attempts (must be 0).

    python bench/soak.py --jobs 60 --every 10
"""

from __future__ import annotations

import argparse
import random
import signal
import time

import common  # noqa: F401
from stack import running_stack

JOB = {"name": "soak", "dataset": {"name": "digits"},
       "model": {"layers": [{"type": "dense", "units": 128}, {"type": "activation", "fn": "relu"},
                            {"type": "dense", "units": 10}]},
       "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam"},
       "training": {"epochs": 25, "batch_size": 16}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--minutes", type=float, default=20.0, help="give up after this long")
    args = parser.parse_args()
    rng = random.Random(0)
    with running_stack(workers=3, TRAINQ_LEASE_SECONDS="5") as stack:
        ids = [stack.submit({**JOB, "name": f"soak-{i}"}) for i in range(args.jobs)]
        deadline = time.monotonic() + args.minutes * 60
        next_fault, faults, spare = time.monotonic() + args.every, 0, 3
        while time.monotonic() < deadline:
            states = [stack.job(i) for i in ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in states):
                break
            if time.monotonic() >= next_fault:
                victim = rng.choice([name for name in stack.procs if name.startswith("worker")])
                sig = (signal.SIGKILL, signal.SIGTERM)[faults % 2]  # both kinds, in turn
                stack.stop(victim, sig)
                stack.worker(f"worker{spare}")
                spare += 1
                faults += 1
                print(f"fault {faults}: {sig.name} to {victim}", flush=True)
                next_fault = time.monotonic() + args.every
            time.sleep(0.5)
        states = [stack.job(i) for i in ids]
        # what a duplicated attempt would leave behind: an epoch reported twice
        duplicated = 0
        for j in states:
            epochs = stack.get(f"/api/v1/jobs/{j['id']}/metrics?names=val_loss")["series"].get("val_loss", {})
            duplicated += len(epochs.get("epoch", [])) != len(set(epochs.get("epoch", [])))
        attempts = sum(j["attempts"] for j in states)
    finished = sum(j["status"] == "succeeded" for j in states)
    lost = sum(j["status"] not in ("succeeded", "failed", "cancelled") for j in states)
    failed = sum(j["status"] == "failed" for j in states)
    print(f"accepted {len(ids)}, finished {finished}, failed {failed}, lost {lost} (must be 0), "
          f"duplicated {duplicated} (must be 0), faults {faults}, attempts {attempts}")


if __name__ == "__main__":
    main()
