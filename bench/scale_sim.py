"""Can the control plane hold 500 workers on this machine? A load generator against the real service (gunicorn,
PostgreSQL, Redis), sending on a fixed schedule whether or not answers came back (open loop: a latency is measured
from the time a request was due, so a slow service cannot slow the load down and hide its own queueing).

Simulated: N workers, each registered and heartbeating (the worker's main process, every 2 s), each holding a job and
extending its lease (the job process, every 2 s); M of them streaming P metric points a second (one request a
second, as the reporter flushes); F jobs a second finishing, each followed by a new job submitted and claimed by the
same worker; the dashboard polling /api/v1/workers and a job once a second. Warm-up, then a measured window.

    python bench/scale_sim.py                      # 500 workers, 30 s warm-up, 120 s measured
    python bench/scale_sim.py --workers 100 --warmup 5 --seconds 20

Prints each figure with PASS/FAIL against the targets of issue #20 and a table row for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import psycopg
import requests
from stack import running_stack

SPEC = {"name": "sim", "dataset": {"name": "moons", "n_samples": 200},
        "model": {"layers": [{"type": "dense", "units": 8}, {"type": "activation", "fn": "relu"},
                             {"type": "dense", "units": 2}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam"},
        "training": {"epochs": 100000}, "resources": {"pool": "sim"}}
WORKER_TOKEN = "integration-token"


class Pool:
    """Keep-alive HTTP/1.1 connections to one host, written by hand on asyncio streams: a load generator must cost
    little CPU, since it shares the machine's two cores with what it measures."""

    def __init__(self, host: str, port: int, size: int):
        self.host, self.port = host, port
        self.free: asyncio.Queue = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)
        self.errors = 0

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            for attempt in range(2):
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                    reader, writer = conn
                    head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
                    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                    status_line = await reader.readline()
                    if not status_line:
                        raise ConnectionError("closed")
                    status = int(status_line.split()[1])
                    length, close = 0, False
                    while True:
                        line = await reader.readline()
                        if line in (b"\r\n", b""):
                            break
                        name, _, value = line.decode("latin-1").partition(":")
                        if name.lower() == "content-length":
                            length = int(value)
                        elif name.lower() == "connection" and value.strip().lower() == "close":
                            close = True
                    data = await reader.readexactly(length) if length else b""
                    if close:
                        writer.close()
                        conn = None
                    return status, data
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    if attempt == 1:  # a kept-alive connection the server had just closed is retried once
                        self.errors += 1
                        return 0, b""
            return 0, b""
        finally:
            self.free.put_nowait(conn)


class Recorder:
    def __init__(self):
        self.latency: dict[str, list[float]] = {}
        self.status: dict[str, dict[int, int]] = {}
        self.measuring = False

    def add(self, kind: str, due: float, status: int) -> None:
        if not self.measuring:
            return
        self.latency.setdefault(kind, []).append(time.monotonic() - due)
        counts = self.status.setdefault(kind, {})
        counts[status] = counts.get(status, 0) + 1


def p99(values: list[float]) -> float:
    return common.percentile(values, 99) if values else float("nan")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def service_and_database_pids(service_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if int(entry.name) == service_pid or ppid == service_pid or "postgres" in cmdline:
            pids.append(int(entry.name))
    # gunicorn's processes are the service process's children's children too
    children = [p for p in pids if p != service_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in children and int(entry.name) not in pids:
                pids.append(int(entry.name))
    return pids


async def simulate(url: str, workers: int, streaming: int, points: int, finishing: float, warmup: float,
                   seconds: float, connections: int, period: float, cpu) -> dict:
    host, port = url.split("//")[1].split(":")
    pool = Pool(host, int(port), connections)
    rec = Recorder()
    auth = {"Authorization": f"Bearer {WORKER_TOKEN}", "Content-Type": "application/json"}
    admin = {"Authorization": f"Bearer {os.environ.get('SIM_ADMIN_TOKEN', '')}", "Content-Type": "application/json"}
    names = [f"sim-{i:04d}" for i in range(workers)]
    info = {"pool": "sim", "kind": "cpu", "device": "cpu", "host": "sim", "concurrency": 1}

    async def submit_and_claim(name: str) -> dict | None:
        status, body = await pool.request("POST", "/api/v1/jobs", admin, json.dumps({**SPEC, "name": name}).encode())
        if status != 201:
            return None
        job_id = json.loads(body)["id"]
        status, body = await pool.request("POST", f"/api/v1/worker/jobs/{job_id}/claim", auth,
                                          json.dumps({"worker": name, "kind": "cpu"}).encode())
        return json.loads(body) if status == 200 else None

    # Register every worker and give each a job, before the clock starts.
    for i, name in enumerate(names):
        await pool.request("POST", f"/api/v1/worker/workers/{name}/heartbeat", auth,
                           json.dumps({**info, "pid": 1000 + i}).encode())
    holding = dict(zip(names, await asyncio.gather(*(submit_and_claim(n) for n in names))))
    missing = [n for n, c in holding.items() if c is None]
    if missing:
        raise SystemExit(f"{len(missing)} simulated workers got no job to hold")
    sent_points: dict[str, int] = {}
    fenced = [0]
    start = time.monotonic() + 1.0
    end = start + warmup + seconds
    tasks: list[asyncio.Task] = []

    async def at(due: float, kind: str, coro_factory):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        status = await coro_factory()
        if status is None:  # its worker is between two jobs at that moment: a real one sends nothing then
            return
        rec.add(kind, due, status)
        if status == 409:
            fenced[0] += 1

    def worker_beat(i: int, name: str):
        async def go():
            status, _ = await pool.request("POST", f"/api/v1/worker/workers/{name}/heartbeat", auth,
                                           json.dumps({**info, "pid": 1000 + i}).encode())
            return status
        return go

    def job_beat(name: str):
        async def go():
            claim = holding[name]
            if claim is None:
                return None
            status, _ = await pool.request(
                "POST", f"/api/v1/worker/attempts/{claim['attempt_id']}/heartbeat",
                {**auth, "X-Trainq-Attempt-Token": claim["token"]}, b'{"epoch": 1}')
            return status
        return go

    steps: dict[str, int] = {}

    def stream(name: str):
        async def go():
            claim = holding[name]
            if claim is None:
                return None
            base = steps.get(name, 0)
            steps[name] = base + points
            rows = [["train_loss_step", base + k + 1, 1, 0.5 + 0.001 * k] for k in range(points)]
            status, _ = await pool.request(
                "POST", f"/api/v1/worker/attempts/{claim['attempt_id']}/metrics",
                {**auth, "X-Trainq-Attempt-Token": claim["token"]}, json.dumps({"points": rows}).encode())
            if status == 200:
                sent_points[claim["job_id"]] = sent_points.get(claim["job_id"], 0) + points
            return status
        return go

    def turnover(name: str):
        async def go():  # the finish is timed by `at`; the next job's submit and claim here
            claim, holding[name] = holding[name], None
            if claim is None:
                return None
            status, _ = await pool.request(
                "POST", f"/api/v1/worker/attempts/{claim['attempt_id']}/finish",
                {**auth, "X-Trainq-Attempt-Token": claim["token"]},
                json.dumps({"status": "succeeded", "stop_reason": "completed", "epoch": 1, "metrics": {}}).encode())
            t0 = time.monotonic()
            fresh = await submit_and_claim(name)
            rec.add("submit+claim", t0, 200 if fresh else 500)
            if fresh:
                holding[name] = fresh
                steps[name] = 0
            return status
        return go

    def dashboard(path: str):
        async def go():
            status, _ = await pool.request("GET", path, {"Authorization": admin["Authorization"]})
            return status
        return go

    rng = random.Random(0)
    t = start
    while t < end:
        for i, name in enumerate(names):  # spread over the period, as independent workers would be
            offset = period * i / workers
            tasks.append(asyncio.create_task(at(t + offset, "worker heartbeat", worker_beat(i, name))))
            tasks.append(asyncio.create_task(at(t + offset + period / 2, "job heartbeat", job_beat(name))))
        t += period
    streamers = names[:streaming]
    t = start
    while t < end:
        for k, name in enumerate(streamers):
            tasks.append(asyncio.create_task(at(t + k / max(1, streaming), "metrics", stream(name))))
        t += 1.0
    t, churn = start, [n for n in names[streaming:]]
    while t < end:
        name = rng.choice(churn)
        tasks.append(asyncio.create_task(at(t, "finish", turnover(name))))
        t += 1.0 / finishing
    t = start
    while t < end:
        tasks.append(asyncio.create_task(at(t, "dashboard workers", dashboard("/api/v1/workers"))))
        job = holding[names[0]]["job_id"]
        tasks.append(asyncio.create_task(at(t + 0.5, "dashboard job", dashboard(f"/api/v1/jobs/{job}"))))
        t += 1.0

    await asyncio.sleep(start + warmup - time.monotonic())
    rec.measuring = True
    measured_from = time.monotonic()
    result = {"recorder": rec, "measured_from": measured_from}
    result["cpu_start"] = cpu()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    result["cpu_end"] = cpu()
    result["measured_seconds"] = time.monotonic() - measured_from
    rec.measuring = False
    await asyncio.gather(*tasks, return_exceptions=True)
    result.update(sent_points=sent_points, fenced=fenced[0], errors=pool.errors, holding=holding)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--streaming", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--finishing", type=float, default=2.0, help="jobs finishing (and replaced) a second")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="seconds between a worker's heartbeats (and its job's); the lease is 15 of them")
    args = parser.parse_args()

    with running_stack(workers=0, TRAINQ_LEASE_SECONDS=str(max(30.0, 15 * args.heartbeat)),
                       TRAINQ_HEARTBEAT_SECONDS=str(args.heartbeat), TRAINQ_REQUEUE_AFTER_SECONDS="3600") as stack:
        os.environ["SIM_ADMIN_TOKEN"] = stack.http.headers["Authorization"].split()[1]
        service_pid = stack.procs["service"].pid
        pids = service_and_database_pids(service_pid)
        result = asyncio.run(simulate(stack.url, args.workers, args.streaming, args.points, args.finishing,
                                      args.warmup, args.seconds, args.connections, args.heartbeat,
                                      lambda: cpu_seconds(pids)))
        database = stack.env["TRAINQ_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(database) as conn:
            stored = dict(conn.execute("SELECT job_id, count(*) FROM metrics GROUP BY job_id").fetchall())
            expired = conn.execute("SELECT count(*) FROM events WHERE message LIKE '%lease expired%'").fetchone()[0]
        listing = requests.get(f"{stack.url}/api/v1/workers", headers=stack.http.headers, timeout=30).json()
        states: dict[str, int] = {}
        for w in listing["workers"]:
            if w["name"].startswith("sim-"):
                states[w["state"]] = states.get(w["state"], 0) + 1
    report(args, result, stored, expired, states)


def report(args, result: dict, stored: dict, expired: int, states: dict) -> None:
    rec: Recorder = result["recorder"]
    cores = (result["cpu_end"] - result["cpu_start"]) / result["measured_seconds"]
    five_hundred = sum(n for counts in rec.status.values() for code, n in counts.items() if code >= 500)
    connection_errors = result["errors"] + sum(counts.get(0, 0) for counts in rec.status.values())
    sent, kept = result["sent_points"], {job: stored.get(job, 0) for job in result["sent_points"]}
    checks = []

    def check(name: str, value: str, ok: bool) -> None:
        checks.append(ok)
        print(f"{name:<52} {value:<28} {'PASS' if ok else 'FAIL'}")

    print(f"\n{args.workers} simulated workers (heartbeats every {args.heartbeat:g} s), {args.streaming} streaming "
          f"{args.points} points/s, {args.finishing} jobs/s finishing; {args.seconds:.0f} s measured after "
          f"{args.warmup:.0f} s warm-up")
    bounds = {"worker heartbeat": 0.25, "job heartbeat": 0.25, "metrics": 0.5, "finish": 0.5, "submit+claim": 0.5}
    for kind, bound in bounds.items():
        values = rec.latency.get(kind, [])
        check(f"p99 {kind} (n={len(values)})", f"{p99(values) * 1000:.0f} ms (≤ {bound * 1000:.0f})",
              bool(values) and p99(values) <= bound)
    for kind in ("dashboard workers", "dashboard job"):
        values = rec.latency.get(kind, [])
        print(f"{'p99 ' + kind + f' (n={len(values)})':<52} {p99(values) * 1000:.0f} ms")
    check("5xx answers", str(five_hundred), five_hundred == 0)
    check("connection errors", str(connection_errors), connection_errors == 0)
    check("leases expired / attempts fenced", f"{expired} / {result['fenced']}", expired == 0 and result["fenced"] == 0)
    check("metric rows stored = points sent", f"{sum(kept.values())} / {sum(sent.values())}", kept == sent)
    check("workers online / lost", f"{states.get('online', 0)} / {states.get('lost', 0)}",
          states.get("online", 0) == args.workers and states.get("lost", 0) == 0)
    check("service + PostgreSQL CPU", f"{cores:.2f} cores (≤ 1.6)", cores <= 1.6)
    print("ALL PASS" if all(checks) else "SOME FAIL")
    hb = p99(rec.latency.get("job heartbeat", []))
    common.row(f"control plane, {args.workers} simulated workers (p99 job heartbeat; service + PostgreSQL CPU)",
               "targets: 250 ms, 1.6 cores", f"{hb * 1000:.0f} ms; {cores:.2f} cores",
               "PASS" if all(checks) else "FAIL", "all PASS")


if __name__ == "__main__":
    main()
