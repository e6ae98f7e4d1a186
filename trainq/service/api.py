"""The user's HTTP API: submit, validate, list, watch, cancel jobs, fetch metrics, events and checkpoints."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request, send_file, url_for
from sqlalchemy import func, select, text

from trainq.models.spec import JobSpec, SpecError, parse_spec, plan
from trainq.service import jobs
from trainq.service.app import db, services
from trainq.service.http import fail, int_arg, invalid, read_body
from trainq.service.tables import Checkpoint, Event, Job, JobStatus, Metric

bp = Blueprint("api", __name__, url_prefix="/api/v1")

STATUSES = {s.value for s in JobStatus}


def job_json(job: Job) -> dict[str, Any]:
    def iso(value):
        return value.isoformat() if value else None

    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "pool": job.pool,
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
    }


def get_job(job_id: str) -> Job:
    job = db().get(Job, job_id)
    if job is None:
        fail(404, "not_found", f"no job {job_id}")
    return job


def validated_spec() -> tuple[JobSpec, Any]:
    data = read_body()
    try:
        spec = parse_spec(data)
        return spec, plan(spec)
    except SpecError as exc:
        invalid(exc.errors)


# ---------------------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------------------


@bp.post("/jobs")
def submit_job():
    spec, job_plan = validated_spec()
    if request.args.get("dry_run") in ("1", "true", "yes"):
        return jsonify({"valid": True, "plan": job_plan.as_dict()})
    session = db()
    job = jobs.submit(session, spec, job_plan)
    session.commit()
    jobs.mark_enqueued(session, job, services().enqueue)
    session.commit()
    response = jsonify(job_json(job))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_job_route", job_id=job.id)
    return response


@bp.post("/jobs:validate")
def validate_job():
    _, job_plan = validated_spec()
    return jsonify({"valid": True, "plan": job_plan.as_dict()})


@bp.get("/jobs")
def list_jobs():
    limit = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, 10**9)
    query = select(Job)
    status = request.args.get("status")
    if status:
        wanted = set(status.split(","))
        if not wanted <= STATUSES:
            fail(400, "bad_request", f"unknown status {sorted(wanted - STATUSES)}; one of {sorted(STATUSES)}")
        query = query.where(Job.status.in_(wanted))
    if request.args.get("pool"):
        query = query.where(Job.pool == request.args["pool"])
    if request.args.get("name"):
        needle = request.args["name"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.ilike(f"%{needle}%", escape="\\"))
    session = db()
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).all()
    return jsonify({"jobs": [job_json(j) for j in rows], "total": total, "limit": limit, "offset": offset})


@bp.get("/jobs/<hexid:job_id>")
def get_job_route(job_id: str):
    return jsonify(job_json(get_job(job_id)))


@bp.post("/jobs/<hexid:job_id>/cancel")
def cancel_job(job_id: str):
    session = db()
    job = jobs.cancel(session, get_job(job_id))
    session.commit()
    return jsonify(job_json(job))


@bp.get("/jobs/<hexid:job_id>/metrics")
def job_metrics(job_id: str):
    get_job(job_id)
    query = select(Metric.name, Metric.step, Metric.epoch, Metric.value).where(Metric.job_id == job_id)
    if request.args.get("names"):
        query = query.where(Metric.name.in_(request.args["names"].split(",")))
    after = int_arg("after_step", -1, -1, 2**62)
    if after >= 0:
        query = query.where(Metric.step > after)
    series: dict[str, dict[str, list]] = {}
    for name, step, epoch, value in db().execute(query.order_by(Metric.name, Metric.step)):
        s = series.setdefault(name, {"step": [], "epoch": [], "value": []})
        s["step"].append(step)
        s["epoch"].append(epoch)
        s["value"].append(value)
    return jsonify({"job_id": job_id, "series": series})


@bp.get("/jobs/<hexid:job_id>/events")
def job_events(job_id: str):
    get_job(job_id)
    after = int_arg("after", 0, 0, 2**62)
    limit = int_arg("limit", 500, 1, 5000)
    rows = db().scalars(select(Event).where(Event.job_id == job_id, Event.id > after)
                        .order_by(Event.id).limit(limit)).all()
    return jsonify({"job_id": job_id, "events": [
        {"id": e.id, "at": e.created_at.isoformat(), "source": e.source, "level": e.level, "message": e.message}
        for e in rows]})


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def checkpoint_json(c: Checkpoint, latest_id: str | None) -> dict[str, Any]:
    return {"id": c.id, "epoch": c.epoch, "step": c.step, "metric_name": c.metric_name, "metric": c.metric,
            "size": c.size, "sha256": c.sha256, "is_best": c.is_best, "is_latest": c.id == latest_id,
            "created_at": c.created_at.isoformat(),
            "download_url": url_for("api.download_checkpoint", job_id=c.job_id, checkpoint_id=c.id)}


@bp.get("/jobs/<hexid:job_id>/checkpoints")
def list_checkpoints(job_id: str):
    get_job(job_id)
    session = db()
    latest = jobs.latest_checkpoint(session, job_id)
    rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    return jsonify({"job_id": job_id, "checkpoints": [checkpoint_json(c, latest.id if latest else None) for c in rows]})


@bp.get("/jobs/<hexid:job_id>/checkpoints/<hexid:checkpoint_id>/download")
def download_checkpoint(job_id: str, checkpoint_id: str):
    get_job(job_id)
    ckpt = db().get(Checkpoint, checkpoint_id)
    if ckpt is None or ckpt.job_id != job_id:
        fail(404, "not_found", f"no checkpoint {checkpoint_id} in job {job_id}")
    return send_checkpoint(ckpt)


def send_checkpoint(ckpt: Checkpoint):
    path = jobs.checkpoint_path(services().storage, ckpt.job_id, ckpt.id)
    if not path.is_file():
        fail(404, "not_found", "the checkpoint file is gone (pruned)")
    return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{ckpt.job_id}-epoch{ckpt.epoch}.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# Health and the OpenAPI document
# ---------------------------------------------------------------------------------------------------------------------


@bp.get("/health")
def health():
    try:
        db().execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means unhealthy
        return jsonify({"status": "unavailable", "database": str(exc)[:200]}), 503
    return jsonify({"status": "ok", "database": "ok"})


@bp.get("/openapi.json")
def openapi():
    from trainq.service.openapi import document

    return jsonify(document())
