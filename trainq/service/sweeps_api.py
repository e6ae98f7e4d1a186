"""The sweeps API: submit a search over a job spec, watch its trials, cancel it, train the best."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for
from sqlalchemy import select

from trainq.models.spec import SpecError, parse_spec, plan
from trainq.models.sweep import parse_sweep
from trainq.service import jobs, sweeps
from trainq.service.auth import audit, limit, principal, require_user
from trainq.service.context import db, services
from trainq.service.http import fail, int_arg, invalid, read_body
from trainq.service.job_reads import job_json
from trainq.service.lookups import get_sweep, upload_info
from trainq.service.tables import Job, Sweep

bp = Blueprint("sweeps_api", __name__, url_prefix="/api/v1/sweeps")


@bp.before_request
def authenticate():
    require_user()


@bp.post("")
def submit_sweep():
    """Validate a sweep (422 naming each bad path, nothing queued), create its Optuna study and launch its first
    `parallel` trials as jobs."""
    data = read_body()
    try:
        spec, base = parse_sweep(data, uploads=upload_info)
    except SpecError as exc:
        invalid(exc.errors)
    p = principal()
    limit(f"submit:{p.id}", services().settings.submit_per_minute)
    session = db()
    sweep = sweeps.create(session, services().settings, spec, base, p.id)
    created = sweeps.settle(session, services().settings, sweep.id)
    audit("sweep", f"sweep:{sweep.id}", name=sweep.name, trials=sweep.budget)
    session.commit()
    jobs.enqueue_all(session, created, services().enqueue)
    response = jsonify(sweeps.summary(session, sweep))
    response.status_code = 201
    response.headers["Location"] = url_for("sweeps_api.get_sweep_route", sweep_id=sweep.id)
    return response


@bp.get("")
def list_sweeps():
    p = principal()
    query = select(Sweep).order_by(Sweep.created_at.desc()).limit(int_arg("limit", 50, 1, 500))
    if not p.is_admin:
        query = query.where(Sweep.owner_id == p.id)
    if request.args.get("project"):
        query = query.where(Sweep.project == request.args["project"])
    return jsonify({"sweeps": [{"id": s.id, "name": s.name, "project": s.project, "status": s.status,
                                "trials_total": s.budget,
                                "trials_launched": s.launched, "best_job_id": s.best_job_id,
                                "best_value": s.best_value, "created_at": s.created_at.isoformat()}
                               for s in db().scalars(query)]})


@bp.get("/<hexid:sweep_id>")
def get_sweep_route(sweep_id: str):
    return jsonify(sweeps.summary(db(), get_sweep(sweep_id)))


@bp.post("/<hexid:sweep_id>/cancel")
def cancel_sweep(sweep_id: str):
    session = db()
    sweep = sweeps.cancel(session, get_sweep(sweep_id))
    audit("cancel", f"sweep:{sweep.id}")
    session.commit()
    return jsonify(sweeps.summary(session, sweep))


@bp.post("/<hexid:sweep_id>/train_best")
def train_best(sweep_id: str):
    """A new, ordinary job from the best trial's spec (optionally with more epochs: {"epochs": N})."""
    sweep = get_sweep(sweep_id)
    if sweep.best_job_id is None:
        fail(409, "no_best_trial", "no trial of this sweep has finished yet")
    body = read_body() if request.content_length else {}
    document = dict(db().get(Job, sweep.best_job_id).spec)
    document["name"] = f"{sweep.name} · best"[:200]
    if isinstance(body, dict) and "epochs" in body:
        document["training"] = {**document["training"], "epochs": body["epochs"]}
    try:
        spec = parse_spec(document, uploads=upload_info)
    except SpecError as exc:
        invalid(exc.errors)
    session = db()
    job = jobs.submit(session, spec, plan(spec), owner_id=principal().id,
                      dataset_id=spec.dataset.uploaded.id if spec.dataset.uploaded is not None else None)
    audit("submit", f"job:{job.id}", name=job.name, sweep=sweep.id)
    session.commit()
    jobs.enqueue_all(session, [job], services().enqueue)
    response = jsonify(job_json(job))
    response.status_code = 201
    return response
