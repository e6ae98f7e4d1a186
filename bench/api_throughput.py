"""API throughput on this machine's cores with gunicorn and PostgreSQL: job submissions per second and job
reads per second, against the same gunicorn serving a bare Flask endpoint (the HTTP stack's ceiling here).

Each figure is the best of `--rounds` rounds (the machine is shared: a round can lose half its CPU to a neighbour),
bare and trainq measured in the same run. Reads go to queued jobs at every place of the queue the submissions
built (thousands deep), so each read also counts the jobs ahead of its job, once the service's upkeep has caught up
with the submissions (it vacuums the jobs table at its reconcile interval); the service runs with a reconcile
interval of 5 s, its default, not the tests' one second."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import common
import requests
from load import rate
from stack import running_stack

from tests.integration.stack import ADMIN_TOKEN, free_port

SPEC = {"name": "throughput", "dataset": {"name": "digits"},
        "model": {"layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                             {"type": "dense", "units": 10}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam"}}

CEILING_APP = """
from flask import Flask, jsonify, request
app = Flask(__name__)
@app.get("/x")
def read():
    return jsonify({"ok": True})
@app.post("/x")
def write():
    request.get_json()
    return jsonify({"ok": True}), 201
"""


def ceiling(seconds: float, rounds: int) -> tuple[float, float]:
    folder = common.ROOT / "bench" / ".ceiling"
    folder.mkdir(exist_ok=True)
    (folder / "ceiling_app.py").write_text(CEILING_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "2",
                             "-b", f"127.0.0.1:{port}", "--log-level", "warning", "ceiling_app:app"], cwd=folder)
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/x", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/x"
        writes = max(rate(url, "POST", lambda i, n: SPEC, seconds=seconds)[0] for _ in range(rounds))
        reads = max(rate(url, "GET", seconds=seconds)[0] for _ in range(rounds))
    finally:
        proc.terminate()
        proc.wait()
    return writes, reads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds, rounds = args.seconds, args.rounds
    bare_writes, bare_reads = ceiling(seconds, rounds)
    with running_stack(workers=0, TRAINQ_RECONCILE_SECONDS="5") as stack:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        submitted = [rate(f"{stack.url}/api/v1/jobs", "POST", lambda i, n: SPEC, headers, seconds)
                     for _ in range(rounds)]
        submits, failed_submits = max(submitted)
        ids = queued_ids(stack)
        waited = settled(stack)

        def spread(i: int, n: int) -> str:  # connection i's n-th read: a different place in the queue each time
            return f"{stack.url}/api/v1/jobs/{ids[(i * 7919 + n * 31) % len(ids)]}"

        reads, failed_reads = max(rate(spread, "GET", None, headers, seconds) for _ in range(rounds))
        head = f"{stack.url}/api/v1/jobs/{ids[0]}"  # the job at the head of the queue, as the earlier runs read
        one, failed_one = max(rate(head, "GET", None, headers, seconds) for _ in range(rounds))
    print(f"bare Flask on gunicorn: {bare_writes:.0f} POST/s, {bare_reads:.0f} GET/s (best of {rounds})")
    print(f"trainq: {submits:.0f} submissions/s ({failed_submits} failed), {reads:.0f} job reads/s "
          f"({failed_reads} failed) of {len(ids)} queued jobs, {one:.0f} reads/s of the job at the head of the queue "
          f"({failed_one} failed); best of {rounds} rounds of {seconds:.0f} s; "
          f"{os.cpu_count()} cores shared by server, PostgreSQL and client; reads began {waited:.1f} s after the "
          "last submission, once the service's upkeep had caught up with them")
    common.row("job submissions/s (gunicorn, PostgreSQL)", f"{bare_writes:.0f} bare POST/s", f"{submits:.0f}/s",
               f"{submits / bare_writes:.2f} of bare", "≥ 300")
    common.row(f"job reads/s (gunicorn, PostgreSQL; queued jobs at every place of a {len(ids):,}-job queue)",
               f"{bare_reads:.0f} bare GET/s", f"{reads:.0f}/s", f"{reads / bare_reads:.2f} of bare", "≥ 1,000")
    common.row("job reads/s (gunicorn, PostgreSQL; the job at the head of the queue)", f"{bare_reads:.0f} bare GET/s",
               f"{one:.0f}/s", f"{one / bare_reads:.2f} of bare", "≥ 1,000")


def settled(stack, timeout: float = 60.0) -> float:
    """Seconds until the service's own upkeep (reconciler.upkeep, each reconcile interval) has caught up with the
    submissions: fewer than UPKEEP_ROWS rows of the jobs table inserted or dead since its last vacuum, the state it
    keeps the table in, as it would have long before anyone read a queue this deep in production. PostgreSQL's
    statistics lag up to a second behind the writes, hence the first wait."""
    from trainq.service.db import make_engine
    from trainq.service.reconciler import UPKEEP_ROWS, unvacuumed_rows

    engine = make_engine(stack.env["TRAINQ_DATABASE_URL"], autocommit=True)
    start = time.monotonic()
    time.sleep(1.5)
    try:
        with engine.connect() as conn:
            while time.monotonic() < start + timeout:
                if unvacuumed_rows(conn) < UPKEEP_ROWS:
                    return time.monotonic() - start
                time.sleep(0.2)
    finally:
        engine.dispose()
    raise SystemExit(f"the service did not vacuum the jobs table within {timeout:.0f} s")


def queued_ids(stack) -> list[str]:
    import psycopg

    url = stack.env["TRAINQ_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")]


if __name__ == "__main__":
    main()
