"""API throughput on this machine's cores with gunicorn and PostgreSQL: job submissions per second and job
reads per second, against the same gunicorn serving a bare Flask endpoint (the HTTP stack's ceiling here)."""

from __future__ import annotations

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


def ceiling(seconds: float) -> tuple[float, float]:
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
        writes, _ = rate(url, "POST", lambda i, n: SPEC, seconds=seconds)
        reads, _ = rate(url, "GET", seconds=seconds)
    finally:
        proc.terminate()
        proc.wait()
    return writes, reads


def main(seconds: float = 5.0) -> None:
    bare_writes, bare_reads = ceiling(seconds)
    with running_stack(workers=0) as stack:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        job_id = stack.submit(SPEC)
        submits, failed_submits = rate(f"{stack.url}/api/v1/jobs", "POST", lambda i, n: SPEC, headers, seconds)
        reads, failed_reads = rate(f"{stack.url}/api/v1/jobs/{job_id}", "GET", None, headers, seconds)
    print(f"bare Flask on gunicorn: {bare_writes:.0f} POST/s, {bare_reads:.0f} GET/s")
    print(f"trainq: {submits:.0f} submissions/s ({failed_submits} failed), {reads:.0f} job reads/s "
          f"({failed_reads} failed); {os.cpu_count()} cores shared by server and client")
    common.row("job submissions/s (gunicorn, PostgreSQL)", f"{bare_writes:.0f} bare POST/s", f"{submits:.0f}/s",
               f"{submits / bare_writes:.2f} of bare", "≥ 300")
    common.row("job reads/s (gunicorn, PostgreSQL)", f"{bare_reads:.0f} bare GET/s", f"{reads:.0f}/s",
               f"{reads / bare_reads:.2f} of bare", "≥ 1,000")


if __name__ == "__main__":
    main()
