"""The dashboard: server-rendered pages that are clients of the JSON API; their JavaScript keeps them live."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from flask import (Blueprint, abort, current_app, redirect, render_template, request, send_from_directory, session,
                   url_for)
from sqlalchemy import case, distinct, false, func, select

from trainq.service.auth import check_csrf, csrf_token, limit, principal, user_for_token, verify_password
from trainq.service.context import db, services
from trainq.service.job_reads import STATUSES, change_cursor, filtered_jobs, jobs_page_json, read_job
from trainq.service.http import ApiError
from trainq.service.lookups import get_job, get_sweep, visible
from trainq.service.series import filesize
from trainq.service.tables import FINISHED, Job, User

bp = Blueprint("dashboard", __name__)
OPEN_PAGES = {"dashboard.login", "dashboard.login_form", "dashboard.asset", "dashboard.favicon", "static"}


@bp.before_request
def signed_in():
    if request.endpoint in OPEN_PAGES:
        return None
    if principal() is None:
        return redirect(url_for("dashboard.login_form", next=request.full_path.rstrip("?")))
    if request.method == "POST":
        check_csrf()
    return None


NOT_PAGES = ("/api/", "/v2/", "/metrics", "/assets/", "/static/")


def wants_page() -> bool:
    """A browser asking for a page (a GET preferring HTML, outside the API): an error then answers with a page that
    says what went wrong and links back, not the API's JSON (a mistyped or stale dashboard link showed that)."""
    return (request.method == "GET" and not request.path.startswith(NOT_PAGES)
            and request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html")


bp.app_template_filter("filesize")(filesize)


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": csrf_token, "me": principal, "missing_assets": missing_assets, "finished_states": FINISHED}


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
    # A token pasted in place of the password signs in too: any token, including a TRAINQ_ADMIN_TOKEN that was not
    # made by `trainq token` and so has no tq_ prefix.
    ok = user is not None and (verify_password(secret, user.password_hash)
                               or (bool(secret) and getattr(user_for_token(secret), "id", None) == user.id))
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


ASSETS = {"uplot.js": "uPlot.iife.min.js", "uplot.css": "uPlot.min.css"}
ASSET_DIR = Path(__file__).parent / "assets" / "node_modules" / "uplot" / "dist"


def missing_assets() -> list[str]:
    """The chart library's files this installation lacks: without them every chart is blank, so every page says so."""
    return [str(ASSET_DIR / file) for file in ASSETS.values() if not (ASSET_DIR / file).is_file()]


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico whatever the page says: the same icon as the pages' <link rel=icon>."""
    return current_app.send_static_file("favicon.svg")


@bp.get("/assets/<name>")
def asset(name: str):
    """The chart library, as the install step fetched it from the npm registry (never from a CDN at run time)."""
    if name not in ASSETS or not (ASSET_DIR / ASSETS[name]).is_file():
        abort(404)
    return send_from_directory(ASSET_DIR, ASSETS[name], max_age=86400)


COLUMNS = [("name", "name"), ("status", "status"), ("pool", "pool"), ("worker", "worker"), ("epoch", "epoch"),
           ("", "best (monitored)"), ("started", "duration"), ("created", "submitted")]


@bp.get("/")
def runs():
    """The runs table: the same query as GET /api/v1/jobs (filters, sort, page), rendered; the page then asks the
    API only for the jobs that changed."""
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    offset = min(max(request.args.get("offset", 0, type=int), 0), 10**9)  # a page, not a number SQL cannot hold
    sort = request.args.get("sort", "-created")
    filter_error = None
    try:
        query = filtered_jobs(sweep_default="none")  # validates sort and status: a bad one is a 400 naming it
    except ApiError as exc:
        if exc.body.get("error") != "bad_filter":
            raise
        # a search that does not read: said beside the box, which keeps the text to mend; no runs listed
        filter_error = exc.body["message"]
        query = filtered_jobs(sweep_default="none", args={**request.args, "filter": "", "order_by": ""}).where(false())
    session = db()
    cursor = change_cursor(session)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = session.scalars(query.limit(limit).offset(offset)).all()
    args = {k: v for k, v in request.args.items()
            if k in ("status", "pool", "name", "sweep", "cols", "project", "filter", "order_by") and v}
    extra = extra_columns(args.get("cols", ""))
    args["sweep"] = args.get("sweep", "none")  # a sweep's trials are on its own page unless asked for here
    hidden = None
    if args["sweep"] == "none":
        trials = visible(select(Job.sweep_id)).where(Job.sweep_id.is_not(None)).subquery()
        hidden = session.execute(select(func.count(), func.count(distinct(trials.c.sweep_id)))).one()

    def link(**changes):
        return "/?" + urlencode({**args, "sort": sort, "limit": limit, "offset": offset, **changes})

    projects = session.scalars(visible(select(Job.project)).distinct().order_by(Job.project)).all()
    return render_template("runs.html", nav="runs", jobs=jobs_page_json(session, rows), total=total, limit=limit,
                           offset=offset, sort=sort, args=args, statuses=sorted(STATUSES), columns=COLUMNS,
                           projects=projects, filter_error=filter_error, tag_link=tag_link,
                           hidden=hidden, trials_link=link(sweep="any", offset=0), extra=extra, cell=cell,
                           cursor=cursor, query=urlencode({**args, "sort": sort, "limit": limit}),
                           sort_link=lambda key: link(sort=key if sort == f"-{key}" else f"-{key}", offset=0),
                           page_link=lambda to: link(offset=max(to, 0)))


@bp.get("/jobs/<hexid:job_id>")
def run(job_id: str):
    job = read_job(job_id)
    packed_with = []
    if job.get("pack_id"):
        packed_with = db().execute(select(Job.id, Job.trial).where(Job.pack_id == job["pack_id"], Job.id != job_id)
                                   .order_by(Job.trial)).all()
    # A finished regression run is known from its final metrics, so its page is right before any script runs (the
    # script learns the task of a running one from its plan)
    regression = "test_r2" in (job.get("metrics") or {})
    from trainq.service.tables import Model, ModelVersion

    versions = db().execute(select(Model.name.label("model"), ModelVersion.version, ModelVersion.state)
                            .join(Model, Model.id == ModelVersion.model_id).where(ModelVersion.job_id == job_id)
                            .order_by(ModelVersion.created_at)).all()
    from trainq.service.annotations import markdown_html

    return render_template("run.html", nav="runs", job=job, spec_rows=shown_spec(job["spec"]), packed_with=packed_with,
                           versions=versions, tag_link=tag_link, note_html=markdown_html(job.get("note") or ""),
                           regression=regression, curve=curve_svg((job.get("metrics") or {}).get("test_predictive_curve")))


def tag_link(key: str, value: str) -> str:
    """The runs page searching for a tag's value: a chip is a link to its runs."""
    name = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"`{key}`"
    quoted = value.replace("'", "''")
    return "/?" + urlencode({"filter": f"tags.{name} = '{quoted}'", "sweep": "any"})


def curve_svg(curve: dict | None, width: float = 480, height: float = 240) -> dict | None:
    """A 1-D regression's predictive curve as SVG coordinates: the 95 % band, the mean, the training points."""
    try:
        xs, mean, low, high = curve["x"], curve["mean"], curve["low"], curve["high"]
        tx, ty = curve["train_x"], curve["train_y"]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(low + ty), max(high + ty)
    except (TypeError, KeyError, ValueError):
        return None
    sx = lambda v: round((v - x0) / ((x1 - x0) or 1) * width, 1)  # noqa: E731
    sy = lambda v: round(height - (v - y0) / ((y1 - y0) or 1) * height, 1)  # noqa: E731
    band = [f"{sx(x)},{sy(h)}" for x, h in zip(xs, high)] + [f"{sx(x)},{sy(lo)}" for x, lo in zip(reversed(xs),
                                                                                                 reversed(low))]
    return {"width": width, "height": height, "band": " ".join(band),
            "mean": " ".join(f"{sx(x)},{sy(m)}" for x, m in zip(xs, mean)),
            "points": [(sx(x), sy(y)) for x, y in zip(tx, ty)], "x0": x0, "x1": x1, "y0": y0, "y1": y1}


def extra_columns(text: str) -> list[str]:
    """The optional columns asked for (`cols=test_accuracy,optimizer.lr`): final metrics or spec fields, at most 8."""
    return [c for c in (part.strip()[:80] for part in text.split(",")) if c][:8]


def cell(job: dict, column: str):
    """A job's value for an optional column: its final metric of that name, else the spec field at that path."""
    from trainq.models.sweep import get_path

    metrics = job.get("metrics") or {}
    if column in metrics:
        return metrics[column]
    try:
        return get_path(job["spec"], column)
    except (KeyError, ValueError):
        return None


def shown_spec(stored: dict) -> list[tuple[str, object, bool]]:
    """The spec's fields that apply to its dataset and layers, each marked when it is the default."""
    from pydantic import ValidationError

    from trainq.models.spec import JobSpec, spec_rows
    from trainq.service.series import flatten

    try:
        return spec_rows(JobSpec.model_validate(stored))
    except ValidationError:  # a spec stored by an older version that this one no longer reads: all of it, as stored
        return [(path, value, False) for path, value in sorted(flatten(stored).items())]


@bp.get("/compare")
def compare():
    ids = ",".join(i for i in request.args.get("ids", "").replace(" ", "").split(",") if i)
    if not ids and request.args.get("project"):  # a project's latest finished runs, from its page
        ids = ",".join(db().scalars(visible(select(Job.id)).where(
            Job.project == request.args["project"], Job.status.in_(FINISHED))
            .order_by(Job.created_at.desc()).limit(20)))
    metric = request.args.get("metric", "val_loss")[:64]
    # the page replaces the menu with the metrics the runs reported, once it has them
    return render_template("compare.html", nav="compare", ids=ids, metric=metric, metric_names=[metric])


@bp.get("/workers")
def workers_page():
    return render_template("workers.html", nav="workers")


@bp.get("/submit")
def submit_page():
    """The submit form, empty, from an example, or from an earlier run's spec ("run again")."""
    import yaml

    initial = ""
    if request.args.get("from"):
        spec = dict(get_job(request.args["from"]).spec)
        spec["name"] = spec["name"] if spec["name"].endswith("(again)") else f"{spec['name']} (again)"[:200]
        initial = yaml.safe_dump(spec, sort_keys=False)
    return render_template("submit.html", nav="submit", initial=initial)


@bp.get("/sweeps")
def sweeps_page():
    from trainq.service.tables import Sweep

    p = principal()
    query = select(Sweep).order_by(Sweep.created_at.desc()).limit(200)
    if not p.is_admin:
        query = query.where(Sweep.owner_id == p.id)
    project = request.args.get("project", "")
    if project:
        query = query.where(Sweep.project == project)
    return render_template("sweeps.html", nav="sweeps", sweeps=db().scalars(query).all(), example=example_sweep(),
                           project=project)


def example_sweep() -> str:
    """A sweep to start from in the form: the digits MLP example over learning rate and width, pruned by ASHA."""
    import yaml

    from trainq.service.examples import load_examples

    base = next((e["spec"] for e in load_examples() if e["name"] == "digits-mlp"), None) or {
        "name": "digits-mlp", "dataset": {"name": "digits"},
        "model": {"layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                             {"type": "dense", "units": 10}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001}, "training": {"epochs": 20}}
    sweep = {"name": "digits-lr-and-width", "base": base,
             "search": {"optimizer.lr": {"log_uniform": [0.0001, 0.03]},
                        "model.layers[0].units": {"choice": [32, 64, 128]}},
             "method": "tpe", "trials": 8, "parallel": 2, "metric": "val_accuracy", "pruner": {"type": "asha"}}
    return yaml.safe_dump(sweep, sort_keys=False)


@bp.get("/datasets")
def datasets_page():
    from trainq.service.lookups import dataset_json, visible_datasets
    from trainq.service.tables import Dataset

    rows = db().scalars(visible_datasets().order_by(Dataset.name, Dataset.version.desc())).all()
    shown, seen = [], set()
    for d in rows:
        shown.append({**dataset_json(d), "latest": (d.owner_id, d.name) not in seen})
        seen.add((d.owner_id, d.name))
    return render_template("datasets.html", nav="datasets", datasets=shown,
                           max_body=services().settings.max_body_bytes)


@bp.get("/datasets/<path:ref>")
def dataset_page(ref: str):
    from trainq.service.datasets import users_of
    from trainq.service.lookups import dataset_json, get_dataset, visible_datasets
    from trainq.service.tables import Dataset

    d = get_dataset(ref)
    versions = db().scalars(visible_datasets().where(Dataset.owner_id == d.owner_id, Dataset.name == d.name)
                            .with_only_columns(Dataset.version).order_by(Dataset.version)).all()
    return render_template("dataset.html", nav="datasets", d=dataset_json(d), versions=versions,
                           used=users_of(db(), d))


@bp.get("/projects")
def projects_page():
    """Every project the caller has runs in: its runs, how many succeeded, its last run."""
    rows = db().execute(visible(select(Job.project, func.count(), func.sum(case((Job.status == "succeeded", 1),
                                                                              else_=0)),
                                       func.max(Job.created_at))).group_by(Job.project).order_by(Job.project)).all()
    return render_template("projects.html", nav="projects", projects=rows)


@bp.get("/projects/<name>")
def project_page(name: str):
    """One project: its latest runs, its sweeps, and the models whose versions its runs trained."""
    from trainq.service.tables import Model, ModelVersion, Sweep

    p = principal()
    session = db()
    runs = session.scalars(visible(select(Job)).where(Job.project == name).order_by(Job.created_at.desc())
                           .limit(50)).all()
    total = session.scalar(visible(select(func.count()).select_from(Job)).where(Job.project == name))
    sweeps = select(Sweep).where(Sweep.project == name).order_by(Sweep.created_at.desc()).limit(100)
    sweeps = session.scalars(sweeps if p.is_admin else sweeps.where(Sweep.owner_id == p.id)).all()
    models = (select(Model.name, func.count(ModelVersion.id), func.max(ModelVersion.version))
              .join(ModelVersion, ModelVersion.model_id == Model.id).join(Job, Job.id == ModelVersion.job_id)
              .where(Job.project == name).group_by(Model.name).order_by(Model.name))
    models = session.execute(models if p.is_admin else models.where(Model.owner_id == p.id)).all()
    if not runs and not sweeps and not models:
        abort(404, f"no project {name}: a spec names its project with `project: {name}`")
    return render_template("project.html", nav="projects", name=name, jobs=jobs_page_json(session, runs),
                           total=total, sweeps=sweeps, models=models, tag_link=tag_link,
                           runs_link="/?" + urlencode({"project": name, "sweep": "any"}))


@bp.get("/sweeps/<hexid:sweep_id>")
def sweep_page(sweep_id: str):
    return render_template("sweep.html", nav="sweeps", sweep=get_sweep(sweep_id))


@bp.get("/models")
def models_page():
    from trainq.service.registry import aliases_of
    from trainq.service.tables import Model, ModelVersion, VersionState

    p = principal()
    query = select(Model).order_by(Model.name)
    models = db().scalars(query if p.is_admin else query.where(Model.owner_id == p.id)).all()
    rows = []
    for m in models:
        versions = db().scalars(select(ModelVersion).where(ModelVersion.model_id == m.id)
                                .order_by(ModelVersion.version.desc())).all()
        ready = next((v for v in versions if v.state == VersionState.ready.value), None)
        rows.append({"name": m.name, "versions": len(versions), "ready": ready.version if ready else None,
                     "task": (ready.signature or {}).get("task") if ready else None,
                     "aliases": aliases_of(db(), m.id), "created_at": m.created_at.isoformat()})
    return render_template("models.html", nav="models", models=rows)


@bp.get("/models/<name>")
def model_page(name: str):
    """A model's versions side by side: state, aliases, test metrics, the job; promote; a spec diff of two versions;
    a form to try a ready version, made from its signature."""
    from trainq.service.registry import RegistryError, aliases_of, find_model, parse_ref, version_json
    from trainq.service.series import spec_differences
    from trainq.service.tables import ModelVersion

    p = principal()
    try:
        model = find_model(db(), parse_ref(name).name, p.id, p.is_admin)
    except RegistryError:
        model = None
    if model is None:
        abort(404)
    aliases = aliases_of(db(), model.id)
    versions = [version_json(model, v, aliases) for v in db().scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.version.desc()))]
    metrics = sorted({k for v in versions for k, value in v["metrics"].items()
                      if k.startswith("test_") and isinstance(value, (int, float))})
    numbers = [v["version"] for v in versions]
    a, b = request.args.get("a", type=int), request.args.get("b", type=int)
    if a not in numbers or b not in numbers:
        a, b = (numbers[1], numbers[0]) if len(numbers) > 1 else (None, None)
    diff = None
    if a is not None:
        by_number = {v["version"]: v for v in versions}
        diff = spec_differences([by_number[a]["spec"], by_number[b]["spec"]])
    ready = [v for v in versions if v["state"] == "ready"]
    tried = next((v for v in ready if "champion" in v["aliases"]), ready[0] if ready else None)
    from trainq.service.tables import Dataset

    ids = {v["dataset_id"] for v in versions if v["dataset_id"]}
    datasets = {d.id: d.ref for d in db().scalars(select(Dataset).where(Dataset.id.in_(ids)))} if ids else {}
    from trainq.service.annotations import markdown_html

    described = {v["version"]: markdown_html(v["description"]) for v in versions}
    return render_template("model.html", nav="models", model=model, versions=versions, metrics=metrics,
                           described=described,
                           aliases=aliases, diff=diff, a=a, b=b, tried=tried, datasets=datasets)
