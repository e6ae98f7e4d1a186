"""The dashboard: server-rendered pages over the same tables as the JSON API (a first version: runs and run)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for
from sqlalchemy import select

from trainq.service.api import get_job, job_json, visible
from trainq.service.app import db, services
from trainq.service.auth import (check_csrf, csrf_token, limit, principal, user_for_token, verify_password)
from trainq.service.tables import Event, Job, Metric, User

bp = Blueprint("dashboard", __name__)
OPEN_PAGES = {"dashboard.login", "dashboard.login_form", "static"}


@bp.before_request
def signed_in():
    if request.endpoint in OPEN_PAGES:
        return None
    if principal() is None:
        return redirect(url_for("dashboard.login_form", next=request.full_path.rstrip("?")))
    if request.method == "POST":
        check_csrf()
    return None


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": csrf_token, "me": principal}


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an absolute URL or //host that would send the user elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


@bp.get("/login")
def login_form():
    return render_template("login.html", next=safe_next(request.args.get("next")), error=None)


@bp.post("/login")
def login():
    check_csrf()
    name = request.form.get("username", "")[:64]
    secret = request.form.get("password", "")[:1024]
    limit(f"login:{request.remote_addr}:{name}", services().settings.login_per_minute)
    user = None if "\x00" in name else db().scalar(select(User).where(User.name == name))  # no user has a NUL
    by_token = user_for_token(secret) if secret.startswith("tq_") else None
    ok = user is not None and (verify_password(secret, user.password_hash) or (by_token and by_token.id == user.id))
    if not ok:
        return render_template("login.html", next=safe_next(request.form.get("next")),
                               error="wrong user name, password or token"), 401
    session.clear()
    session["uid"] = user.id
    csrf_token()
    return redirect(safe_next(request.form.get("next")))


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("dashboard.login_form"))


@bp.after_app_request
def _headers(response):
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; script-src 'self'; object-src 'none'; "
                                                           "frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@bp.get("/")
def runs():
    rows = db().scalars(visible(select(Job)).order_by(Job.created_at.desc()).limit(100)).all()
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
