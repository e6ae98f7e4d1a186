"""GET /metrics for Prometheus (the text format), open or behind TRAINQ_METRICS_TOKEN: the processes' counters
(telemetry.py) and what SQL knows at scrape time; and each request's duration, by route template, method and code."""

from __future__ import annotations

import secrets
import time

from typing import Iterable

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from trainq.service.context import db, services
from trainq.service.db import utcnow
from trainq.service.http import fail
from trainq.service.tables import Job, JobStatus
from trainq.service.telemetry import PREDICTION_SECONDS, PREDICTIONS, REQUEST_SECONDS, multiprocess_dir
from trainq.service.workers import list_workers, lost_after

bp = Blueprint("monitoring", __name__)


@bp.get("/metrics")
def metrics():
    settings = services().settings
    if settings.metrics_token:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not secrets.compare_digest(given.encode(), settings.metrics_token.encode()):
            fail(401, "unauthorized", "this service's metrics need its metrics token (TRAINQ_METRICS_TOKEN) as a "
                                      "bearer token: set it in Prometheus' scrape config (authorization.credentials)",
                 extra_headers={"WWW-Authenticate": "Bearer"})
    try:
        body = exposition(db(), settings.heartbeat_seconds)
    except SQLAlchemyError as exc:  # the queue and workers are SQL's to tell: a failed scrape, not a wrong figure
        fail(503, "unavailable", f"the database did not answer ({type(exc).__name__}); /api/v1/health/ready says more")
    # the exposition format's own header, once: Flask's `mimetype` adds a second charset, which Go's media-type
    # parser (Prometheus 3) refuses, failing the scrape
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class SqlState:
    """A collector of what SQL knows at scrape time: the queue per pool and device, its oldest job's age per pool,
    running jobs per pool, jobs per status, workers per pool, kind and state."""

    def __init__(self, session: Session, heartbeat_seconds: float):
        self.session, self.heartbeat_seconds = session, heartbeat_seconds

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s, now = self.session, utcnow()
        queued = GaugeMetricFamily("trainq_queue_jobs", "Jobs queued, per pool and device asked for",
                                   labels=["pool", "device"])
        oldest = GaugeMetricFamily("trainq_queue_oldest_age_seconds", "Age of the oldest queued job, per pool",
                                   labels=["pool"])
        waiting = Job.status == JobStatus.queued.value
        for pool, device, count in s.execute(select(Job.pool, Job.device, func.count()).where(waiting)
                                             .group_by(Job.pool, Job.device)):
            queued.add_metric([pool, device or "any"], count)
        for pool, first in s.execute(select(Job.pool, func.min(Job.created_at)).where(waiting).group_by(Job.pool)):
            oldest.add_metric([pool], max(0.0, (now - first).total_seconds()))
        running = GaugeMetricFamily("trainq_running_jobs", "Jobs running, per pool (with the queue: the workers a pool "
                                    "needs now)", labels=["pool"])
        for pool, count in s.execute(select(Job.pool, func.count()).where(Job.status == JobStatus.running.value)
                                     .group_by(Job.pool)):
            running.add_metric([pool], count)
        jobs = GaugeMetricFamily("trainq_jobs", "Jobs per status", labels=["status"])
        counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        workers = GaugeMetricFamily("trainq_workers", "Workers per pool, kind and state",
                                    labels=["pool", "kind", "state"])
        tally: dict[tuple[str, str, str], int] = {}
        for view in list_workers(s, lost_after(self.heartbeat_seconds)):
            key = (view.worker.pool, view.worker.kind, view.state)
            tally[key] = tally.get(key, 0) + 1
        for key, count in sorted(tally.items()):
            workers.add_metric(list(key), count)
        return [queued, oldest, running, jobs, workers]


def exposition(session: Session, heartbeat_seconds: float) -> bytes:
    """The text exposition of every metric: the processes' counters (added up across gunicorn's processes when
    there are several) and the SQL gauges."""
    from prometheus_client import REGISTRY

    folder = multiprocess_dir()
    if folder:
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted, path=folder)
    else:
        counted = REGISTRY
    state = CollectorRegistry()
    state.register(SqlState(session, heartbeat_seconds))
    return generate_latest(counted) + generate_latest(state)


PREDICTING = {"models_api.predict_route", "models_api.predict_version", "oip.infer_model", "oip.infer_version"}


def instrument(app: Flask) -> None:
    """Time every request; label it with its route's template (`/api/v1/jobs/<hexid:job_id>`), never the path."""

    @app.before_request
    def _started():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.get("started")
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            seconds = time.perf_counter() - started
            REQUEST_SECONDS.labels(route, request.method, str(response.status_code)).observe(seconds)
            if request.endpoint in PREDICTING:  # by the model and version that answered (or was asked for)
                model = g.get("served_model") or (request.view_args or {}).get("name", "")
                version = g.get("served_version", "")
                PREDICTIONS.labels(model, version, str(response.status_code)).inc()
                PREDICTION_SECONDS.labels(model, version).observe(seconds)
        return response
