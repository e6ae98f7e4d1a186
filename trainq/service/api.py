"""The user's HTTP API: submit, validate, list, watch, cancel jobs, fetch metrics, events and checkpoints."""

from __future__ import annotations

from typing import Any

import csv
import io

from flask import Blueprint, Response, jsonify, request, send_file, url_for
from sqlalchemy import delete, func, select, text

from trainq.models.spec import FieldError, JobSpec, SpecError, parse_spec, plan
from trainq.service import jobs
from trainq.service.app import db, services
from trainq.service.auth import audit, create_token, limit, principal, require_admin, require_user
from trainq.service.http import fail, int_arg, invalid, read_body
from trainq.service.db import utcnow
from trainq.service.tables import FINISHED, ApiToken, AuditEntry, Checkpoint, Event, Job, JobStatus, Metric, User

bp = Blueprint("api", __name__, url_prefix="/api/v1")

STATUSES = {s.value for s in JobStatus}
PUBLIC = {"api.health", "api.openapi"}


@bp.before_request
def authenticate():
    if request.endpoint not in PUBLIC:
        require_user()


def visible(query):
    """Restrict a job query to what the caller may see: everything for an admin, their own jobs otherwise."""
    p = principal()
    return query if p.is_admin else query.where(Job.owner_id == p.id)


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
    """The job if the caller may see it; 404 otherwise, so another user's job looks like no job at all."""
    job = db().scalars(visible(select(Job).where(Job.id == job_id))).first()
    if job is None:
        fail(404, "not_found", f"no job {job_id}")
    return job


def validated_spec() -> tuple[JobSpec, Any]:
    from trainq.service.datasets_api import upload_info

    data = read_body()
    try:
        spec = parse_spec(data, uploads=upload_info)
        job_plan = plan(spec)
    except SpecError as exc:
        invalid(exc.errors)
    settings = services().settings
    too_big = []
    if job_plan.params > settings.max_params:
        too_big.append(FieldError("model.layers", f"{job_plan.params} parameters exceed the limit of "
                                                  f"{settings.max_params}"))
    if job_plan.memory_bytes > settings.max_memory_bytes:
        too_big.append(FieldError("model", f"the run needs about {job_plan.memory_bytes} bytes, more than the limit "
                                           f"of {settings.max_memory_bytes}"))
    if too_big:
        fail(422, "too_large", "the model exceeds the pool's limits", errors=[e.as_dict() for e in too_big],
             estimate={"params": job_plan.params, "memory_bytes": job_plan.memory_bytes},
             limit={"params": settings.max_params, "memory_bytes": settings.max_memory_bytes})
    return spec, job_plan


# ---------------------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------------------


@bp.post("/jobs")
def submit_job():
    spec, job_plan = validated_spec()
    if request.args.get("dry_run") in ("1", "true", "yes"):
        return jsonify({"valid": True, "plan": job_plan.as_dict()})
    p = principal()
    limit(f"submit:{p.id}", services().settings.submit_per_minute)
    session = db()
    dataset = None
    if spec.dataset.name == "upload":
        from trainq.service.datasets_api import find

        dataset = find(spec.dataset.upload).id
    job = jobs.submit(session, spec, job_plan, owner_id=p.id, dataset_id=dataset)
    audit("submit", f"job:{job.id}", name=job.name)
    session.commit()  # before the broker has the id: a worker must find the job when it claims it
    if not jobs.mark_enqueued(session, job, services().enqueue):
        session.commit()
    response = jsonify(job_json(job))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_job_route", job_id=job.id)
    return response


@bp.post("/jobs:validate")
def validate_job():
    _, job_plan = validated_spec()
    return jsonify({"valid": True, "plan": job_plan.as_dict()})


def filtered_jobs():
    query = visible(select(Job))
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
    return query.order_by(Job.created_at.desc(), Job.id.desc())


@bp.get("/jobs")
def list_jobs():
    size = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, 10**9)
    query = filtered_jobs()
    session = db()
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = session.scalars(query.limit(size).offset(offset)).all()
    return jsonify({"jobs": [job_json(j) for j in rows], "total": total, "limit": size, "offset": offset})


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run: text starting with = + - @ (or a tab or CR) is prefixed with '."""
    text_value = "" if value is None else str(value)
    return "'" + text_value if text_value[:1] in ("=", "+", "-", "@", "\t", "\r") else text_value


@bp.get("/jobs.csv")
def export_jobs():
    out = io.StringIO()
    writer = csv.writer(out)
    columns = ["id", "name", "status", "pool", "worker", "epoch", "max_epochs", "best_epoch", "stop_reason",
               "created_at", "finished_at"]
    writer.writerow(columns + ["metrics"])
    for job in db().scalars(filtered_jobs().limit(int_arg("limit", 10_000, 1, 100_000))):
        row = job_json(job)
        writer.writerow([csv_cell(row[c]) for c in columns]
                        + [csv_cell(" ".join(f"{k}={v}" for k, v in sorted(row["metrics"].items())))])
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=trainq-jobs.csv"})


def queue_position(job: Job) -> int:
    """1 for the next job its pool will take: higher priority first, then older."""
    ahead = db().scalar(select(func.count()).select_from(Job).where(
        Job.pool == job.pool, Job.status == JobStatus.queued.value, Job.id != job.id,
        (Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.created_at < job.created_at))))
    return ahead + 1


@bp.get("/jobs/<hexid:job_id>")
def get_job_route(job_id: str):
    job = get_job(job_id)
    body = job_json(job)
    if job.status == JobStatus.queued.value:
        body["queue_position"] = queue_position(job)
    return jsonify(body)


@bp.post("/jobs/<hexid:job_id>/cancel")
def cancel_job(job_id: str):
    session = db()
    job = jobs.cancel(session, get_job(job_id))
    audit("cancel", f"job:{job.id}")
    session.commit()
    return jsonify(job_json(job))


@bp.delete("/jobs/<hexid:job_id>")
def delete_job(job_id: str):
    job = get_job(job_id)
    if job.status not in FINISHED:
        fail(409, "not_finished", f"job {job_id} is {job.status}; cancel it first")
    session = db()
    ids = session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job_id)).all()
    for table in (Metric, Event, Checkpoint):
        session.execute(delete(table).where(table.job_id == job_id))
    session.delete(job)
    audit("delete", f"job:{job_id}", name=job.name)
    session.commit()
    for checkpoint_id in ids:  # files go after the rows are gone, so no row ever points at a missing file
        jobs.checkpoint_path(services().storage, job_id, checkpoint_id).unlink(missing_ok=True)
    return "", 204


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
    audit("download", f"checkpoint:{checkpoint_id}", job=job_id, epoch=ckpt.epoch)
    db().commit()
    return send_checkpoint(ckpt)


def send_checkpoint(ckpt: Checkpoint):
    path = jobs.checkpoint_path(services().storage, ckpt.job_id, ckpt.id)
    if not path.is_file():
        fail(404, "not_found", "the checkpoint file is gone (pruned)")
    return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{ckpt.job_id}-epoch{ckpt.epoch}.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# Who am I, API tokens, the audit log
# ---------------------------------------------------------------------------------------------------------------------


@bp.get("/me")
def me():
    p = principal()
    return jsonify({"id": p.id, "name": p.name, "role": p.role})


@bp.get("/tokens")
def list_tokens():
    rows = db().scalars(select(ApiToken).where(ApiToken.user_id == principal().id).order_by(ApiToken.created_at))
    return jsonify({"tokens": [{"id": t.id, "label": t.label, "created_at": t.created_at.isoformat(),
                                "revoked": t.revoked_at is not None} for t in rows]})


@bp.post("/tokens")
def new_token():
    body = read_body() if request.content_length else {}
    label = body.get("label", "") if isinstance(body, dict) else ""
    if not isinstance(label, str) or len(label) > 64:
        fail(422, "validation", "label must be a string of at most 64 characters",
             errors=[{"path": "label", "message": "at most 64 characters"}])
    session = db()
    token = create_token(session, session.get(User, principal().id), label)
    audit("token_create", f"user:{principal().id}", label=label)
    session.commit()
    return jsonify({"token": token, "label": label}), 201


@bp.delete("/tokens/<hexid:token_id>")
def revoke_token(token_id: str):
    session = db()
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != principal().id and not principal().is_admin):
        fail(404, "not_found", f"no token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    audit("token_revoke", f"token:{token_id}")
    session.commit()
    services().tokens.clear()  # at once in this process; other service processes within TOKEN_CACHE_SECONDS
    return "", 204


@bp.get("/audit")
def audit_log():
    require_admin()
    size = int_arg("limit", 100, 1, 1000)
    rows = db().scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(size))
    return jsonify({"entries": [{"id": a.id, "at": a.at.isoformat(), "user": a.user_name, "action": a.action,
                                 "target": a.target, "detail": a.detail, "ip": a.ip} for a in rows]})


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
