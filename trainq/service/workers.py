"""The worker registry: who is online in which pool, on what device, running what; drains; why a job waits.

Workers say they are alive every few seconds (their main process, not the job process, so a long epoch never
makes a worker look lost). A worker not heard from for `lost_after` is shown lost; its jobs' leases decide what
happens to them, not this table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from trainq.service.db import UTCDateTime, utcnow
from trainq.service.tables import Job, JobStatus, Worker

KINDS = ("cpu", "gpu")


def lost_after(heartbeat_seconds: float) -> timedelta:
    return timedelta(seconds=max(3 * heartbeat_seconds, 10))


def heartbeat(session: Session, name: str, info: dict[str, Any], now: datetime | None = None) -> bool:
    """Record that a worker is alive (registering it on first sight); return whether it is asked to drain."""
    now = now or utcnow()
    worker = session.get(Worker, name, with_for_update=session.get_bind().dialect.name == "postgresql")
    fields = {"pool": info["pool"], "kind": info["kind"], "device": info["device"], "host": info["host"],
              "pid": info["pid"], "concurrency": info["concurrency"], "gpus": info.get("gpus", 0),
              "layers": info.get("layers") or None}
    if worker is None or worker.state == "stopped" or worker.pid != info["pid"]:
        # A new process under a known name (a restart): a fresh registration; an old drain request does not carry over.
        if worker is None:
            worker = Worker(name=name, **fields)
            session.add(worker)
        else:
            for key, value in fields.items():
                setattr(worker, key, value)
        worker.started_at, worker.state, worker.drain_requested = now, "online", False
    worker.last_seen_at = now
    if worker.drain_requested:
        worker.state = "draining"
    return worker.drain_requested


QUICK_BEAT = text(
    "UPDATE workers SET last_seen_at = :now, state = CASE WHEN drain_requested THEN 'draining' ELSE state END "
    "WHERE name = :name AND pid = :pid AND state <> 'stopped' RETURNING drain_requested"
).bindparams(bindparam("now", type_=UTCDateTime))


def quick_heartbeat(conn, name: str, pid: int) -> bool | None:
    """A known, running worker process is alive: one statement (whether it is asked to drain); None when it is new
    or restarted (register it through `heartbeat`)."""
    row = conn.execute(QUICK_BEAT, {"now": utcnow(), "name": name, "pid": pid}).first()
    return None if row is None else bool(row[0])


def stopped(session: Session, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(state="stopped", last_seen_at=utcnow()))


def request_drain(session: Session, name: str) -> Worker:
    """Ask a worker to finish the job it runs and take no new one; it leaves once idle. LookupError if unknown."""
    worker = session.get(Worker, name)
    if worker is None:
        raise LookupError(name)
    if worker.state != "stopped":
        worker.drain_requested = True
        worker.state = "draining"
    return worker


@dataclass
class WorkerView:
    worker: Worker
    state: str  # online | draining | lost | stopped
    jobs: list  # its running jobs: rows of id, name, epoch, max_epochs, owner_id, worker
    jobs_done: int

    def json(self, can_see) -> dict[str, Any]:
        w = self.worker
        return {"name": w.name, "pool": w.pool, "kind": w.kind, "device": w.device, "host": w.host, "pid": w.pid,
                "concurrency": w.concurrency, "gpus": w.gpus, "state": self.state, "started_at": w.started_at.isoformat(),
                "last_seen_at": w.last_seen_at.isoformat(), "jobs_done": self.jobs_done, "layers": w.layers or {},
                "busy": len(self.jobs),
                "jobs": [{"id": j.id, "name": j.name, "epoch": j.epoch, "max_epochs": j.max_epochs}
                         for j in self.jobs if can_see(j)]}


def state_of(worker: Worker, now: datetime, lost: timedelta) -> str:
    if worker.state == "stopped":
        return "stopped"
    if worker.last_seen_at < now - lost:
        return "lost"
    return worker.state


def list_workers(session: Session, lost: timedelta, include_stopped: bool = False) -> list[WorkerView]:
    now = utcnow()
    query = select(Worker).order_by(Worker.pool, Worker.name)
    if not include_stopped:
        # Stopped workers stay listed for an hour, so a drained or restarted worker's history is visible.
        query = query.where((Worker.state != "stopped") | (Worker.last_seen_at > now - timedelta(hours=1)))
    workers = session.scalars(query).all()
    running: dict[str, list] = {}
    if workers:
        # The columns a listing shows, as plain rows: at thousands of workers, loading every running job's ORM
        # object (spec and all) and naming every worker in an IN list was most of a poll's time.
        for job in session.execute(select(Job.id, Job.name, Job.epoch, Job.max_epochs, Job.owner_id, Job.worker)
                                   .where(Job.status == JobStatus.running.value)):
            running.setdefault(job.worker, []).append(job)
    return [WorkerView(w, state_of(w, now, lost), running.get(w.name, []), w.jobs_done) for w in workers]


def pools(session: Session, views: list[WorkerView]) -> dict[str, dict[str, int]]:
    """Per pool: workers online, job slots busy, jobs queued."""
    summary: dict[str, dict[str, int]] = {}
    for view in views:
        entry = summary.setdefault(view.worker.pool, {"online": 0, "slots": 0, "busy": 0, "queued": 0})
        if view.state in ("online", "draining"):
            entry["online"] += 1
            entry["slots"] += view.worker.concurrency if view.state == "online" else 0
        entry["busy"] += len(view.jobs)
    for pool, count in session.execute(select(Job.pool, func.count()).where(
            Job.status == JobStatus.queued.value).group_by(Job.pool)):
        summary.setdefault(pool, {"online": 0, "slots": 0, "busy": 0, "queued": 0})["queued"] = count
    return summary


_reasons: dict[tuple, tuple[float, str]] = {}
_reasons_lock = threading.Lock()
REASON_TTL = 1.0  # seconds: workers change state every few seconds, and a polled queued job is read many times


def valid_layers(value: Any) -> bool:
    """A worker's installed layer types as it reports them: {type: {package, version}}, within reason."""
    return isinstance(value, dict) and len(value) <= 1000 and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, dict) and set(v) == {"package", "version"}
        and all(isinstance(x, str) and len(x) <= 255 for x in v.values()) for k, v in value.items())


def missing_layers(needed: dict | None, has: Any) -> str | None:
    """What of a job's installed layer types a worker lacks, in words ("the layer type gated from trainq-gated
    1.0.0"); None when it has them all in the versions planned with."""
    has = has if isinstance(has, dict) else {}
    lacking = [f"the layer type {name} from {want['package']} {want['version']}"
               for name, want in sorted((needed or {}).items()) if has.get(name) != want]
    return ", ".join(lacking) or None


def waiting_reason(session: Callable[[], Session], job: Job, lost: timedelta) -> str:
    """Why a queued job is not running yet, in words a user can act on. The same for every job of a pool, device
    kind and GPU count, so it is kept for a second per process: reads of queued jobs cost one query less (and the
    session, asked for only when the reason is looked up, is not opened)."""
    key = (job.pool, job.device, int(job.spec.get("resources", {}).get("gpus", 1)),
           tuple(sorted((k, v["package"], v["version"]) for k, v in (job.plugins or {}).items())))
    now = time.monotonic()
    with _reasons_lock:
        cached = _reasons.get(key)
    if cached is not None and now - cached[0] < REASON_TTL:
        return cached[1]
    reason = _waiting_reason(session(), job, lost)
    with _reasons_lock:
        if len(_reasons) > 10_000:
            _reasons.clear()
        _reasons[key] = (now, reason)
    return reason


def _waiting_reason(session: Session, job: Job, lost: timedelta) -> str:
    now = utcnow()
    gpus = int(job.spec.get("resources", {}).get("gpus", 1))
    kinds = ("gpu",) if gpus > 1 else ((job.device,) if job.device in KINDS else KINDS)
    able = [w for w in session.scalars(select(Worker).where(Worker.kind.in_(kinds)))
            if state_of(w, now, lost) == "online" and (gpus == 1 or w.gpus >= gpus)]
    candidates = [w for w in able if w.pool == job.pool]
    wanted = f"worker with {gpus} GPUs" if gpus > 1 else {"gpu": "GPU worker", "cpu": "CPU worker"}.get(
        job.device, "worker")
    if not candidates:
        draining = session.scalar(select(func.count()).select_from(Worker).where(
            Worker.pool == job.pool, Worker.kind.in_(kinds), Worker.state == "draining",
            Worker.last_seen_at >= now - lost))
        tail = f" ({draining} draining)" if draining else ""
        start = (f" --gpus {','.join(map(str, range(gpus)))} --gpus-per-worker {gpus}" if gpus > 1
                 else " --gpus 0" if job.device == "gpu" else "")
        elsewhere = sorted({w.pool for w in able})  # e.g. `trainq up`'s GPU workers, which serve pool gpu
        hint = (f", or submit to pool {' or '.join(elsewhere)} (resources.pool), where one is online" if elsewhere
                else "")
        return (f"no {wanted} online for pool {job.pool}{tail}; start one with: trainq worker --pool {job.pool}{start}"
                f"{hint}")
    if job.plugins:  # layer types from installed packages: only a worker with each, in the version planned with
        lacking = missing_layers(job.plugins, {})
        equipped = [w for w in candidates if not missing_layers(job.plugins, w.layers)]
        if not equipped:
            install = " ".join(f"{p['package']}=={p['version']}" for p in job.plugins.values())
            return (f"no worker of pool {job.pool} has {lacking} ({len(candidates)} online lack it): the administrator "
                    f"installs it beside trainq on a worker of the pool (pip install {install}) and restarts it")
        candidates = equipped
    slots = sum(w.concurrency for w in candidates)
    busy = session.scalar(select(func.count()).select_from(Job).where(
        Job.status == JobStatus.running.value, Job.worker.in_([w.name for w in candidates])))
    if busy >= slots:
        return f"all {len(candidates)} {wanted}s of pool {job.pool} are busy ({busy} running)"
    return f"a {wanted} of pool {job.pool} is free; it is about to take the next job"
