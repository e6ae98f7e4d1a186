"""The `trainq` command: up (everything on one machine), serve, worker, submit, train, db."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from trainq.settings import Settings


def load_spec_file(path: str) -> dict:
    text = Path(path).read_text()
    return yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(verbose: bool) -> None:
    """trainq: submit PyTorch training jobs over HTTP and train them on a worker pool."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration buries the address


# ---------------------------------------------------------------------------------------------------------------------
# Running the service and workers
# ---------------------------------------------------------------------------------------------------------------------


@main.command()
@click.option("--port", type=int, default=None, help="Port of the service (default 8000).")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the database, broker "
              "folder and checkpoints live (default ./.trainq).")
@click.option("--workers", "worker_count", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--gpus", default="auto", show_default=True,
              help="GPU workers in pool 'gpu', one per GPU: auto (every GPU nvidia-smi lists, when torch is built "
                   "with CUDA), none, or indices such as 0,1.")
def up(port: int | None, host: str | None, data_dir: str | None, worker_count: int, gpus: str) -> None:
    """Start the service and local workers on the embedded default (SQLite, a filesystem broker)."""
    gpu_indices, gpu_note = _local_gpus(gpus), None
    if gpu_indices and (missing := _cuda_build_missing()):
        if gpus != "auto":
            raise click.UsageError(f"--gpus {gpus}: {missing}")
        gpu_note = f"nvidia-smi lists {len(gpu_indices)} GPU(s), but {missing}; no GPU worker started"
        gpu_indices = []
    for key, value in (("DATA_DIR", data_dir and str(Path(data_dir).resolve())), ("PORT", port), ("HOST", host)):
        if value:
            os.environ[f"TRAINQ_{key}"] = str(value)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    token_file = settings.data_dir / "worker_token"
    if not settings.worker_token:
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(32))
            token_file.chmod(0o600)
        env["TRAINQ_WORKER_TOKEN"] = token_file.read_text().strip()
    url = f"http://{settings.host}:{settings.port}"
    env.setdefault("TRAINQ_SERVICE_URL", url)
    env["TRAINQ_DATA_DIR"] = str(settings.data_dir.resolve())

    from trainq.service.migrate import upgrade

    upgrade(settings.resolved_database_url)
    first_admin = _first_admin(settings)
    exe = [sys.executable, "-m", "trainq.cli"]
    children = [subprocess.Popen(exe + ["serve", "--no-migrate"], env=env)]
    children += [subprocess.Popen(exe + ["worker", "--pool", "cpu"], env=env) for _ in range(worker_count)]
    if gpu_indices:  # one process that starts a worker per GPU, each pinned to it
        children.append(subprocess.Popen(exe + ["worker", "--pool", "gpu", "--gpus", ",".join(gpu_indices)], env=env))
    if _wait_healthy(url, children[0]):
        click.echo(f"\ntrainq is up: dashboard and API at {url}/  (data in {settings.data_dir.resolve()})")
        if gpu_indices:
            click.echo(f"GPU workers in pool 'gpu' ({', '.join(_gpu_name(i) for i in gpu_indices)}): jobs with "
                       "resources.pool: gpu train there")
        if gpu_note:
            click.echo(gpu_note)
        if first_admin:
            click.echo(f"sign in as 'admin' with this API token (shown once; also kept in "
                       f"{settings.data_dir / 'admin_token'}):\n    {first_admin}")
        click.echo(f"submit a job:  trainq submit examples/digits-mlp.yaml   or   curl -X POST {url}/api/v1/jobs "
                   "-H 'Authorization: Bearer TOKEN' -d @spec.json\n")
    else:
        click.echo("the service did not start; see the log above", err=True)
    _supervise(children)


def _sessions(settings: Settings):
    from trainq.service.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.resolved_database_url))


def _first_admin(settings: Settings) -> str | None:
    """On a database with no user, create 'admin' and return a new token for it (kept in data_dir/admin_token)."""
    from sqlalchemy import func, select

    from trainq.service.auth import create_token, create_user, seed_admin
    from trainq.service.tables import User

    with _sessions(settings)() as session:
        if settings.admin_token:
            seed_admin(session, settings.admin_token)
            session.commit()
            return None
        if session.scalar(select(func.count()).select_from(User)):
            return None
        token = create_token(session, create_user(session, "admin", "admin"), "first admin")
        session.commit()
    path = settings.data_dir / "admin_token"
    path.write_text(token)
    path.chmod(0o600)
    return token


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def _supervise(children: list[subprocess.Popen], until: str = "any") -> None:
    """Wait on child processes, passing SIGTERM/SIGINT on; stop them all when one ends (until="any") or when all
    have ended (until="all": GPU workers, each of which may be drained on its own)."""
    def stop(*_):
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done = any if until == "any" else all
    while not done(child.poll() is not None for child in children):
        time.sleep(0.5)
    stop()


@main.command()
@click.option("--host", default=None, help="Address to bind (default TRAINQ_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default TRAINQ_PORT or 8000).")
@click.option("--processes", type=int, default=None, help="gunicorn worker processes (default 1 on SQLite, 2 else).")
@click.option("--threads", type=int, default=8, show_default=True, help="Threads per process.")
@click.option("--migrate/--no-migrate", default=True, show_default=True, help="Upgrade the database first.")
def serve(host: str | None, port: int | None, processes: int | None, threads: int, migrate: bool) -> None:
    """Run the service alone (gunicorn), with its reconciler."""
    settings = Settings()
    if migrate:
        from trainq.service.migrate import upgrade

        upgrade(settings.resolved_database_url)
    if settings.admin_token:
        from trainq.service.auth import seed_admin

        with _sessions(settings)() as session:
            seed_admin(session, settings.admin_token)
            session.commit()
    from trainq.service.server import run

    sqlite = settings.resolved_database_url.startswith("sqlite")
    run(settings, host or settings.host, port or settings.port, processes or (1 if sqlite else 2), threads)


@main.group(invoke_without_command=True)
@click.option("--pool", default="cpu", show_default=True, help="The pool (queue) this worker serves.")
@click.option("--name", default=None, help="Worker name (default POOL@HOST-PID, or POOL@HOST-gpuN with --gpus).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Jobs at once (one process each).")
@click.option("--gpus", default=None, help="GPU indices, e.g. 0,1, or auto (every GPU nvidia-smi lists): one worker "
                                           "process per GPU, each pinned to it with CUDA_VISIBLE_DEVICES and training "
                                           "one job at a time.")
@click.option("--gpus-per-worker", type=int, default=1, show_default=True,
              help="With --gpus: GPUs per worker process, for data-parallel jobs (resources.gpus).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=None, hidden=True)
@click.pass_context
def worker(ctx: click.Context, pool: str, name: str | None, concurrency: int, gpus: str | None,
           gpus_per_worker: int, kind: str | None) -> None:
    """Run a worker that trains jobs from one pool (subcommands: list, drain)."""
    if ctx.invoked_subcommand is not None:
        return
    if gpus:
        # One process per GPU. CUDA is never initialized here: each child sees only its own GPU, as cuda:0.
        import socket

        indices = _local_gpus(gpus)
        if not indices:
            raise click.UsageError(f"--gpus {gpus}: no GPU to start a worker for"
                                   + (" (nvidia-smi lists none)" if gpus == "auto" else ""))
        if missing := _cuda_build_missing():  # else every job would fail on the worker
            raise click.UsageError(f"--gpus {gpus}: {missing}")
        if gpus_per_worker < 1 or len(indices) % gpus_per_worker:
            raise click.UsageError(f"{len(indices)} GPUs do not split into workers of {gpus_per_worker}")
        children = []
        for first in range(0, len(indices), gpus_per_worker):
            group = indices[first:first + gpus_per_worker]
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group)}
            child_name = f"{name or pool + '@' + socket.gethostname()}-gpu{'-'.join(group)}"
            children.append(subprocess.Popen([sys.executable, "-m", "trainq.cli", "worker", "--pool", pool,
                                              "--name", child_name, "--kind", "gpu"], env=env))
        _supervise(children, until="all")
        return
    from trainq.broker import worker_queues
    from trainq.workers.app import create_worker_app, default_name

    kind = kind or "cpu"
    if kind == "gpu":
        concurrency = 1  # one job per GPU
    if "TRAINQ_CPU_THREADS" not in os.environ:  # each job process gets its share of the cores
        os.environ["TRAINQ_CPU_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
    settings = Settings()
    if not settings.worker_token:
        raise click.UsageError("TRAINQ_WORKER_TOKEN is not set: a worker needs the token the service was given")
    name = name or default_name(pool)
    visible = [i for i in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if i] if kind == "gpu" else []
    device = (", ".join(_gpu_name(i) for i in visible) if kind == "gpu"
              else f"cpu ({os.environ['TRAINQ_CPU_THREADS']} threads per job)")
    app = create_worker_app(settings, name=name, pool=pool, kind=kind, device=device, concurrency=concurrency,
                            gpus=len(visible))
    argv = ["worker", "--queues", ",".join(worker_queues(pool, kind, len(visible))), "--hostname", name,
            "--concurrency", str(concurrency),
            # Jobs run in a child process (a crash or an out-of-memory kill takes only the child), kept warm across
            # jobs: a fresh child per job re-paid ~2 s of imports and first-op setup. A child that has grown past
            # the memory limit is replaced after its job.
            "--pool", "prefork", "--max-memory-per-child", str(settings.worker_max_memory_mb * 1024),
            "--without-mingle", "--without-gossip",
            "--loglevel", "INFO"]
    app.worker_main(argv)


def _local_gpus(wanted: str) -> list[str]:
    """GPU indices from `--gpus`: none, a list such as 0,1, or auto: every GPU nvidia-smi lists (none where it is
    missing or fails). Asked of nvidia-smi, so that this process never initializes CUDA."""
    if wanted == "none":
        return []
    if wanted != "auto":
        indices = [part.strip() for part in wanted.split(",") if part.strip()]
        if not indices or not all(index.isdigit() for index in indices):
            raise click.BadParameter(f"{wanted!r}: GPU indices such as 0,1, or auto, or none", param_hint="--gpus")
        return indices
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def _cuda_build_missing() -> str | None:
    """Why this torch cannot train on a GPU, or None when it is built with CUDA. A build-time fact: asking does not
    initialize CUDA, so the worker processes forked later can still use it."""
    import torch

    if torch.backends.cuda.is_built():
        return None
    return (f"this torch ({torch.__version__}) is built without CUDA: install its CUDA build (PyPI's Linux wheel, or "
            "a https://download.pytorch.org/whl/cuXXX index) to train on a GPU")


def _gpu_name(index: str) -> str:
    """Which GPU, for people, asked of nvidia-smi so that this process never initializes CUDA."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", index],
                             capture_output=True, text=True, timeout=10)
        label = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        label = ""
    return f"cuda:{index} {label}".strip()


@worker.command("list")
@click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
@click.option("--token", envvar="TRAINQ_TOKEN", default=None, help="API token (default TRAINQ_TOKEN).")
def worker_list(url: str | None, token: str | None) -> None:
    """List the workers: state, pool, device, the job each runs, jobs done."""
    base, http = _api(url, token)
    body = _checked(http.get(f"{base}/api/v1/workers", timeout=30))
    for w in body["workers"]:
        running = ", ".join(j["id"] for j in w["jobs"]) or ("busy" if w["busy"] else "-")
        click.echo(f"{w['name']:<40} {w['state']:<9} {w['pool']:<10} {w['device']:<28} {running:<34} "
                   f"{w['jobs_done']} done")
    for pool, p in body["pools"].items():
        click.echo(f"pool {pool}: {p['online']} online, {p['busy']}/{p['slots']} busy, {p['queued']} queued")


@worker.command("drain")
@click.argument("name")
@click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
@click.option("--token", envvar="TRAINQ_TOKEN", default=None, help="An admin's API token (default TRAINQ_TOKEN).")
def worker_drain(name: str, url: str | None, token: str | None) -> None:
    """Ask worker NAME to finish its running job, take no new one, and stop."""
    from urllib.parse import quote

    base, http = _api(url, token)
    body = _checked(http.post(f"{base}/api/v1/workers/{quote(name, safe='@')}/drain", timeout=30))
    click.echo(f"{body['name']}: {body['state']}")


def _api(url: str | None, token: str | None):
    """The service's base URL and an HTTP session with the token (else the embedded admin's, when there is one)."""
    import requests

    settings = Settings()
    if token is None and (settings.data_dir / "admin_token").exists():
        token = (settings.data_dir / "admin_token").read_text().strip()
    http = requests.Session()
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    return (url or settings.service_url).rstrip("/"), http


def _checked(answer) -> dict:
    try:
        body = answer.json()
    except ValueError:
        raise click.ClickException(f"HTTP {answer.status_code}: {answer.text[:200]}")
    if answer.status_code >= 400:
        for error in body.get("errors", []):
            click.echo(f"{error['path']}: {error['message']}", err=True)
        raise click.ClickException(body.get("message", answer.text))
    return body


# ---------------------------------------------------------------------------------------------------------------------
# Using the service
# ---------------------------------------------------------------------------------------------------------------------


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
@click.option("--token", envvar="TRAINQ_TOKEN", default=None,
              help="API token (default TRAINQ_TOKEN, else the embedded admin token in the data folder).")
@click.option("--wait", is_flag=True, help="Wait for the job to finish and print its final metrics.")
def submit(spec_file: str, url: str | None, token: str | None, wait: bool) -> None:
    """Submit a job spec (YAML or JSON) to the service."""
    base, http = _api(url, token)
    body = _checked(http.post(f"{base}/api/v1/jobs", json=load_spec_file(spec_file), timeout=30))
    click.echo(body["id"])
    if wait:
        while body["status"] in ("queued", "running"):
            time.sleep(1)
            body = http.get(f"{base}/api/v1/jobs/{body['id']}", timeout=30).json()
        click.echo(json.dumps({k: body[k] for k in ("status", "stop_reason", "epoch", "best_epoch", "metrics")},
                              indent=2))


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write checkpoints here.")
def train(spec_file: str, device: str | None, out: str | None) -> None:
    """Train a spec in the foreground with no service: the engine alone."""
    from trainq.models.state import Callback
    from trainq.models.engine import fit
    from trainq.models.spec import SpecError, parse_spec

    try:
        spec = parse_spec(load_spec_file(spec_file))
    except SpecError as exc:
        for error in exc.errors:
            click.echo(f"{error.path}: {error.message}", err=True)
        raise click.ClickException("the spec is not valid")

    class Progress(Callback):
        def on_epoch_end(self, state):
            shown = " ".join(f"{k}={v:.4f}" for k, v in state.metrics.items() if k != "epoch")
            click.echo(f"epoch {state.epoch:>4}/{spec.training.epochs}  {shown}")

    sink = None
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)

        def sink(blob: bytes, info: dict) -> None:
            (folder / "latest.safetensors").write_bytes(blob)
            if info["is_best"]:
                (folder / "best.safetensors").write_bytes(blob)

    result = fit(spec, device=device, callbacks=[Progress()], checkpoint_sink=sink)
    click.echo(f"{result.stop_reason} after {result.epochs} epochs (best epoch {result.best_epoch}); "
               f"setup {result.setup_seconds:.2f}s, training {result.train_seconds:.2f}s")
    click.echo(json.dumps(result.metrics, indent=2))


@main.group()
def user() -> None:
    """Users of the service (acts on TRAINQ_DATABASE_URL directly)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
@click.option("--password", is_flag=True, help="Ask for a password for the dashboard (else tokens only).")
def user_add(name: str, role: str, password: bool) -> None:
    """Add a user."""
    from trainq.service.auth import create_user

    secret = click.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    with _sessions(Settings())() as session:
        try:
            create_user(session, name, role, secret)
        except ValueError as exc:
            raise click.ClickException(str(exc))
        session.commit()
    click.echo(f"added {role} {name}", err=True)


@main.group()
def token() -> None:
    """API tokens (acts on TRAINQ_DATABASE_URL directly)."""


@token.command("create")
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
def token_create(name: str, label: str) -> None:
    """Create an API token for user NAME and print it alone on stdout (it is shown only once)."""
    from sqlalchemy import select

    from trainq.service.auth import create_token
    from trainq.service.tables import User

    with _sessions(Settings())() as session:
        found = session.scalar(select(User).where(User.name == name))
        if found is None:
            raise click.ClickException(f"no user {name!r}; add one with: trainq user add {name}")
        value = create_token(session, found, label)
        session.commit()
    click.echo(value)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to TRAINQ_DATABASE_URL."""
    from trainq.service.migrate import upgrade

    upgrade(Settings().resolved_database_url)
    click.echo("database is at the latest revision")


if __name__ == "__main__":
    main()
