"""The dashboard with 10,000 jobs and a comparison of 100 runs of 1,000 points each: server time of the runs page,
its live poll and the compare data, each checked against a budget of one second (issue 6), with a bare API read
(GET /api/v1/me, no job query) timed in the same run as the floor of a request on this machine.

    .venv/bin/python bench/dashboard.py
"""

from __future__ import annotations

import json
import time
import uuid

import common
import psycopg
import requests
from stack import running_stack

JOBS = 10_000
COMPARED, POINTS = 100, 1_000
BUDGET = 1.0  # seconds of server time per page or data request


def fill(url: str) -> list[str]:
    """10,000 finished jobs of the admin, 100 of them with 1,000 epochs of val_loss; straight into PostgreSQL."""
    spec = {"name": "bench", "dataset": {"name": "digits"}, "model": {"layers": [{"type": "dense", "units": 10}]},
            "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001}}
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        admin = conn.execute("SELECT id FROM users WHERE role = 'admin' LIMIT 1").fetchone()[0]
        ids = [uuid.uuid4().hex for _ in range(JOBS)]
        with conn.cursor() as cur, cur.copy("COPY jobs (id, owner_id, name, status, spec, pool, device, priority, "
                                            "params, max_epochs, created_at, started_at, finished_at, attempts, "
                                            "cancel_requested, epoch, metrics) FROM STDIN") as copy:
            for i, job_id in enumerate(ids):
                s = {**spec, "name": f"run-{i}", "optimizer": {"type": "adam", "lr": 0.001 * (1 + i % 7)}}
                copy.write_row((job_id, admin, f"run-{i}", "succeeded", json.dumps(s), "cpu", "any", 0, 650, POINTS,
                                f"2026-01-01T00:00:00+00:00", "2026-01-01T00:00:01+00:00",
                                "2026-01-01T00:01:00+00:00", 1, False, POINTS,
                                json.dumps({"test_accuracy": 0.9, "test_loss": 0.3})))
        compared = ids[:COMPARED]
        with conn.cursor() as cur, cur.copy("COPY metrics (job_id, name, step, epoch, value) FROM STDIN") as copy:
            for job_id in compared:
                for epoch in range(1, POINTS + 1):
                    copy.write_row((job_id, "val_loss", epoch * 10, epoch, 1.0 / epoch))
        conn.execute("ANALYZE")
    return compared


def server_time(http: requests.Session, url: str, repeats: int = 5) -> tuple[float, requests.Response]:
    """The fastest of several requests on loopback: what the server spends, with the least noise."""
    best, answer = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        answer = http.get(url, timeout=60)
        best = min(best, time.perf_counter() - start)
        assert answer.ok, (url, answer.status_code, answer.text[:300])
    return best, answer


def main() -> None:
    with running_stack(workers=0) as stack:
        compared = fill(stack.env["TRAINQ_DATABASE_URL"])
        http = stack.http
        floor, _ = server_time(http, f"{stack.url}/api/v1/me")
        checks = []
        t, page = server_time(http, f"{stack.url}/")
        assert page.text.count('<tr data-id="') == 50
        checks.append(("runs page, 10k jobs, newest first", t))
        t, _ = server_time(http, f"{stack.url}/?sort=name&name=run-99&offset=0")
        checks.append(("runs page, filtered by name, sorted by name", t))
        t, _ = server_time(http, f"{stack.url}/?offset=9950")
        checks.append(("runs page, last page", t))
        cursor = http.get(f"{stack.url}/api/v1/jobs?limit=1", timeout=60).json()["cursor"]
        t, poll = server_time(http, f"{stack.url}/api/v1/jobs?changed_since={cursor}&limit=500")
        assert poll.json()["jobs"] == []
        checks.append(("live poll of the runs page (nothing changed)", t))
        t, data = server_time(http, f"{stack.url}/api/v1/compare?ids={','.join(compared)}&names=val_loss"
                                    "&max_points=400", repeats=3)
        runs = data.json()["runs"]
        shipped = sum(len(r["series"]["val_loss"]["value"]) for r in runs)
        assert len(runs) == COMPARED and shipped == COMPARED * 400
        checks.append((f"compare data, {COMPARED} runs x {POINTS} points (LTTB to 400)", t))
        for figure, seconds in checks:
            common.row(f"dashboard: {figure}", f"bare API read {floor * 1000:.1f} ms",
                       f"{seconds * 1000:.0f} ms", f"{seconds / BUDGET:.2f} of budget",
                       f"≤ 1.00 (1 s)" + (" ✓" if seconds <= BUDGET else " ✗"))
        print(f"compare payload: {len(data.content) / 1024:.0f} KiB, {shipped} points of "
              f"{COMPARED * POINTS} stored", flush=True)


if __name__ == "__main__":
    main()
