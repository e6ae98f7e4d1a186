"""Searching runs: 10,000 finished runs with 20 metrics each in PostgreSQL, and MLflow's search filter on a metric
and a tag (`metrics.m3 > 0.9 and tags.team = 'vision'`, the first page of 50), answered by trainq's service over
HTTP, against the same rows in an MLflow tracking server (`mlflow server` on PostgreSQL, its REST runs/search) in
the same run. Each side is asked the same queries one after another from one client; the figure is the p95 latency.

MLflow is installed apart from trainq (its pins are its own): `python3 -m venv /tmp/mlf && /tmp/mlf/bin/pip install
mlflow psycopg2-binary`, then `python bench/search.py --mlflow /tmp/mlf/bin/python`. Without --mlflow the peer is not
measured and the table says so."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import common  # noqa: F401
import psycopg
import requests
from stack import PG, running_stack

from tests.integration.stack import ADMIN_TOKEN, free_port, wait_until

RUNS, METRICS = 10_000, 20
FILTER = "metrics.m3 > 0.9 and tags.team = 'vision'"
TEAMS = ("vision", "nlp", "tabular", "speech")


def rows(seed: int = 0):
    """The same runs for both sides: a name, an lr and a width, four tags' team, 20 final metrics in [0, 1)."""
    draw = random.Random(seed)
    for i in range(RUNS):
        yield {"name": f"run-{i}", "lr": round(10 ** draw.uniform(-4, -1), 6), "units": draw.choice([32, 64, 128]),
               "team": TEAMS[i % len(TEAMS)], "metrics": {f"m{k}": draw.random() for k in range(METRICS)}}


def fill_trainq(database_url: str) -> int:
    """The runs as finished jobs of the admin, with their metric rows, written straight into the tables (COPY)."""
    from trainq.service.tables import new_id

    spec = {"name": "", "dataset": {"name": "digits"}, "model": {"layers": [{"type": "dense", "units": 64}]},
            "optimizer": {"type": "adam", "lr": 0.001}, "training": {"epochs": 5}}
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    expected = 0
    with psycopg.connect(url) as conn:
        owner = conn.execute("SELECT id FROM users WHERE name = 'admin'").fetchone()[0]
        with conn.cursor().copy("COPY jobs (id, owner_id, name, project, tags, status, spec, pool, device, priority, "
                                "params, max_epochs, created_at, started_at, finished_at, attempts, epoch, metrics, "
                                "cancel_requested) "
                                "FROM STDIN") as copy:
            for i, run in enumerate(rows()):
                job_id = new_id()
                at = start + timedelta(seconds=i)
                body = {**spec, "name": run["name"],
                        "model": {"layers": [{"type": "dense", "units": run["units"]}]},
                        "optimizer": {"type": "adam", "lr": run["lr"]}}
                copy.write_row((job_id, owner, run["name"], "bench", json.dumps({"team": run["team"]}), "succeeded",
                                json.dumps(body), "cpu", "any", 0, 1000, 5, at, at, at + timedelta(seconds=30), 1, 5,
                                json.dumps(run["metrics"]), False))
                expected += run["metrics"]["m3"] > 0.9 and run["team"] == "vision"
        ids = [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY created_at").fetchall()]
        with conn.cursor().copy("COPY metrics (job_id, name, step, epoch, value) FROM STDIN") as points:
            for job_id, run in zip(ids, rows()):
                for name, value in run["metrics"].items():
                    points.write_row((job_id, name, 5, 5, value))
        conn.execute("ANALYZE jobs")
        conn.execute("ANALYZE metrics")
    return expected


MLFLOW_FILL = r"""
import json, sys
from mlflow.entities import Metric, Param, RunTag, RunStatus
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
store = SqlAlchemyStore(sys.argv[1], sys.argv[2])
experiment = store.create_experiment("bench")
for line in sys.stdin:
    run = json.loads(line)
    made = store.create_run(experiment, "bench", 1767225600000 + run["i"] * 1000, [], run["name"])
    store.log_batch(made.info.run_id, metrics=[Metric(k, v, 0, 5) for k, v in run["metrics"].items()],
                    params=[Param("lr", str(run["lr"])), Param("units", str(run["units"]))],
                    tags=[RunTag("team", run["team"])])
    store.update_run_info(made.info.run_id, RunStatus.FINISHED, 1767225630000, None)
print(experiment)
"""


def fill_mlflow(python: str, url: str, artifacts: str) -> str:
    lines = "".join(json.dumps({**run, "i": i}) + "\n" for i, run in enumerate(rows()))
    done = subprocess.run([python, "-c", MLFLOW_FILL, url, artifacts], input=lines, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"filling MLflow failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.ConnectionError:
        return False


def latencies(ask, count: int) -> list[float]:
    for _ in range(5):  # warm: connections, caches, plans
        ask()
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        ask()
        taken.append(time.perf_counter() - started)
    return taken


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--mlflow", default=None, help="a python with mlflow and psycopg2 installed")
    args = parser.parse_args()

    with running_stack(workers=0) as stack:
        started = time.perf_counter()
        expected = fill_trainq(stack.env["TRAINQ_DATABASE_URL"])
        print(f"trainq: {RUNS} runs x {METRICS} metrics written in {time.perf_counter() - started:.0f} s; "
              f"{expected} match", file=sys.stderr)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"

        def ask_trainq():
            answer = http.get(f"{stack.url}/api/v1/jobs", params={"filter": FILTER, "limit": 50}, timeout=30)
            answer.raise_for_status()
            return answer.json()

        first = ask_trainq()
        assert first["total"] == expected and len(first["jobs"]) == min(50, expected), (first["total"], expected)
        ours = latencies(ask_trainq, args.queries)

    theirs = None
    if args.mlflow:
        name = f"mlflow_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        artifacts = tempfile.mkdtemp(prefix="mlflow-artifacts-")
        port = free_port()
        server = None
        try:
            started = time.perf_counter()
            experiment = fill_mlflow(args.mlflow, url, artifacts)
            print(f"MLflow: the same runs written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            mlflow = str(Path(args.mlflow).parent / "mlflow")
            server = subprocess.Popen([mlflow, "server", "--backend-store-uri", url, "--default-artifact-root",
                                       artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(f"{base}/health"), 60, "MLflow's server up")
            peer = requests.Session()

            def ask_mlflow():
                answer = peer.post(f"{base}/api/2.0/mlflow/runs/search", timeout=30,
                                   json={"experiment_ids": [experiment], "filter": FILTER, "max_results": 50})
                answer.raise_for_status()
                return answer.json()

            assert len(ask_mlflow()["runs"]) == min(50, expected)
            theirs = latencies(ask_mlflow, args.queries)
        finally:
            if server is not None:
                server.terminate()
                server.wait()
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    ms = 1000
    print(f"trainq: p50 {statistics.median(ours) * ms:.1f} ms, p95 {p95(ours) * ms:.1f} ms over {args.queries} queries")
    if theirs:
        print(f"MLflow: p50 {statistics.median(theirs) * ms:.1f} ms, p95 {p95(theirs) * ms:.1f} ms")
        print(f"| search 10,000 runs by a metric and a tag, p95 | MLflow server {p95(theirs) * ms:.1f} ms | "
              f"{p95(ours) * ms:.1f} ms | {p95(theirs) / p95(ours):.1f}x faster | <= 50 ms |")
    else:
        print(f"| search 10,000 runs by a metric and a tag, p95 | MLflow not measured (--mlflow) | "
              f"{p95(ours) * ms:.1f} ms | - | <= 50 ms |")


if __name__ == "__main__":
    main()
