"""The dashboard: server-rendered pages over the same tables as the JSON API (a first version: runs and run)."""

from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import select

from trainq.service.api import get_job, job_json
from trainq.service.app import db
from trainq.service.tables import Event, Job, Metric

bp = Blueprint("dashboard", __name__)


@bp.after_app_request
def _headers(response):
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; script-src 'self'; object-src 'none'; "
                                                           "frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@bp.get("/")
def runs():
    rows = db().scalars(select(Job).order_by(Job.created_at.desc()).limit(100)).all()
    return render_template("runs.html", jobs=[job_json(j) for j in rows])


@bp.get("/jobs/<hexid:job_id>")
def run(job_id: str):
    job = job_json(get_job(job_id))
    session = db()
    epochs = session.execute(select(Metric.epoch, Metric.name, Metric.value).where(
        Metric.job_id == job_id, Metric.name.in_(["train_loss", "val_loss", "val_accuracy", "val_r2"]))
        .order_by(Metric.step)).all()
    table: dict[int, dict[str, float]] = {}
    for epoch, name, value in epochs:
        table.setdefault(epoch, {})[name] = value
    events = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(50)).all()
    return render_template("run.html", job=job, epochs=sorted(table.items()), events=events)
