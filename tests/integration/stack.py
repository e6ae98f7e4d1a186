"""Start real service and worker processes for a test, and stop them after; logs go to files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

TERMINAL = ("succeeded", "failed", "cancelled")
ADMIN_TOKEN = "tq_integration-admin-token-0123456789abcdef"


def wait_until(check, timeout: float = 30.0, what: str = "condition"):
    """Poll `check` until it returns something true, and return that; TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not met in {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A service and its workers as subprocesses, with the environment every process reads settings from."""

    def __init__(self, folder: Path, **env: str):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINQ_")}
        self.env.update({"TRAINQ_DATA_DIR": str(folder / "data"), "TRAINQ_PORT": str(self.port),
                         "TRAINQ_SERVICE_URL": self.url, "TRAINQ_WORKER_TOKEN": "integration-token",
                         "TRAINQ_HEARTBEAT_SECONDS": "0.5", "TRAINQ_METRICS_FLUSH_SECONDS": "0.25",
                         "TRAINQ_RECONCILE_SECONDS": "1", "TRAINQ_ADMIN_TOKEN": ADMIN_TOKEN,
                         "PYTHONUNBUFFERED": "1", **env})
        self.procs: dict[str, subprocess.Popen] = {}
        self.cwd: Path | None = None  # where the processes start; `python -m` puts this folder first on sys.path
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        # A read sent on a keep-alive connection the server is closing at that moment fails with no response;
        # reads are safe to send again (writes are not retried here).
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.http.mount("http://", HTTPAdapter(max_retries=Retry(total=3, connect=3, read=3, status=0,
                                                                 backoff_factor=0.05,
                                                                 allowed_methods=frozenset({"GET", "HEAD"}))))

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A trainq command as a process; `env` adds to the stack's environment for this process alone."""
        log = open(self.folder / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "trainq.cli", *args], env={**self.env, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd)
        self.procs[name] = proc
        return proc

    def serve(self, env: dict[str, str] | None = None) -> "Stack":
        self.start("service", "serve", env=env)
        self.wait_healthy()
        return self

    def worker(self, name: str = "worker", pool: str = "cpu", env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self.start(name, "worker", "--pool", pool, "--name", f"{name}@test", env=env)
        self.wait_for_log(name, "ready.")
        return proc

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not healthy:\n{self.logs()}")

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (self.folder / f"{name}.log").read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.2)
        raise TimeoutError(f"{name} never logged {text!r}:\n{self.logs()}")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        """Stop the workers (all at once), then the services: a worker stopping tells the service, and with the
        service gone first it retried for seconds (a stack's teardown took 4.5 s, 2.4 s this way)."""
        workers = [(name, self.procs.pop(name)) for name in list(self.procs) if not name.startswith("service")]
        for _, proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in list(self.procs):
            self.stop(name)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.folder.glob("*.log")))

    # -- the API ------------------------------------------------------------------------------------------------------

    def submit(self, spec: dict) -> str:
        answer = self.http.post(f"{self.url}/api/v1/jobs", json=spec, timeout=10)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"{self.url}/api/v1/jobs/{job_id}", timeout=10).json()

    def get(self, path: str) -> dict:
        return self.http.get(f"{self.url}{path}", timeout=10).json()

    def wait(self, job_id: str, until=lambda job: job["status"] in TERMINAL, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} stuck at {self.job(job_id)}:\n{self.logs()}")

    def start_sweep(self, body: dict) -> str:
        answer = self.http.post(f"{self.url}/api/v1/sweeps", json=body, timeout=30)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def sweep_done(self, sweep_id: str, timeout: float = 240) -> dict:
        """The sweep once it is no longer running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.get(f"/api/v1/sweeps/{sweep_id}")
            if state["status"] != "running":
                return state
            time.sleep(0.3)
        raise TimeoutError(f"sweep {sweep_id} still running: {self.get(f'/api/v1/sweeps/{sweep_id}')}\n{self.logs()}")

    def user_token(self, name: str) -> str:
        """A user of the service (role user) and an API token of theirs, made with the CLI as an operator would."""
        run = lambda *args: subprocess.run([sys.executable, "-m", "trainq.cli", *args], env=self.env,  # noqa: E731
                                           capture_output=True, text=True, check=True, cwd=self.cwd)
        run("user", "add", name)
        return run("token", "create", name).stdout.strip()
