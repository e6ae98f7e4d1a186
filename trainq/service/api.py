"""The user's HTTP API: submit, validate, list, watch, cancel jobs, fetch metrics, events and checkpoints."""

from __future__ import annotations

import csv
import io
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy import delete, func, select, text

from trainq.models.spec import FieldError, JobSpec, SpecError, parse_spec, plan
from trainq.service import annotations, jobs, workers
from trainq.service.auth import audit, create_token, limit, principal, require_admin, require_user
from trainq.service.context import db, services
from trainq.service.db import utcnow
from trainq.service.http import fail, int_arg, invalid, read_body
from trainq.service.job_reads import (
    ahead_in_queue,
    change_cursor,
    changed_ids,
    filtered_jobs,
    job_json,
    jobs_page_json,
    lost_after,
    metric_series,
    read_job,
    send_checkpoint,
)
from trainq.service.lookups import get_job, upload_info, visible
from trainq.service.objects import checkpoint_key
from trainq.service.tables import FINISHED, ApiToken, AuditEntry, Checkpoint, Event, Job, JobStatus, Metric, User

bp = Blueprint("api", __name__, url_prefix="/api/v1")

PUBLIC = {"api.health", "api.live", "api.ready", "api.openapi"}


@bp.before_request
def authenticate():
    if request.endpoint not in PUBLIC:
        require_user()


def millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}"


def gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB" if size >= 1024**3 // 10 else f"{size / 1024**2:.0f} MiB"


def validated_spec() -> tuple[JobSpec, Any]:
    data = read_body()
    try:
        spec = parse_spec(data, uploads=upload_info)
        job_plan = plan(spec)
    except SpecError as exc:
        invalid(exc.errors)
    settings = services().settings
    too_big = []
    if job_plan.params > settings.max_params:
        too_big.append(FieldError("model.layers", f"{millions(job_plan.params)} parameters, over the limit of "
                                                  f"{millions(settings.max_params)} (TRAINQ_MAX_PARAMS)"))
    if job_plan.memory_bytes > settings.max_memory_bytes:
        too_big.append(FieldError("model", f"the run needs about {gib(job_plan.memory_bytes)} of memory, over the "
                                           f"limit of {gib(settings.max_memory_bytes)} (TRAINQ_MAX_MEMORY_BYTES); a "
                                           "smaller training.batch_size or narrower layers need less"))
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
    dataset = spec.dataset.uploaded.id if spec.dataset.uploaded is not None else None
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


@bp.get("/jobs")
def list_jobs():
    """Jobs, newest first (or `sort`), filtered by status, pool and name, a page at a time. `changed_since` (the
    `cursor` of an earlier answer) returns only the jobs that changed since, so a live page fetches only those."""
    size = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, 10**9)
    query = filtered_jobs()
    session = db()
    cursor = change_cursor(session)
    if request.args.get("changed_since"):
        query = query.where(Job.id.in_(select(changed_ids(session, request.args["changed_since"]))))
        rows = session.scalars(query.limit(size)).all()
        return jsonify({"jobs": jobs_page_json(session, rows), "cursor": cursor, "changed": True})
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = session.scalars(query.limit(size).offset(offset)).all()
    return jsonify({"jobs": jobs_page_json(session, rows), "total": total, "limit": size, "offset": offset,
                    "cursor": cursor})


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


@bp.get("/jobs/<hexid:job_id>")
def get_job_route(job_id: str):
    return jsonify(read_job(job_id))


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
        services().store.delete(checkpoint_key(job_id, checkpoint_id))
    return "", 204


def locked_job(job_id: str) -> Job:
    """The caller's job, its row locked until commit: two tag writes at once both land."""
    get_job(job_id)
    return db().scalars(select(Job).where(Job.id == job_id).with_for_update()).one()


@bp.put("/jobs/<hexid:job_id>/tags/<path:key>")
def put_job_tag(job_id: str, key: str):
    """Set a tag on a run (`{"value": TEXT}`); searchable as tags.KEY = 'TEXT'."""
    key, value = annotations.tag_key(key), annotations.tag_value(read_body())
    job = locked_job(job_id)
    job.tags = annotations.with_tag(job.tags, key, value)
    audit("tag", f"job:{job_id}", key=key, value=value)
    db().commit()
    return jsonify({"tags": job.tags})


@bp.delete("/jobs/<hexid:job_id>/tags/<path:key>")
def delete_job_tag(job_id: str, key: str):
    job = locked_job(job_id)
    job.tags = annotations.without_tag(job.tags, annotations.tag_key(key))
    audit("untag", f"job:{job_id}", key=key)
    db().commit()
    return jsonify({"tags": job.tags or {}})


@bp.put("/jobs/<hexid:job_id>/note")
def put_job_note(job_id: str):
    """A run's note in markdown (`{"note": TEXT}`, empty to clear): why it exists, what it showed."""
    note = annotations.note_text(read_body())
    job = locked_job(job_id)
    job.note = note or None
    audit("note", f"job:{job_id}", characters=len(note))
    db().commit()
    return jsonify({"note": note, "html": annotations.markdown_html(note)})


def names_arg() -> list[str] | None:
    return request.args["names"].split(",") if request.args.get("names") else None


@bp.get("/jobs/<hexid:job_id>/metrics")
def job_metrics(job_id: str):
    """A job's metric series; `names` picks some, `exclude` leaves out those whose names start with it (`sys/`),
    `after_step` only newer points (to extend a live chart), `max_points` downsamples each longer series (LTTB)."""
    get_job(job_id)
    after = int_arg("after_step", -1, -1, 2**62)
    max_points = int_arg("max_points", 0, 0, 100_000) or None
    series = metric_series([job_id], names_arg(), after, max_points, request.args.get("exclude") or None)[job_id]
    return jsonify({"job_id": job_id, "series": series})


@bp.get("/compare")
def compare():
    """Several runs side by side: each run's series of the metrics named (downsampled to max_points, default 400),
    its final metrics, and the spec fields whose values differ between the runs."""
    from trainq.service.series import spec_differences

    ids = [i for i in request.args.get("ids", "").split(",") if i]
    if not ids or len(ids) > 200:
        fail(400, "bad_request", "ids: give 1 to 200 job ids, comma separated",
             errors=[{"path": "ids", "message": "1 to 200 job ids"}])
    found = {j.id: j for j in db().scalars(visible(select(Job)).where(Job.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        fail(404, "not_found", f"no job {missing[0]}")
    runs = [found[i] for i in dict.fromkeys(ids)]
    series = metric_series([j.id for j in runs], names_arg() or ["val_loss"], -1,
                           int_arg("max_points", 400, 3, 100_000))
    reported = db().scalars(select(Metric.name).where(Metric.job_id.in_([j.id for j in runs])).distinct()).all()
    return jsonify({"runs": [{**job_json(j), "series": series[j.id]} for j in runs],
                    "differences": spec_differences([j.spec for j in runs]),
                    "metrics": sorted(reported)})  # what the runs reported: what is worth plotting


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


# ---------------------------------------------------------------------------------------------------------------------
# Who am I, API tokens, the audit log
# ---------------------------------------------------------------------------------------------------------------------


@bp.get("/workers")
def list_workers():
    """Every worker seen in the last hour with its state (online, draining, lost, stopped), and per pool the workers
    online, job slots, busy slots and queued jobs. A user sees which of their own jobs a worker runs; an admin all."""
    p = principal()
    views = workers.list_workers(db(), lost_after())
    queued = db().execute(visible(select(Job, ahead_in_queue())).where(Job.status == JobStatus.queued.value)
                          .order_by(Job.pool, Job.priority.desc(), Job.created_at).limit(200)).all()
    return jsonify({"workers": [v.json(lambda j: p.is_admin or j.owner_id == p.id) for v in views],
                    "pools": workers.pools(db(), views),
                    "queue": [{"id": j.id, "name": j.name, "pool": j.pool, "device": j.device,
                               "priority": j.priority, "position": ahead + 1,
                               "created_at": j.created_at.isoformat()} for j, ahead in queued]})


@bp.get("/layers")
def layers():
    """Every layer type a spec may use on this service: the built-in ones and those of installed packages (with the
    package and version), each with its fields as JSON Schema; and installed entry points that were refused, with why.
    A worker takes a job with an installed type only if it has the same package in the same version."""
    from trainq.models.spec import layer_catalog

    return jsonify(layer_catalog())


@bp.get("/examples")
def examples():
    """The example specs shipped with trainq, to start a new job from."""
    from trainq.service.examples import load_examples

    return jsonify({"examples": load_examples()})


@bp.post("/workers/<name>/drain")
def drain_worker(name: str):
    """Ask a worker to finish its job and take no new one (admin). It stops once idle."""
    require_admin()
    session = db()
    try:
        worker = workers.request_drain(session, name)
    except LookupError:
        fail(404, "not_found", f"no worker {name}")
    audit("drain", f"worker:{name}")
    session.commit()
    return jsonify({"name": worker.name, "state": worker.state}), 202


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


@bp.get("/health/live")
def live():
    """Liveness: this process answers. Nothing else is asked, so a database outage never restarts the service."""
    return jsonify({"status": "live"})


@bp.get("/health/ready")
def ready():
    """Readiness: the database, the broker and the file store answer, so jobs can be taken and sent and their files
    kept (503 names what does not)."""
    problems = {}
    try:
        db().execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        problems["database"] = str(exc)[:200]
    broker = services().broker_problem()
    if broker:
        problems["broker"] = broker
    storage = services().store.problem()
    if storage:
        problems["storage"] = storage
    if problems:
        return jsonify({"status": "unavailable", **problems}), 503
    return jsonify({"status": "ready", "database": "ok", "broker": "ok", "storage": "ok"})


@bp.get("/openapi.json")
def openapi():
    from trainq.service.openapi import document

    return jsonify(document())
