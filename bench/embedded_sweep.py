"""A 32-trial ASHA sweep through `trainq up` (the embedded default: SQLite, the filesystem broker, local workers),
packed and then unpacked, on one GPU worker or one CPU worker: the packed sweep's whole path (claims, the pack's
prune asks and reports, settling) on the database and broker a laptop or a lone GPU box runs, where the PostgreSQL
and Redis of bench/packed_sweep.py are not at hand.

    python bench/embedded_sweep.py [--device gpu|cpu] [--trials 32] [--port 8766]

Prints each sweep's time from submit to its end (the service's finished_at), its pruned count and best trial, and
PASS when both ended with the same best trial (same seeds, same configurations).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime

import common  # noqa: F401 - puts the repository on sys.path
import requests

from bench.packed_sweep import sweep_body
from tests.integration.stack import wait_until

TOKEN = "embedded-sweep-bench"


def healthy(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        sys.exit(f"trainq up exited with {proc.returncode}")
    try:
        return requests.get(f"{url}/api/v1/health", timeout=1).ok
    except requests.RequestException:
        return False


def run_sweep(http: requests.Session, url: str, body: dict) -> tuple[float, dict]:
    started = time.time()
    answer = http.post(f"{url}/api/v1/sweeps", json=body, timeout=60)
    answer.raise_for_status()
    sweep_id = answer.json()["id"]
    deadline = time.time() + 600
    while (state := http.get(f"{url}/api/v1/sweeps/{sweep_id}", timeout=30).json())["status"] == "running":
        if time.time() > deadline:
            sys.exit(f"sweep {sweep_id} still running after 10 minutes: {state['counts']}")
        time.sleep(0.2)
    return datetime.fromisoformat(state["finished_at"]).timestamp() - started, state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="trainq-embedded-sweep-")
    env = {**os.environ, "TRAINQ_ADMIN_TOKEN": TOKEN, "TRAINQ_SUBMIT_PER_MINUTE": "100000",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(common.ROOT)]))}
    gpu = args.device == "gpu"
    command = [sys.executable, "-m", "trainq.cli", "up", "--port", str(args.port), "--data-dir", folder,
               "--workers", "0" if gpu else "1", "--gpus", "auto" if gpu else "none"]
    log = open(os.path.join(folder, "up.log"), "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        wait_until(lambda: healthy(url, proc), 120, "trainq up answering")
        results = {}
        warm = sweep_body("warm-up", 2, "off")  # the worker's first job pays its process start and imports
        warm["base"]["resources"] = {"pool": args.device, "device": args.device}
        run_sweep(http, url, warm)
        for pack in ("auto", "off"):
            body = sweep_body(f"embedded-{pack}", args.trials, pack)
            body["base"]["resources"] = {"pool": args.device, "device": args.device}
            results[pack] = run_sweep(http, url, body)
            seconds, state = results[pack]
            print(f"{args.trials}-trial ASHA sweep on one {args.device.upper()} worker, pack {pack}: {seconds:.1f}s, "
                  f"{state['status']}, counts {state['counts']}, best trial {state['best'] and state['best']['trial']}"
                  f" ({state['best'] and state['best']['value']:.4f})", flush=True)
        (packed_s, packed), (unpacked_s, unpacked) = results["auto"], results["off"]
        same = packed["best"] and unpacked["best"] and packed["best"]["trial"] == unpacked["best"]["trial"]
        ok = packed["status"] == unpacked["status"] == "succeeded" and same
        print(f"packed {packed_s:.1f}s against unpacked {unpacked_s:.1f}s: {unpacked_s / packed_s:.2f}x faster; "
              f"same best trial: {'yes' if same else 'NO'} {'PASS' if ok else 'FAIL'}")
        print(f"| {args.trials}-trial ASHA sweep through `trainq up`, one {args.device.upper()} worker: packed / "
              f"unpacked | {unpacked_s:.1f} s | {packed_s:.1f} s | {unpacked_s / packed_s:.2f}x faster | report |")
        if not ok:
            sys.exit(1)
    finally:
        proc.terminate()  # `trainq up` stops its workers, then the service
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
        print("--- trainq up's log, last lines")
        print("".join(open(os.path.join(folder, "up.log")).readlines()[-15:]))


if __name__ == "__main__":
    main()
