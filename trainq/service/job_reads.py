"""How jobs read to a caller, for the API and the dashboard alike: a job's JSON and its place in the queue, the
filtered and sorted list with its change cursor, each job's best metric, metric series, a checkpoint to send."""

from __future__ import annotations

import re
from typing import Any

from flask import request
from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import aliased

from trainq.models.spec import improves
from trainq.service import search, workers
from trainq.service.auth import principal
from trainq.service.context import db, read_connection, services
from trainq.service.http import fail, send_object
from trainq.service.lookups import visible
from trainq.service.objects import checkpoint_key
from trainq.service.tables import Checkpoint, Dataset, Event, Job, JobStatus, Metric

STATUSES = {s.value for s in JobStatus}
CURSOR = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})")  # what change_cursor writes; 18 digits stay below 2**63

# what job_json reads: the job read selects only these
JOB_FIELDS = ("id", "name", "project", "tags", "note", "sweep_id", "status", "pool", "device", "priority", "params",
              "created_at", "started_at", "finished_at", "worker", "attempts", "epoch", "max_epochs", "best_epoch",
              "stop_reason", "cancel_requested", "metrics", "error", "spec", "trial", "pack_id", "dataset_id", "plugins")


def job_json(job: Job) -> dict[str, Any]:
    def iso(value):
        return value.isoformat() if value else None

    return {
        "id": job.id,
        "name": job.name,
        "project": job.project,
        "tags": job.tags or {},
        "note": job.note or "",
        "sweep_id": job.sweep_id,
        "trial": job.trial,
        "pack_id": job.pack_id,  # trials trained together as one packed model share it
        "status": job.status,
        "pool": job.pool,
        "device": job.device,
        "priority": job.priority,
        "params": job.params,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "worker": job.worker,
        "attempts": job.attempts,
        "epoch": job.epoch,
        "max_epochs": job.max_epochs,
        "best_epoch": job.best_epoch,
        "stop_reason": job.stop_reason,
        "cancel_requested": job.cancel_requested,
        "metrics": job.metrics or {},
        "error": job.error,
        "spec": job.spec,
        "dataset_id": job.dataset_id,
        "plugins": job.plugins or {},  # installed layer types it was planned with: {type: {package, version}}
    }


SORTS = {"created": Job.created_at, "name": Job.name, "status": Job.status, "pool": Job.pool, "worker": Job.worker,
         "epoch": Job.epoch, "started": Job.started_at, "finished": Job.finished_at, "priority": Job.priority}


def searched(argument: str, compile_, dialect: str, args=None):
    """A search argument compiled to SQL, or a 400 naming the argument and the position where reading stopped."""
    text = (request.args if args is None else args).get(argument, "")
    try:
        return compile_(text, dialect) if text else None
    except search.SearchError as exc:
        fail(400, "bad_filter", f"{argument}: {exc}", position=exc.position,
             errors=[{"path": argument, "message": str(exc), "position": exc.position}])


def filtered_jobs(sweep_default: str = "any", args=None):
    """The caller's jobs as the list's query arguments (`args`, else the request's) filter and sort them (a bad
    argument is a 400 naming it)."""
    args = request.args if args is None else args
    query = visible(select(Job))
    status = args.get("status")
    if status:
        wanted = set(status.split(","))
        if not wanted <= STATUSES:
            fail(400, "bad_request", f"unknown status {sorted(wanted - STATUSES)}; one of {sorted(STATUSES)}")
        query = query.where(Job.status.in_(wanted))
    sweep = args.get("sweep") or sweep_default
    if sweep == "none":  # jobs of their own: no sweep's trials
        query = query.where(Job.sweep_id.is_(None))
    elif sweep != "any":
        if not re.fullmatch("[0-9a-f]{32}", sweep):
            fail(400, "bad_request", "sweep: none, any, or a sweep's id",
                 errors=[{"path": "sweep", "message": "none, any, or a sweep's id (32 hex digits)"}])
        query = query.where(Job.sweep_id == sweep)
    if args.get("pool"):
        query = query.where(Job.pool == args["pool"])
    if args.get("name"):
        needle = args["name"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.ilike(f"%{needle}%", escape="\\"))
    if args.get("project"):
        query = query.where(Job.project == args["project"])
    dialect = db().get_bind().dialect.name
    found = searched("filter", search.where_clause, dialect, args)
    if found is not None:
        query = query.where(found)
    if args.get("order_by"):  # MLflow's order_by: metrics.val_loss ASC, params.optimizer.lr DESC
        return query.order_by(*searched("order_by", search.order_clauses, dialect, args), Job.created_at.desc(),
                              Job.id.desc())
    sort = args.get("sort", "-created")
    column = SORTS.get(sort.lstrip("-"))
    if column is None:
        fail(400, "bad_request", f"sort: unknown field {sort.lstrip('-')!r}; one of {sorted(SORTS)} (prefix - for "
                                 "descending)", errors=[{"path": "sort", "message": f"one of {sorted(SORTS)}"}])
    order = column.desc() if sort.startswith("-") else column.asc()
    tie = Job.id.desc() if sort.startswith("-") else Job.id.asc()
    return query.order_by(order.nulls_last() if sort.startswith("-") else order.nulls_first(), tie)


def change_cursor(session) -> str:
    """Where the job tables stand: every change to a job writes an event (state changes) or a metric (progress)."""
    return f"{session.scalar(select(func.max(Event.id))) or 0}.{session.scalar(select(func.max(Metric.id))) or 0}"


def changed_ids(session, cursor: str):
    """The ids of jobs that changed after a cursor from change_cursor, as a subquery."""
    match = CURSOR.fullmatch(cursor)  # two row ids: each must fit a 64-bit integer column, or SQL refuses it
    if match is None:
        fail(400, "bad_request", "changed_since must be the `cursor` of an earlier answer (two row ids, as in 12.345)",
             errors=[{"path": "changed_since", "message": "not a cursor from an earlier answer"}])
    event_id, metric_id = int(match[1]), int(match[2])
    return (select(Event.job_id).where(Event.id > event_id)
            .union(select(Metric.job_id).where(Metric.id > metric_id))).subquery()


def monitored(spec: dict[str, Any]) -> tuple[str, str]:
    """The metric a job is judged by and which way it improves: its early stopping's monitor, else val_loss."""
    stopping = (spec.get("training") or {}).get("early_stopping") or {}
    monitor = stopping.get("monitor", "val_loss")  # no spec validation per job: a list asks this of 500 jobs a poll
    return monitor, improves(monitor, stopping.get("mode"))


def best_metrics(session, jobs) -> dict[str, dict[str, Any]]:
    """Each job's best value so far of the metric it is judged by (`monitored`), from its reported epochs."""
    wanted = {j.id: monitored(j.spec) for j in jobs}
    if not wanted:
        return {}
    rows = session.execute(select(Metric.job_id, Metric.name, func.max(Metric.value), func.min(Metric.value))
                           .where(Metric.job_id.in_(list(wanted)), Metric.name.in_({m for m, _ in wanted.values()}))
                           .group_by(Metric.job_id, Metric.name)).all()
    out = {}
    for job_id, name, high, low in rows:
        monitor, mode = wanted[job_id]
        if name == monitor:
            out[job_id] = {"name": name, "value": high if mode == "max" else low, "mode": mode}
    return out


def jobs_page_json(session, rows) -> list[dict[str, Any]]:
    best = best_metrics(session, rows)
    return [{**job_json(j), "best_metric": best.get(j.id)} for j in rows]


def ahead_in_queue():
    """A correlated count of the queued jobs ahead of each job in its pool: higher priority first, then older (the
    one definition of the queue's order; only computed for a queued job). Its place is this + 1. Written as two
    counts, each a range scan of the partial index ix_jobs_queue (an OR of the two would filter every queued job)."""
    other = aliased(Job)

    def count(*order):
        return select(func.count()).select_from(other).where(
            other.pool == Job.pool, other.status == JobStatus.queued.value, *order).correlate(Job).scalar_subquery()

    ahead = (count(other.priority > Job.priority)
             + count(other.priority == Job.priority, other.created_at < Job.created_at))
    return case((Job.status == JobStatus.queued.value, ahead), else_=None).label("ahead")


_read_job = None


def read_job_statements():
    """Built once: building a select of every column costs more Python than running it (its SQL is cached)."""
    global _read_job
    if _read_job is None:
        base = select(*(Job.__table__.c[name] for name in JOB_FIELDS), ahead_in_queue()).where(
            Job.id == bindparam("job_id"))
        _read_job = (base, base.where(Job.owner_id == bindparam("owner_id")))
    return _read_job


def read_job(job_id: str) -> dict[str, Any]:
    """A job as GET /jobs/{id} answers it (the dashboard's run page shows the same): one query for the job and its
    place in the queue, plain rows rather than ORM objects, since it is the most polled read."""
    p = principal()
    anyone, own = read_job_statements()
    row = read_connection().execute(anyone if p.is_admin else own, {"job_id": job_id, "owner_id": p.id}).first()
    if row is None:
        fail(404, "not_found", f"no job {job_id}")
    body = job_json(row)
    if row.dataset_id is not None:  # the uploaded dataset version it trains on, by content
        d = read_connection().execute(select(Dataset.name, Dataset.version, Dataset.sha256, Dataset.kind).where(
            Dataset.id == row.dataset_id)).first()
        body["dataset"] = {"id": row.dataset_id, "name": d.name, "version": d.version, "ref": f"{d.name}@{d.version}",
                           "sha256": d.sha256, "kind": d.kind}
    if row.status == JobStatus.queued.value:
        body["queue_position"] = row.ahead + 1
        body["waiting_reason"] = workers.waiting_reason(db, row, lost_after())
    return body


def lost_after():
    return workers.lost_after(services().settings.heartbeat_seconds)


def metric_series(job_ids: list[str], names: list[str] | None, after_step: int = -1,
                  max_points: int | None = None, exclude: str | None = None) -> dict[str, dict[str, dict[str, list]]]:
    """{job_id: {name: {step, epoch, value}}}, each series downsampled with LTTB to max_points when longer; the
    series whose names start with `exclude` left out (a run page polls its sys/ series apart: they are stepped by
    the clock, not by training steps)."""
    import numpy as np

    from trainq.service.series import lttb

    query = select(Metric.job_id, Metric.name, Metric.step, Metric.epoch, Metric.value).where(
        Metric.job_id.in_(job_ids))
    if names:
        query = query.where(Metric.name.in_(names))
    if exclude:
        query = query.where(~Metric.name.startswith(exclude, autoescape=True))
    if after_step >= 0:
        query = query.where(Metric.step > after_step)
    out: dict[str, dict[str, dict[str, list]]] = {job_id: {} for job_id in job_ids}
    rows = read_connection().execute(query.order_by(Metric.job_id, Metric.name, Metric.step))  # plain rows: no ORM
    for job_id, name, step, epoch, value in rows:
        s = out[job_id].setdefault(name, {"step": [], "epoch": [], "value": []})
        s["step"].append(step)
        s["epoch"].append(epoch)
        s["value"].append(value)
    if max_points:
        for series in out.values():
            for name, s in series.items():
                if len(s["step"]) > max_points:
                    index = np.arange(len(s["step"]), dtype=np.float64)
                    kept, _ = lttb(index, np.asarray(s["value"], dtype=np.float64), max_points)
                    picks = kept.astype(np.int64).tolist()
                    series[name] = {key: [s[key][i] for i in picks] for key in ("step", "epoch", "value")}
                    series[name]["downsampled_from"] = len(index)
    return out


def send_checkpoint(ckpt: Checkpoint):
    return send_object(services().store, checkpoint_key(ckpt.job_id, ckpt.id),
                       f"{ckpt.job_id}-epoch{ckpt.epoch}.safetensors", missing="the checkpoint file is gone (pruned)")
