"""Metric points per second ingested through the worker API into PostgreSQL, in batches, against inserting
the same rows straight into PostgreSQL with executemany (the database's own pace on this machine)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid

import common
import psycopg
import requests
from stack import running_stack

from tests.integration.stack import ADMIN_TOKEN

BATCH = 2000  # points per request, as a reporter flushing every second at ~2k steps/s would send
CLIENTS = 8  # 2 processes x 4 threads, each reporting for its own attempt

SPEC = {"name": "ingest", "dataset": {"name": "xor"}, "model": {"layers": [{"type": "dense", "units": 1}]},
        "loss": {"type": "bce"}, "optimizer": {"type": "sgd"}}


def points(n: int) -> list:
    return [["train_loss_step", n * BATCH + k, 1, 0.5] for k in range(BATCH)]


def direct_insert(url: str, seconds: float) -> float:
    job = uuid.uuid4().hex
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (id, name, status, spec, pool, priority, params, max_epochs, created_at, "
                     "attempts, cancel_requested, epoch) VALUES (%s, 'x', 'running', '{}', 'cpu', 0, 0, 1, now(), "
                     "0, false, 0)", (job,))
        done, n, start = 0, 0, time.monotonic()
        while time.monotonic() < start + seconds:
            rows = [(job, name, step, epoch, value) for name, step, epoch, value in points(n)]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO metrics (job_id, name, step, epoch, value) VALUES (%s, %s, %s, %s, %s) "
                                "ON CONFLICT DO NOTHING", rows)
            n += 1
            done += BATCH
        return done / (time.monotonic() - start)


def _client(url: str, claims: list[dict], worker_token: str, seconds: float, out) -> None:
    counts = [0] * len(claims)
    deadline = time.monotonic() + seconds

    def work(i: int, c: dict) -> None:
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {worker_token}", "X-Trainq-Attempt-Token": c["token"]})
        n = 0
        while time.monotonic() < deadline:
            answer = session.post(f"{url}/api/v1/worker/attempts/{c['attempt_id']}/metrics",
                                  json={"points": points(n)}, timeout=60)
            counts[i] += answer.ok
            n += 1

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(claims)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(counts))


def main(seconds: float = 5.0) -> None:
    with running_stack(workers=0) as stack:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        token = stack.env["TRAINQ_WORKER_TOKEN"]
        direct = direct_insert(stack.env["TRAINQ_DATABASE_URL"], seconds)
        claims = []
        for _ in range(CLIENTS):
            job_id = stack.submit(SPEC)
            claims.append(requests.post(f"{stack.url}/api/v1/worker/jobs/{job_id}/claim", json={"worker": "bench"},
                                        headers={"Authorization": f"Bearer {token}"}, timeout=10).json())
        out = mp.Queue()
        procs = [mp.Process(target=_client, args=(stack.url, claims[i::2], token, seconds, out)) for i in range(2)]
        start = time.monotonic()
        for p in procs:
            p.start()
        accepted = sum(out.get() for _ in procs)
        for p in procs:
            p.join()
        through_api = accepted * BATCH / (time.monotonic() - start)
        stored = sum(len(requests.get(f"{stack.url}/api/v1/jobs/{c['job_id']}/metrics", headers=admin, timeout=120)
                         .json()["series"]["train_loss_step"]["step"]) for c in claims)
    print(f"direct executemany into PostgreSQL: {direct:.0f} points/s; through the API: {through_api:.0f} points/s; "
          f"{stored} points stored, {accepted * BATCH} accepted")
    common.row("metric points/s into PostgreSQL (batches of 2,000)", f"{direct:.0f}/s direct executemany",
               f"{through_api:.0f}/s", f"{through_api / direct:.2f} of direct", "≥ 50,000")


if __name__ == "__main__":
    main()
