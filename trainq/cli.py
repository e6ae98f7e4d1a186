"""The `trainq` command: up (everything on one machine), serve, worker, submit, train, db."""

from __future__ import annotations

import json
import logging
import math
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
    """A spec file's fields, whatever its extension says (JSON is read as such, anything else as YAML). A syntax
    error is the user's to fix: it names the line and column, never a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not a text file (a spec is YAML or JSON in UTF-8)")
    try:
        data = json.loads(text)
    except ValueError as json_error:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            if path.endswith(".json"):  # meant as JSON: its error is the one that helps
                raise click.ClickException(f"{path}: not valid JSON at line {json_error.lineno}, column "
                                           f"{json_error.colno}: {json_error.msg}")
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise click.ClickException(f"{path}: not valid YAML{where}: {problem}")
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: a spec is a mapping of fields (name:, dataset:, model:, ...), "
                                   f"not {type(data).__name__ if data is not None else 'an empty file'}")
    return data


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
    if gpus == "auto" and not gpu_indices:
        gpu_note = "no GPU worker: nvidia-smi lists no NVIDIA GPU here, so every job trains on the CPU workers"
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
        cli = _trainq_command()
        click.echo(f"submit a job:  {cli} submit examples/digits-mlp.yaml --wait\n"
                   f"          or:  curl -X POST {url}/api/v1/jobs -H 'Authorization: Bearer TOKEN' "
                   "-H 'Content-Type: application/yaml' --data-binary @examples/digits-mlp.yaml\n")
    else:
        click.echo("the service did not start; see the log above", err=True)
    _supervise(children, last=children[0])


def _trainq_command() -> str:
    """How to call this trainq from a shell here: `trainq` when that is on PATH, else its path (.venv/bin/trainq after
    `make up`, whose virtual environment is not activated)."""
    import shutil

    mine = Path(sys.executable).parent / "trainq"
    found = shutil.which("trainq")
    if found and Path(found).resolve() == mine.resolve():
        return "trainq"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


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


def _supervise(children: list[subprocess.Popen], until: str = "any", last: subprocess.Popen | None = None) -> None:
    """Wait on child processes, passing SIGTERM/SIGINT on; stop them all when one ends (until="any") or when all
    have ended (until="all": GPU workers, each of which may be drained on its own). `last` (the service) is stopped
    after the others, so a worker stopping can still tell it so (a `docker stop` signals this process alone)."""
    def stop(*_):
        for group in ([c for c in children if c is not last], [last] if last is not None else []):
            for child in group:
                if child.poll() is None:
                    child.terminate()
            for child in group:
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
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before anything imports prometheus_client: gunicorn's processes count into files there, and GET /metrics
        # adds them up. Emptied at each start, as prometheus-client asks.
        import shutil

        folder = (settings.data_dir / f"prometheus-{port or settings.port}").resolve()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
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
            "--without-mingle", "--without-gossip",  # no broadcasts between workers at start and while idle
            *([] if settings.celery_events else ["--without-heartbeat"]),  # Celery's event heartbeat, every 2 s
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
    body = _Client(url, token).call("GET", "/api/v1/workers")
    _table([[w["name"], w["state"], w["pool"], w["device"],
             ", ".join(j["id"] for j in w["jobs"]) or ("busy" if w["busy"] else "-"), w["jobs_done"]]
            for w in body["workers"]], ["NAME", "STATE", "POOL", "DEVICE", "RUNNING", "DONE"])
    for pool, p in body["pools"].items():
        click.echo(f"pool {pool}: {p['online']} online, {p['busy']}/{p['slots']} busy, {p['queued']} queued")


@worker.command("drain")
@click.argument("name")
@click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
@click.option("--token", envvar="TRAINQ_TOKEN", default=None, help="An admin's API token (default TRAINQ_TOKEN).")
def worker_drain(name: str, url: str | None, token: str | None) -> None:
    """Ask worker NAME to finish its running job, take no new one, and stop."""
    from urllib.parse import quote

    body = _Client(url, token).call("POST", f"/api/v1/workers/{quote(name, safe='@')}/drain")
    click.echo(f"{body['name']}: {body['state']}")


@main.command("layers")
@click.argument("type_", metavar="[TYPE]", required=False)
@click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
@click.option("--token", envvar="TRAINQ_TOKEN", default=None, help="API token (default TRAINQ_TOKEN).")
def layers(type_: str | None, url: str | None, token: str | None) -> None:
    """The layer types the service takes (built-in, and from installed packages); with TYPE, its fields."""
    body = _Client(url, token).call("GET", "/api/v1/layers")
    found = {layer["type"]: layer for layer in body["layers"]}
    if type_ is None:
        _table([[t, f"{layer['package']} {layer['version']}" if layer["package"] else "built-in",
                 ", ".join(f + ("*" if f in layer["required"] else "") for f, _ in layer["about"])]
                for t, layer in found.items()], ["TYPE", "FROM", "FIELDS (* required)"])
        for refused in body["refused"]:
            click.echo(f"not offered: {refused['name']} from {refused['package']} {refused['version']}: "
                       f"{refused['reason']}")
        click.echo("every layer also takes id and from; `trainq layers TYPE` shows a type's fields")
        return
    layer = found.get(type_)
    if layer is None:
        raise click.ClickException(f"no layer type {type_!r} here; `trainq layers` lists them")
    source = f" (from {layer['package']} {layer['version']})" if layer["package"] else ""
    click.echo(f"{type_}{source}: {layer['description'].replace('`', '')}")
    for name, words in layer["about"]:
        click.echo(f"  {name}: {words}")


class _Client:
    """The service's API as the command line uses it: the base URL, the token, and errors a user can act on."""

    def __init__(self, url: str | None, token: str | None):
        import requests

        settings = Settings()
        self.token_file = (settings.data_dir / "admin_token").resolve()
        self.source = "--token / TRAINQ_TOKEN" if token else None
        if token is None and self.token_file.exists():
            token, self.source = self.token_file.read_text().strip(), str(self.token_file)
        self.base = (url or settings.service_url).rstrip("/")
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, timeout: float = 30, **kwargs) -> dict:
        return self.checked(self.request(method, path, timeout=timeout, **kwargs))

    def request(self, method: str, path: str, timeout: float = 30, **kwargs):
        """The service's answer, whatever its status; a service that cannot be reached is a usage error."""
        import requests

        try:
            return self.http.request(method, self.base + path, timeout=timeout, **kwargs)
        except requests.ConnectionError:
            raise click.ClickException(
                f"cannot reach the trainq service at {self.base}. Start it with `trainq up` (or `make up`), or point "
                "--url or TRAINQ_SERVICE_URL at where it runs") from None
        except requests.Timeout:
            raise click.ClickException(f"the trainq service at {self.base} did not answer in {timeout:.0f} s") from None

    def download(self, path: str) -> bytes:
        """A file from the service, or the service's error as a usage error."""
        import requests

        try:
            answer = self.http.get(self.base + path, timeout=120)
        except requests.ConnectionError:
            raise click.ClickException(f"cannot reach the trainq service at {self.base}") from None
        if answer.status_code >= 400:
            self.checked(answer)
        return answer.content

    def checked(self, answer) -> dict:
        if answer.status_code == 401:
            if self.source is None:
                raise click.ClickException(
                    "the service needs an API token and none was given: pass --token TOKEN or set TRAINQ_TOKEN "
                    "(`trainq token create NAME` makes one). `trainq up` keeps the first admin's token in "
                    f".trainq/admin_token of the folder it was started in; from here that would be {self.token_file}")
            raise click.ClickException(
                f"the service refused the API token from {self.source}: it is mistyped, revoked, or belongs to "
                "another trainq's database. `trainq token create NAME` makes a new one")
        try:
            body = answer.json()
        except ValueError:
            raise click.ClickException(f"HTTP {answer.status_code} from {self.base}: {answer.text[:200]}") from None
        if answer.status_code >= 400:
            for error in body.get("errors", []):
                if str(error.get("message")) not in str(body.get("message")):  # said once, in the last line
                    click.echo(f"{error['path']}: {error['message']}", err=True)
            raise click.ClickException(body.get("message", answer.text))
        return body


def _table(rows: list[list], headers: list[str]) -> None:
    """Columns as wide as their widest cell, with a header line."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _show_metrics(metrics: dict) -> None:
    """Final metrics: one scalar a line, a confusion matrix as its rows."""
    for name, value in metrics.items():
        if isinstance(value, dict):  # a predictive curve: a picture, not a figure
            click.echo(f"{name:<24} ({len(value.get('x', []))} points; the run page draws it)")
        elif isinstance(value, list) and value and isinstance(value[0], dict):  # a reliability table, bin by bin
            click.echo(f"{name}: confidence bin, rows, mean confidence, accuracy")
            for b in value:
                if b["count"]:
                    click.echo(f"  {b['low']:.2f}-{b['high']:.2f} {b['count']:>6} {b['confidence']:.3f} "
                               f"{b['accuracy']:.3f}")
        elif isinstance(value, list):
            click.echo(f"{name}:")
            for row in value:
                click.echo("  " + " ".join(f"{v:>5}" for v in row))
        else:
            click.echo(f"{name:<24} {value:.6g}" if isinstance(value, float) else f"{name:<24} {value}")


# ---------------------------------------------------------------------------------------------------------------------
# Using the service
# ---------------------------------------------------------------------------------------------------------------------


URL = click.option("--url", default=None, help="Service URL (default TRAINQ_SERVICE_URL).")
TOKEN = click.option("--token", envvar="TRAINQ_TOKEN", default=None,
                     help="API token (default TRAINQ_TOKEN, else .trainq/admin_token of this folder).")


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@URL
@TOKEN
@click.option("--wait", is_flag=True, help="Show progress until the job ends, then its final metrics.")
@click.option("--dry-run", is_flag=True, help="Check the spec and show its layers, shapes and parameters; queue "
                                              "nothing.")
def submit(spec_file: str, url: str | None, token: str | None, wait: bool, dry_run: bool) -> None:
    """Submit a job spec (YAML or JSON) to the service; print its id."""
    client = _Client(url, token)
    if dry_run:
        _show_plan(client.call("POST", "/api/v1/jobs:validate", json=load_spec_file(spec_file))["plan"])
        return
    body = client.call("POST", "/api/v1/jobs", json=load_spec_file(spec_file))
    click.echo(body["id"])
    if wait:
        body = _follow(client, body)
        click.echo(f"{body['status']} ({body.get('stop_reason') or '-'}) after {body['epoch']} epochs, best epoch "
                   f"{body['best_epoch']}")
        _show_metrics(body.get("metrics") or {})
        if body["status"] == "failed":
            raise click.ClickException(body.get("error") or "the job failed")


def _show_plan(plan: dict) -> None:
    """A dry run as a table: each layer's id, the layers it reads (blank: the one before), its output and weights."""
    rows, previous = [["", "in", "input", "", plan["input_shape"], ""]], "in"
    for layer in plan["layers"]:
        reads = layer.get("inputs") or []
        rows.append([layer["index"], layer.get("id", ""), layer["type"],
                     "" if reads == [previous] else ", ".join(reads), layer["output_shape"], f"{layer['params']:,}"])
        previous = layer.get("id")
    _table(rows, ["#", "ID", "LAYER", "READS", "OUTPUT", "PARAMETERS"])
    click.echo(f"{plan['task']}: {plan['params']:,} parameters, about {plan['memory_bytes'] / 2**20:.1f} MiB to train, "
               f"{plan['flops_per_example']:,} multiply-adds per example")
    for warning in plan.get("warnings") or []:
        click.echo(f"warning: {warning['path']}: {warning['message']}", err=True)


def _monitored(spec: dict) -> str:
    stopping = (spec.get("training") or {}).get("early_stopping") or {}
    return stopping.get("monitor") or "val_loss"


def _shown_epochs(shown: int, now: int, most: int = 5) -> list[int]:
    """The epochs since the last line to print a line for: all of them, or where many went by between two polls
    (a job of a second or two), the first, a few evenly in between and the last."""
    new = list(range(max(shown, 0) + 1, now + 1))
    if len(new) <= most:
        return new
    picks = {new[0], new[-1], *(new[round(i * (len(new) - 1) / (most - 1))] for i in range(1, most - 1))}
    return sorted(picks)


def _follow(client: _Client, job: dict) -> dict:
    """Print a line for every new epoch (the monitored metric, elapsed time, ETA) until the job ends; return it."""
    from datetime import datetime, timezone

    monitor, shown, last_step = _monitored(job["spec"]), -1, -1
    while True:
        if job["status"] == "queued" and shown == -1:
            click.echo(f"queued{' at place ' + str(job['queue_position']) if job.get('queue_position') else ''}"
                       f"{': ' + job['waiting_reason'] if job.get('waiting_reason') else ''}", err=True)
            shown = 0
        if job["epoch"] and job["epoch"] > shown and job.get("started_at"):
            series = client.call("GET", f"/api/v1/jobs/{job['id']}/metrics",
                                 params={"names": monitor, "after_step": last_step}).get("series", {}).get(monitor, {})
            if series.get("step"):
                last_step = series["step"][-1]
            epochs = dict(zip(series.get("epoch", []), series.get("value", [])))
            elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(job["started_at"])).total_seconds()
            for epoch in _shown_epochs(shown, job["epoch"]):  # a fast job: its first, some middle and its last
                value = f"  {monitor}={epochs[epoch]:.4f}" if epoch in epochs else ""
                timing = (f"  elapsed {_duration(elapsed)}  ETA "
                          f"{_duration(elapsed / job['epoch'] * (job['max_epochs'] - job['epoch']))}"
                          if epoch == job["epoch"] else "")
                click.echo(f"epoch {epoch:>4}/{job['max_epochs']}{value}{timing}", err=True)
            shown = job["epoch"]
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(1)
        job = client.call("GET", f"/api/v1/jobs/{job['id']}")


@main.command()
@URL
@TOKEN
@click.option("--status", default=None, help="Only these statuses, comma separated (queued,running,...).")
@click.option("--name", default=None, help="Only names containing this.")
@click.option("--project", default=None, help="Only this project's runs.")
@click.option("--filter", "filter_", default=None, metavar="SEARCH",
              help="MLflow's search syntax: \"metrics.test_accuracy > 0.9 and params.optimizer.lr < 0.01 and "
                   "tags.team = 'vision' and attributes.status = 'succeeded'\".")
@click.option("--order-by", default=None, metavar="KEY [ASC|DESC]", help="e.g. \"metrics.val_loss ASC\".")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
def jobs(url: str | None, token: str | None, status: str | None, name: str | None, project: str | None,
         filter_: str | None, order_by: str | None, limit: int) -> None:
    """List jobs, newest first (or --order-by), filtered by status, name, project or a search."""
    given = {"status": status, "name": name, "project": project, "filter": filter_, "order_by": order_by}
    params = {"limit": limit, **{k: v for k, v in given.items() if v}}
    body = _Client(url, token).call("GET", "/api/v1/jobs", params=params)
    _table([[j["id"], j["name"][:40], j["project"], j["status"], f"{j['epoch']}/{j['max_epochs']}",
             f"{j['best_metric']['name']}={j['best_metric']['value']:.4f}" if j.get("best_metric") else "-",
             " ".join(f"{k}={v}" for k, v in (j.get("tags") or {}).items())[:40] or "-",
             j["created_at"][:19].replace("T", " ") + " UTC"] for j in body["jobs"]],
           ["ID", "NAME", "PROJECT", "STATUS", "EPOCH", "BEST", "TAGS", "CREATED"])
    if body["total"] > len(body["jobs"]):
        click.echo(f"({len(body['jobs'])} of {body['total']}; --limit shows more)", err=True)


def _job_id(ctx, param, value: str) -> str:
    import re

    if not re.fullmatch("[0-9a-f]{32}", value):
        raise click.BadParameter(f"{value!r} is not a job id: one is 32 hex digits, as `trainq jobs` lists them")
    return value


def job_command(function):
    """A command about one job: JOB_ID, --url and --token."""
    return main.command()(click.argument("job_id", callback=_job_id)(URL(TOKEN(function))))


@job_command
def status(job_id: str, url: str | None, token: str | None) -> None:
    """Show one job: its state, progress, place in the queue or why it waits, and its final metrics."""
    job = _Client(url, token).call("GET", f"/api/v1/jobs/{job_id}")
    rows = [("id", job["id"]), ("name", job["name"]), ("status", job["status"]),
            ("epoch", f"{job['epoch']}/{job['max_epochs']}"), ("best epoch", job["best_epoch"]),
            ("pool", job["pool"]), ("worker", job["worker"]), ("created", job["created_at"]),
            ("started", job["started_at"]), ("finished", job["finished_at"]), ("stop reason", job["stop_reason"]),
            ("queue place", job.get("queue_position")), ("waiting", job.get("waiting_reason")),
            ("error", job["error"])]
    for key, value in rows:
        if value not in (None, ""):
            click.echo(f"{key:<12} {value}")
    _show_metrics(job.get("metrics") or {})


EVENTS_PAGE = 500


@job_command
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job ends.")
def logs(job_id: str, url: str | None, token: str | None, follow: bool) -> None:
    """Print a job's events: claims, resumes, warnings, errors, its end."""
    client, after = _Client(url, token), 0
    while True:
        while True:  # page after page (500 events each) until one comes back short: a long run's end included
            events = client.call("GET", f"/api/v1/jobs/{job_id}/events", params={"after": after,
                                                                               "limit": EVENTS_PAGE})["events"]
            for event in events:
                click.echo(f"{event['at'][:19].replace('T', ' ')} UTC {event['level']:<7} {event['source']:<8} "
                           f"{event['message']}")
                after = event["id"]
            if len(events) < EVENTS_PAGE:
                break
        if not follow or client.call("GET", f"/api/v1/jobs/{job_id}")["status"] not in ("queued", "running"):
            return
        time.sleep(1)


@job_command
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option("--remove", "-r", multiple=True, metavar="KEY", help="Remove this tag (repeatable).")
def tag(job_id: str, pairs: tuple[str, ...], remove: tuple[str, ...], url: str | None, token: str | None) -> None:
    """Tag a run (trainq tag JOB team=vision stage=baseline), or remove tags (-r KEY); print its tags."""
    from urllib.parse import quote

    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise click.UsageError(f"{bad[0]!r}: write each tag as KEY=VALUE (trainq tag JOB team=vision)")
    client = _Client(url, token)
    tags = client.call("GET", f"/api/v1/jobs/{job_id}")["tags"]
    for pair in pairs:
        key, value = pair.split("=", 1)
        tags = client.call("PUT", f"/api/v1/jobs/{job_id}/tags/{quote(key, safe='')}", json={"value": value})["tags"]
    for key in remove:
        tags = client.call("DELETE", f"/api/v1/jobs/{job_id}/tags/{quote(key, safe='')}")["tags"]
    for key, value in sorted(tags.items()):
        click.echo(f"{key}={value}")


@job_command
@click.argument("text", required=False)
@click.option("--file", "source", type=click.File("r"), default=None, help="Read the note from a file (- for stdin).")
def note(job_id: str, text: str | None, source, url: str | None, token: str | None) -> None:
    """Show a run's note, or set it (markdown): trainq note JOB "why it exists", or --file NOTES.md; "" clears it."""
    client = _Client(url, token)
    if text is None and source is None:
        click.echo(client.call("GET", f"/api/v1/jobs/{job_id}")["note"] or "(no note)")
        return
    written = client.call("PUT", f"/api/v1/jobs/{job_id}/note", json={"note": source.read() if source else text})
    click.echo(f"{job_id}: note {'saved' if written['note'] else 'cleared'} ({len(written['note'])} characters)")


@job_command
def cancel(job_id: str, url: str | None, token: str | None) -> None:
    """Cancel a job: a queued one never starts, a running one stops within a batch."""
    job = _Client(url, token).call("POST", f"/api/v1/jobs/{job_id}/cancel")
    click.echo(f"{job['id']}: {job['status']}{' (stopping)' if job['status'] == 'running' else ''}")


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write checkpoints here.")
@click.option("--pack", "packs", multiple=True, metavar="FIELD=V1,V2,...",
              help="Train one member per value (repeat for a grid of all combinations) as one packed model, e.g. "
                   "--pack optimizer.lr=0.001,0.003 --pack training.seed=0,1,2.")
def train(spec_file: str, device: str | None, out: str | None, packs: tuple[str, ...]) -> None:
    """Train a spec in the foreground with no service: the engine alone (or a pack of its variants)."""
    from trainq.models.spec import SpecError, parse_spec
    from trainq.models.state import Callback

    raw = load_spec_file(spec_file)
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        for error in exc.errors:
            click.echo(f"{error.path}: {error.message}", err=True)
        raise click.ClickException("the spec is not valid")
    if packs:
        return _train_pack(spec, packs, device, out)
    from trainq.models.engine import fit

    class Progress(Callback):
        """A line per epoch, as Keras and Lightning users expect: the metrics, the best so far, elapsed and ETA."""

        def on_train_start(self, state):
            self.first, self.started = state.epoch, time.monotonic()

        def on_epoch_end(self, state):
            shown = " ".join(f"{k}={v:.4f}" for k, v in state.metrics.items() if k != "epoch")
            elapsed = time.monotonic() - self.started
            eta = elapsed / max(1, state.epoch - self.first) * (spec.training.epochs - state.epoch)
            best = (f"  best {state.tracker.monitor}={state.best_score:.4f} @ {state.best_epoch}"
                    if state.best_score is not None else "")
            click.echo(f"epoch {state.epoch:>4}/{spec.training.epochs}  {shown}{best}  elapsed {_duration(elapsed)}"
                       f"  ETA {_duration(eta)}")

    sink = None
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        sink = _checkpoint_writer(folder)

    result = fit(spec, device=device, callbacks=[Progress()], checkpoint_sink=sink)
    click.echo(f"{result.stop_reason} after {result.epochs} epochs (best epoch {result.best_epoch}); "
               f"setup {result.setup_seconds:.2f}s, training {result.train_seconds:.2f}s")
    _show_metrics(result.metrics)


def _checkpoint_writer(folder: Path):
    """Where `trainq train --out` puts checkpoints: latest.safetensors, and best.safetensors when it is the best."""
    def sink(blob: bytes, info: dict) -> None:
        (folder / "latest.safetensors").write_bytes(blob)
        if info["is_best"]:
            (folder / "best.safetensors").write_bytes(blob)
    return sink


def _pack_values(packs: tuple[str, ...], document: dict) -> list[dict[str, object]]:
    """--pack FIELD=V1,V2 options as each member's {field: value}, all combinations in order."""
    import itertools

    from trainq.models.sweep import get_path

    axes = []
    for option in packs:
        field, sep, values = option.partition("=")
        field = field.strip()
        if not sep or not field or not values.strip():
            raise click.ClickException(f"--pack {option!r}: write FIELD=V1,V2,... (e.g. optimizer.lr=0.001,0.01)")
        try:
            get_path(document, field)
        except KeyError:
            raise click.ClickException(f"--pack {field}: the spec has no such field (a dotted path into the spec, "
                                       "e.g. optimizer.lr, training.seed, model.layers[2].p)")
        axes.append([(field, yaml.safe_load(v.strip())) for v in values.split(",") if v.strip()])
    return [dict(combo) for combo in itertools.product(*axes)]


def _train_pack(spec, packs: tuple[str, ...], device: str | None, out: str | None = None) -> None:
    """`trainq train --pack`: every combination of the values as one member of a packed model, trained together.
    With --out, member i's checkpoints go to OUT/member-i/ (latest and best), each one a trial's: `trainq export` and
    a resume read them as they read a run's."""
    from trainq.models.packed import fit_pack
    from trainq.models.packing import PackError
    from trainq.models.spec import SpecError, parse_spec
    from trainq.models.sweep import apply

    document = spec.model_dump(mode="json")
    members = _pack_values(packs, document)
    specs = []
    for i, values in enumerate(members):
        try:
            specs.append(parse_spec(apply(document, values)))
        except SpecError as exc:
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            for error in exc.errors:
                click.echo(f"member {i} ({label}): {error.path}: {error.message}", err=True)
            raise click.ClickException("a member's spec is not valid")
    click.echo(f"packing {len(specs)} members: " + "; ".join(
        f"{i}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for i, values in enumerate(members)))
    started = time.monotonic()

    def progress(pack) -> None:
        live = [pack.members[m] for m in pack.slots if pack.members[m].live]
        monitor = pack.members[0].state.tracker.monitor
        scored = [(m.state.best_score, i) for i, m in enumerate(pack.members) if m.state.best_score is not None]
        best = ""
        if scored:
            score, who = (min if pack.members[0].state.tracker.mode == "min" else max)(scored)
            best = f"  best {monitor}={score:.4f} (member {who})"
        click.echo(f"epoch {pack.epoch:>4}/{spec.training.epochs}  live {len(live)}/{len(pack.members)}{best}"
                   f"  elapsed {_duration(time.monotonic() - started)}")

    try:
        sinks = None
        if out:
            sinks = []
            for i in range(len(specs)):
                folder = Path(out) / f"member-{i}"
                folder.mkdir(parents=True, exist_ok=True)
                sinks.append(_checkpoint_writer(folder))
        trained = fit_pack(specs, device=device, on_epoch=progress, checkpoint_sinks=sinks)
    except PackError as exc:
        raise click.ClickException(f"{exc}")
    names = [k for k in members[0]]
    shown = [k for k in ("test_loss", "test_accuracy", "test_rmse", "test_r2") if any(
        k in (m.result.metrics if m.result else {}) for m in trained)]
    rows = [["member", *names, "stop", "epochs", "best", *shown]]
    for i, (values, member) in enumerate(zip(members, trained)):
        result = member.result
        rows.append([str(i), *(str(values[k]) for k in names), result.stop_reason,
                     str(result.epochs), str(result.best_epoch),
                     *(f"{result.metrics[k]:.4f}" if k in result.metrics else "-" for k in shown)])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for i, member in enumerate(trained):
        if member.failed:
            click.echo(f"member {i} failed: {member.failed}", err=True)
    click.echo(f"{len(trained)} members in {_duration(time.monotonic() - started)}")


@main.command("export")
@click.argument("source")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="Write the ONNX file here.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For a run on an uploaded dataset: its file (CSV or NPZ), to refit the preprocessing.")
@click.option("--target", default=None, help="With a CSV --data: the target column (default: the last one).")
@URL
@TOKEN
def export_command(source: str, onnx_path: str, data: str | None, target: str | None, url: str | None,
                   token: str | None) -> None:
    """Export a model to ONNX, preprocessing inside: raw rows in, answers in the data's units out.

    SOURCE is a checkpoint file (offline: `trainq train --out DIR` writes them, the run page downloads them), a job
    id (its last checkpoint is fetched and exported here), or a registered model (NAME, NAME@ALIAS or
    NAME/versions/N: the file its worker exported and verified). An exported file is checked before it is kept:
    onnxruntime must agree with torch on the run's validation rows at batch sizes 1, 7 and 256."""
    import re

    if Path(source).is_file():
        blob = Path(source).read_bytes()
    elif re.fullmatch("[0-9a-f]{32}", source):
        client = _Client(url, token)
        checkpoints = client.call("GET", f"/api/v1/jobs/{source}/checkpoints")["checkpoints"]
        latest = next((c for c in checkpoints if c["is_latest"]), None)
        if latest is None:
            raise click.ClickException(f"job {source} has no checkpoint yet")
        blob = client.download(latest["download_url"])
    elif source.endswith(".safetensors") or ("/" in source and "/versions/" not in source):
        raise click.UsageError(f"{source}: no such checkpoint file (a job id is 32 hex digits; a model is NAME, "
                               "NAME@ALIAS or NAME/versions/N)")
    else:
        _export_registered(_Client(url, token), _ref(source), onnx_path)
        return
    _export_checkpoint(blob, source, onnx_path, data, target)


def _export_registered(client: "_Client", ref: str, onnx_path: str) -> None:
    version = _version(client, ref)
    if version["state"] != "ready":
        raise click.ClickException(f"{ref} is version {version['version']}, {version['state']}"
                                   + (f": {version['error']}" if version.get("error") else ""))
    blob = client.download(f"/api/v1/models/{version['model']}/versions/{version['version']}/onnx")
    Path(onnx_path).write_bytes(blob)
    click.echo(f"wrote {onnx_path} ({version['model']} version {version['version']}, verified by its worker): "
               f"input x {version['inputs'][0]['shape']} float32, outputs "
               + ", ".join(o["name"] for o in version["outputs"]))


def _export_checkpoint(blob: bytes, checkpoint: str, onnx_path: str, data: str | None, target: str | None) -> None:
    """Export a run's checkpoint here, with torch."""
    from trainq.models.checkpoint import read_meta
    from trainq.models.export import ExportError, export_onnx, state_from_checkpoint
    from trainq.models.spec import DatasetInfo, JobSpec

    try:
        meta = read_meta(blob)
    except ValueError as exc:
        raise click.ClickException(f"{checkpoint}: {exc}")
    spec = JobSpec.model_validate(meta["spec"])
    arrays = uploaded = None
    if spec.dataset.name == "upload":
        if data is None:
            raise click.UsageError(f"the run trained on the uploaded dataset {spec.dataset.upload!r}: give its file "
                                   "with --data, so its preprocessing can be fitted again")
        arrays, uploaded = _local_upload(spec, Path(data), target)
    state = state_from_checkpoint(blob, arrays, uploaded)
    try:
        done = export_onnx(state, onnx_path, arrays)
    except ExportError as exc:
        Path(onnx_path).unlink(missing_ok=True)
        raise click.ClickException(str(exc))
    shown = (f"input x {done.inputs['x']['shape']} float32 (raw features)" if "x" in done.inputs else
             f"inputs {', '.join(done.inputs)} (raw columns)")
    click.echo(f"wrote {done.path} (epoch {meta['epoch']} of {spec.name!r}): {shown}, outputs {', '.join(done.outputs)}")
    click.echo("checked against torch: " + ", ".join(f"batch {n}: max |diff| {d:.2g}" for n, d in done.checked.items()))


def _local_upload(spec, path: Path, target: str | None):
    """A local copy of an uploaded dataset, read as the worker reads it: (data for the engine, Uploaded)."""
    from trainq.data.archive import Limits
    from trainq.models.spec import Uploaded, split_ref
    from trainq.service.uploads import UploadError, discard, examine, receive
    from trainq.settings import Settings
    from trainq.workers.data import source

    settings = Settings()
    with open(path, "rb") as f:
        received = receive(f, settings.data_dir / "tmp")
    found = None
    try:
        found = examine(received.path, target=target, task=None, max_rows=0, limits=Limits(),
                        max_pixels=settings.max_image_pixels)
        name, version = split_ref(spec.dataset.upload)
        uploaded = Uploaded(name, version or 1, found.kind, found.rows, found.classes,
                            tuple(found.class_names) if found.class_names else None,
                            tuple(found.shape) if found.kind == "arrays" else None, found.profile, received.sha256)
        spec.dataset.resolve(uploaded)
        return source(spec.dataset, found.stored, settings), uploaded
    except UploadError as exc:
        raise click.ClickException(f"{path}: {exc}")
    finally:
        discard(received.path, found.stored if found is not None else None)


def _ref(text: str) -> str:
    """A model reference, checked before it goes into a URL."""
    from trainq.service.registry import RegistryError, parse_ref

    try:
        return str(parse_ref(text))
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None


def _version(client: "_Client", ref: str) -> dict:
    """A registered version by reference: NAME (its newest ready version), NAME@ALIAS or NAME/versions/N."""
    found = client.call("GET", f"/api/v1/models/{_ref(ref)}")
    if "versions" not in found:
        return found
    ready = [v for v in found["versions"] if v["state"] == "ready"]
    if not found["versions"]:
        raise click.ClickException(f"model {ref} has no versions")
    return (ready or found["versions"])[0]


@main.group()
def model() -> None:
    """The model registry: register a job's model, list, show, point aliases (champion, challenger, ...)."""


@model.command("list")
@URL
@TOKEN
def model_list(url: str | None, token: str | None) -> None:
    """Your models: versions, the newest ready one, aliases."""
    models = _Client(url, token).call("GET", "/api/v1/models")["models"]
    if not models:
        click.echo("no models yet: `trainq model register NAME JOB_ID` registers a succeeded job's model", err=True)
        return
    _table([[m["name"], m["versions"], m["newest_ready"] or "-",
             " ".join(f"{a}->{v}" for a, v in m["aliases"].items()) or "-"] for m in models],
           ["NAME", "VERSIONS", "NEWEST READY", "ALIASES"])


@model.command("register")
@click.argument("name")
@click.argument("job_id", callback=_job_id)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until a worker has exported it.")
@click.option("--checkpoint", type=click.Choice(["best", "latest"]), default=None,
              help="For a run that was cancelled, failed or pruned: which of its checkpoints to register.")
@URL
@TOKEN
def model_register(name: str, job_id: str, wait: bool, checkpoint: str | None, url: str | None,
                   token: str | None) -> None:
    """Register JOB_ID's trained model as the next version of NAME; a worker exports and verifies it."""
    client = _Client(url, token)
    version = client.call("POST", "/api/v1/models", json={"name": name, "job_id": job_id,
                                                          **({"checkpoint": checkpoint} if checkpoint else {})})
    ref = f"{version['model']}/versions/{version['version']}"
    click.echo(f"registered {ref}: {version['state']}", err=True)
    deadline = time.monotonic() + 600
    while wait and version["state"] in ("exporting", "verifying") and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.call("GET", f"/api/v1/models/{ref}")
    if version["state"] == "failed":
        raise click.ClickException(f"{ref} failed: {version['error']}")
    click.echo(f"{ref} {version['state']}")


@model.command("show")
@click.argument("ref")
@URL
@TOKEN
def model_show(ref: str, url: str | None, token: str | None) -> None:
    """A model's versions side by side (NAME), or one version (NAME@ALIAS, NAME/versions/N)."""
    found = _Client(url, token).call("GET", f"/api/v1/models/{_ref(ref)}")
    versions = found.get("versions", [found])
    metrics = sorted({k for v in versions for k, value in v["metrics"].items()
                      if k.startswith("test_") and isinstance(value, (int, float))})[:4]
    _table([[v["version"], v["state"], " ".join(v["aliases"]) or "-", v["task"] or "-",
             *[f"{v['metrics'][k]:.4f}" if isinstance(v["metrics"].get(k), (int, float)) else "-" for k in metrics],
             (v["job_id"] or "-")[:12], v["created_at"][:19].replace("T", " ")] for v in versions],
           ["VERSION", "STATE", "ALIASES", "TASK", *[k.upper() for k in metrics], "JOB", "CREATED"])
    for v in versions:
        if v["state"] == "failed":
            click.echo(f"version {v['version']} failed: {v['error']}", err=True)
    if "versions" not in found and found["state"] == "ready":
        click.echo(f"input x {found['inputs'][0]['shape']}"
                   + (f": {', '.join(found['features'])}" if found["features"] else "")
                   + f"; outputs {', '.join(o['name'] for o in found['outputs'])}"
                   + (f"; classes {', '.join(found['class_names'])}" if found["class_names"] else ""))


@model.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@URL
@TOKEN
def model_alias(name: str, alias: str, version: int, url: str | None, token: str | None) -> None:
    """Point ALIAS of model NAME at VERSION (moved atomically; the move is audited)."""
    moved = _Client(url, token).call("PUT", f"/api/v1/models/{name}/aliases/{alias}", json={"version": version})
    was = f" (was {moved['previous']})" if moved["previous"] else ""
    click.echo(f"{name}@{alias} -> version {moved['version']}{was}")


@main.group()
def sweep() -> None:
    """Hyperparameter sweeps: submit one (and watch its trials end), list, show, the best trial, cancel."""


def _sweep_id(ctx, param, value: str) -> str:
    import re

    if not re.fullmatch("[0-9a-f]{32}", value):
        raise click.BadParameter(f"{value!r} is not a sweep id (32 hex digits; `trainq sweep list` shows them)")
    return value


def _trial_line(t: dict, metric: str) -> str:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
    value = f"{metric}={t['value']:.4f}" if t["value"] is not None else f"{metric}=-"
    return f"trial {t['trial']:>3} {t['status']:<9} {value}  epochs {t['epochs']}  {params}"


def _show_best(s: dict) -> None:
    best, top = s.get("best"), s.get("highest_reached")
    if best:
        click.echo(f"best completed: trial {best['trial']} ({best['job_id']}) {s['metric']}={best['value']:.4f}: "
                   + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
    else:
        click.echo("no trial completed", err=True)
    if top and (not best or top["job_id"] != best["job_id"]):
        click.echo(f"{'highest' if s['direction'] == 'maximize' else 'lowest'} reached: trial {top['trial']} "
                   f"({top['status']}) {s['metric']}={top['value']:.4f} at epoch {top['epoch']}")


@sweep.command("submit")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait", is_flag=True, help="Print each trial as it ends, then the best.")
@URL
@TOKEN
def sweep_submit(spec_file: str, wait: bool, url: str | None, token: str | None) -> None:
    """Submit a sweep (YAML or JSON: base, search, method, trials, metric, pruner); print its id."""
    client = _Client(url, token)
    s = client.call("POST", "/api/v1/sweeps", json=load_spec_file(spec_file))
    click.echo(s["id"])
    if not wait:
        return
    told: set[int] = set()
    while True:
        for t in s["trials"]:
            if t["status"] not in ("queued", "running") and t["trial"] not in told:
                click.echo(_trial_line(t, s["metric"]), err=True)
                told.add(t["trial"])
        if s["status"] != "running":
            break
        time.sleep(1)
        s = client.call("GET", f"/api/v1/sweeps/{s['id']}")
    click.echo(f"sweep {s['status']}: {len(told)} trials, {s['budget']['epochs_spent']} of "
               f"{s['budget']['epochs_full_search']} epochs of a full search")
    _show_best(s)


@sweep.command("list")
@URL
@TOKEN
def sweep_list(url: str | None, token: str | None) -> None:
    """Your sweeps, newest first."""
    found = _Client(url, token).call("GET", "/api/v1/sweeps")["sweeps"]
    if not found:
        click.echo("no sweeps yet: `trainq sweep submit FILE` starts one", err=True)
        return
    _table([[s["id"], s["name"][:40], s["status"], f"{s['trials_launched']}/{s['trials_total']}",
             f"{s['best_value']:.4f}" if s["best_value"] is not None else "-",
             s["created_at"][:19].replace("T", " ")] for s in found],
           ["ID", "NAME", "STATUS", "TRIALS", "BEST", "CREATED"])


@sweep.command("show")
@click.argument("sweep_id", callback=_sweep_id)
@URL
@TOKEN
def sweep_show(sweep_id: str, url: str | None, token: str | None) -> None:
    """A sweep's trials: parameters, status, metric, epochs; then its best."""
    s = _Client(url, token).call("GET", f"/api/v1/sweeps/{sweep_id}")
    click.echo(f"{s['name']}: {s['status']}, {s['method']} on {s['metric']} ({s['direction']}), pruner "
               f"{s['pruner']}, {s['trials_launched']}/{s['trials_total']} trials")
    params = list(s["search"])
    _table([[t["trial"], t["status"], *[t["params"].get(p) for p in params],
             f"{t['value']:.4f}" if t["value"] is not None else "-", t["epochs"]] for t in s["trials"]],
           ["TRIAL", "STATUS", *[p.upper() for p in params], s["metric"].upper(), "EPOCHS"])
    _show_best(s)


@sweep.command("best")
@click.argument("sweep_id", callback=_sweep_id)
@URL
@TOKEN
def sweep_best(sweep_id: str, url: str | None, token: str | None) -> None:
    """The best completed trial: its job id (on stdout, for a script), value and parameters."""
    s = _Client(url, token).call("GET", f"/api/v1/sweeps/{sweep_id}")
    if not s.get("best"):
        raise click.ClickException(f"sweep {sweep_id} has no completed trial yet ({s['status']})")
    click.echo(s["best"]["job_id"])
    _show_best(s)


@sweep.command("cancel")
@click.argument("sweep_id", callback=_sweep_id)
@URL
@TOKEN
def sweep_cancel(sweep_id: str, url: str | None, token: str | None) -> None:
    """Cancel a sweep and its queued and running trials."""
    s = _Client(url, token).call("POST", f"/api/v1/sweeps/{sweep_id}/cancel")
    click.echo(f"{sweep_id}: {s['status']}")


@main.group()
def dataset() -> None:
    """Uploaded datasets: upload a file of any size as the next version of a name, list, show, delete."""


SMALL_UPLOAD = 8 * 2**20  # a file up to this size goes up in one request; a larger one in parts


@dataset.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The dataset's name; each upload is its next version.")
@click.option("--target", default=None, help="A table's column to predict (default: the last one).")
@click.option("--task", type=click.Choice(["classification", "regression"]), default=None,
              help="Default: read from the target's values.")
@URL
@TOKEN
def dataset_upload(path: Path, name: str, target: str | None, task: str | None, url: str | None,
                   token: str | None) -> None:
    """Upload PATH (CSV, TSV, Parquet, JSON Lines, NPZ, or a zip/tar of class folders of images) as the next version
    of NAME. A large file goes up in parts, straight into the object store where the service uses one, so neither
    end holds more than a part in memory."""
    from trainq.service.series import filesize

    client = _Client(url, token)
    params = {"name": name, **({"target": target} if target else {}), **({"task": task} if task else {})}
    size = path.stat().st_size
    started = time.monotonic()
    found = None
    if size <= SMALL_UPLOAD:
        with open(path, "rb") as f:
            answer = client.request("POST", "/api/v1/datasets", params=params, data=f,
                                    headers={"Content-Type": "application/octet-stream"}, timeout=600)
        if answer.status_code != 413:  # larger than this service takes in one request: in parts, then
            found = client.checked(answer)
    if found is None:
        found = _upload_in_parts(client, path, params, size)
    _show_dataset(found)
    click.echo(f"{'already there as' if found.get('existing') else 'uploaded'} {found['ref']} "
               f"({filesize(size)} in {_duration(time.monotonic() - started)})", err=True)


def _upload_in_parts(client: "_Client", path: Path, params: dict, size: int) -> dict:
    import requests

    up = client.call("POST", "/api/v1/datasets/uploads", params=params)
    base = f"/api/v1/datasets/uploads/{up['id']}"
    count = -(-size // up["part_bytes"])
    if count > up["max_parts"]:
        raise click.ClickException(f"{path} would take {count} parts of {up['part_bytes'] // 2**20} MiB, more than "
                                   f"{up['max_parts']}")
    try:
        with open(path, "rb") as f:
            for number in range(1, count + 1):
                part = f.read(up["part_bytes"])
                if up["direct"]:  # straight into the object store
                    target = client.call("POST", f"{base}/parts/{number}/url")["url"]
                    answer = requests.put(target, data=part, timeout=600)
                    if not answer.ok:
                        raise click.ClickException(f"the object store refused part {number}: HTTP "
                                                   f"{answer.status_code} {answer.text[:200]}")
                else:
                    client.call("PUT", f"{base}/parts/{number}", data=part,
                                headers={"Content-Type": "application/octet-stream"})
                click.echo(f"\rpart {number}/{count} sent", nl=number == count, err=True)
        return client.call("POST", f"{base}/complete", timeout=3600)
    except BaseException:
        try:
            client.http.delete(client.base + base, timeout=30)
        except requests.RequestException:
            pass
        raise


def _show_dataset(d: dict) -> None:
    """A version's profile, as a user reads it before training on it."""
    p = d.get("profile") or {}
    click.echo(f"{d['ref']}: {d['kind']} ({d['source']}), {d['rows']:,} rows, {d['task']}"
               + (f" of {d['target']!r}" if d.get("target") else ""))
    if d["kind"] == "table":
        _table([[c["name"] + (" (target)" if c["name"] == d.get("target") else ""), c["type"], c["missing"],
                 f"{c['distinct']}{'+' if c['many_values'] else ''}", ", ".join(map(str, c["examples"][:3])),
                 c.get("note", "")] for c in p.get("columns", [])],
               ["COLUMN", "TYPE", "MISSING", "DISTINCT", "VALUES", "NOTE"])
    if d["kind"] == "images":
        click.echo(f"sizes: {', '.join(f'{k} ({v})' for k, v in p['sizes'].items())}; {p['channels']['colour']} in "
                   f"colour, {p['channels']['grey']} grey; {p['unreadable_count']} files left out")
        for u in p["unreadable"][:5]:
            click.echo(f"  left out {u['file']}: {u['reason']}")
    classes = (p.get("target") or {}).get("classes")
    if classes:
        click.echo("classes: " + ", ".join(f"{k} ({v})" for k, v in list(classes.items())[:20])
                   + (" ..." if len(classes) > 20 else ""))
    for note in p.get("notes", []):
        click.echo(f"note: {note}")


@dataset.command("list")
@click.option("--name", default=None, help="Only the versions of this name.")
@URL
@TOKEN
def dataset_list(name: str | None, url: str | None, token: str | None) -> None:
    """Your datasets, every version, the latest first."""
    from trainq.service.series import filesize

    found = _Client(url, token).call("GET", "/api/v1/datasets", params={"name": name} if name else None)["datasets"]
    if not found:
        click.echo("no datasets yet: `trainq dataset upload FILE --name NAME` uploads one", err=True)
        return
    _table([[d["name"], d["version"], d["kind"], d["source"], f"{d['rows']:,}", d["task"], d.get("target") or "-",
             filesize(d["size"]), d["created_at"][:19].replace("T", " ")] for d in found],
           ["NAME", "VERSION", "KIND", "FORMAT", "ROWS", "TASK", "TARGET", "SIZE", "UPLOADED"])


@dataset.command("show")
@click.argument("ref")
@URL
@TOKEN
def dataset_show(ref: str, url: str | None, token: str | None) -> None:
    """One version (NAME for the latest, NAME@VERSION): its profile, and the runs and models trained on it."""
    found = _Client(url, token).call("GET", f"/api/v1/datasets/{ref}")
    _show_dataset(found)
    click.echo(f"sha256 {found['sha256']}")
    for j in found["used_by"]["jobs"]:
        click.echo(f"used by run {j['id']} ({j['name']}, {j['status']})")
    for m in found["used_by"]["models"]:
        click.echo(f"used by model {m['model']} version {m['version']}")


@dataset.command("delete")
@click.argument("ref")
@URL
@TOKEN
def dataset_delete(ref: str, url: str | None, token: str | None) -> None:
    """Delete one version (NAME@VERSION); refused while a run or a model names it."""
    client = _Client(url, token)
    answer = client.request("DELETE", f"/api/v1/datasets/{ref}")
    if answer.status_code != 204:
        client.checked(answer)
    click.echo(f"deleted {ref}", err=True)


PREDICT_CHUNK = 5000  # rows a request


@main.command()
@click.argument("ref")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the predictions here (CSV).")
@click.option("--batch", is_flag=True, help="Score the file on a worker (a batch): for large files; rows that do "
                                            "not fit are reported by line number and the rest scored.")
@URL
@TOKEN
def predict(ref: str, csv_file: str, out: str | None, batch: bool, url: str | None, token: str | None) -> None:
    """Predict with a registered model (NAME, NAME@ALIAS, NAME/versions/N) from a CSV whose header names the
    model's features (other columns, a label column say, are carried through). Writes the rows with the answers."""
    import csv

    client = _Client(url, token)
    version = _version(client, ref)
    if batch:
        _batch(client, version, Path(csv_file), out)
        return
    features = version.get("features") or []
    if version["state"] != "ready":
        raise click.ClickException(f"{ref} is version {version['version']}, {version['state']}")
    target = f"/api/v1/models/{version['model']}/versions/{version['version']}/predict"
    if version.get("image"):  # a model of uploaded images: the file itself, decoded by the service as in training
        blob = Path(csv_file).read_bytes()
        kind = "image/png" if blob[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg" if blob[:2] == b"\xff\xd8" else None
        if kind is None:
            raise click.ClickException(f"{csv_file} is not a PNG or JPEG image; {ref} takes image files")
        for p in client.call("POST", target, data=blob, headers={"Content-Type": kind})["predictions"]:
            top = sorted(p.get("probabilities", {}).items(), key=lambda kv: -kv[1])[:3]
            click.echo(f"{p['label']}  " + "  ".join(f"{k} {v:.3f}" for k, v in top))
        return
    if not features:
        raise click.ClickException(f"{ref} takes images, not named columns; use POST /v2/models/{ref}/infer")
    with open(csv_file, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [f for f in features if f not in (reader.fieldnames or [])]
        if missing:
            raise click.ClickException(f"{csv_file} has no column {_some(missing)}; the model's features are "
                                       f"{_some(features)} (its first line must name them)")
        rows = list(reader)
    kinds = {c["name"]: c["kind"] for c in version.get("columns") or []}  # a table's model: raw values by column
    records = []
    for number, row in enumerate(rows, start=2):
        record = {}
        for f in features:
            text = row[f]
            if kinds.get(f) == "category":
                record[f] = text if text != "" else None
            elif _is_number(text) and math.isfinite(float(text)):
                record[f] = float(text)
            elif kinds and (text.strip() == "" or _is_number(text)):
                record[f] = None  # a missing number (empty, NaN): the model fills it as in training
            else:
                raise click.ClickException(f"{csv_file} line {number}, column {f}: {text!r} is not a (finite) "
                                           "number")
        records.append(record)
    answers = []
    for start in range(0, len(records), PREDICT_CHUNK):
        answers += client.call("POST", target, json={"records": records[start:start + PREDICT_CHUNK]})["predictions"]
    columns = _answer_columns(answers[0]) if answers else []
    handle = open(out, "w", newline="") if out else sys.stdout
    writer = csv.writer(handle)
    writer.writerow(list(rows[0].keys()) + columns if rows else columns)
    for row, answer in zip(rows, answers):
        flat = {**answer, **{f"p_{k}": v for k, v in answer.get("probabilities", {}).items()}}
        writer.writerow(list(row.values()) + [flat.get(c) for c in columns])
    if out:
        handle.close()
        click.echo(f"wrote {len(answers)} predictions of {version['model']} version {version['version']} to {out}",
                   err=True)


def _batch(client: "_Client", version: dict, path: Path, out: str | None) -> None:
    name = version["model"]
    started = client.call("POST", f"/api/v1/models/{name}/versions/{version['version']}/batch",
                          data=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    while started["status"] in ("queued", "running"):
        time.sleep(0.5)
        started = client.call("GET", f"/api/v1/models/{name}/batches/{started['id']}")
        if started["rows"]:
            click.echo(f"\rscored {started['done']:,} of {started['rows']:,} rows", nl=False, err=True)
    click.echo("", err=True)
    for problem in started["problems"][:20]:
        click.echo(f"{path.name} line {problem['row']}: {problem['message']}", err=True)
    if started["bad_rows"] > 20:
        click.echo(f"... {started['bad_rows'] - 20} more rows left out", err=True)
    if started["status"] == "failed":
        raise click.ClickException(f"the batch failed: {started['error']}")
    blob = client.download(started["output_url"])
    if out:
        Path(out).write_bytes(blob)
        click.echo(f"wrote {started['done'] - started['bad_rows']:,} predictions to {out}", err=True)
    else:
        sys.stdout.write(blob.decode())


def _some(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _answer_columns(answer: dict) -> list[str]:
    if "label" in answer:
        return ["label"] + [f"p_{k}" for k in answer.get("probabilities", {})]
    return ["value"] + (["variance"] if "variance" in answer else [])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


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
