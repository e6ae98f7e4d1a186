"""The embedded default: `trainq up` on SQLite and the filesystem broker, no PostgreSQL, no Redis."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.gpus import fake_nvidia_smi
from tests.integration.stack import Stack, free_port, wait_until
from tests.specs import mlp, xor

pytestmark = pytest.mark.integration


@pytest.fixture()
def embedded(tmp_path):
    port = free_port()
    s = Stack(tmp_path)
    s.port, s.url = port, f"http://127.0.0.1:{port}"
    # no database, broker or worker token: `up` must make its own
    for key in ("TRAINQ_PORT", "TRAINQ_SERVICE_URL", "TRAINQ_WORKER_TOKEN", "TRAINQ_ADMIN_TOKEN"):
        s.env.pop(key)
    # a machine whose nvidia-smi lists one GPU: `up` looks for GPUs by default
    s.env["PATH"] = f"{fake_nvidia_smi(tmp_path / 'bin', 1)}{os.pathsep}{s.env['PATH']}"
    s.start("up", "up", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    try:
        s.wait_for_log("up", "trainq is up", timeout=90)
        s.wait_for_log("up", "ready.", timeout=90)  # the local worker
        s.http.headers["Authorization"] = "Bearer " + (tmp_path / "data" / "admin_token").read_text().strip()
        yield s
    finally:
        s.close()


def test_up_trains_jobs_on_sqlite_and_the_filesystem_broker(embedded, tmp_path):
    data = tmp_path / "data"
    assert (data / "trainq.db").is_file() and (data / "broker" / "queue").is_dir()
    assert len((data / "worker_token").read_text().strip()) >= 32
    log = (tmp_path / "up.log").read_text()
    assert f"dashboard and API at {embedded.url}/" in log
    token = (data / "admin_token").read_text().strip()
    assert "sign in as 'admin' with this API token" in log and token in log
    # the command it suggests works from the folder `up` was started in (.venv/bin/trainq after make up)
    import re
    import shutil
    import subprocess

    command = re.search(r"submit a job:  (\S+) submit ", log)[1]
    assert command == "trainq" and shutil.which("trainq") or (Path.cwd() / command).is_file(), command
    assert subprocess.run([command if command == "trainq" else str(Path.cwd() / command), "--help"],
                          capture_output=True).returncode == 0
    assert "--data-binary @examples/digits-mlp.yaml" in log and "Content-Type: application/yaml" in log
    import torch

    if torch.backends.cuda.is_built():  # not on the CPU-only machines the suite is built for
        assert "GPU workers in pool 'gpu' (cuda:0" in log
    else:  # the GPU is listed, but this torch could not use it: no GPU worker, and the user is told why
        assert "nvidia-smi lists 1 GPU(s), but this torch" in log and "no GPU worker started" in log
        registered = wait_until(lambda: embedded.get("/api/v1/workers")["workers"], what="the worker registers")
        assert [(w["pool"], w["kind"]) for w in registered] == [("cpu", "cpu")]
    import requests

    assert requests.get(f"{embedded.url}/api/v1/jobs", timeout=5).status_code == 401  # secure by default

    first, second = embedded.submit(xor()), embedded.submit(mlp(epochs=3))
    assert embedded.wait(first)["metrics"]["test_accuracy"] == 1.0
    job = embedded.wait(second)
    assert job["status"] == "succeeded" and job["epoch"] == 3
    checkpoints = embedded.get(f"/api/v1/jobs/{second}/checkpoints")["checkpoints"]
    assert checkpoints and all((data / "storage" / "checkpoints" / second / f"{c['id']}.safetensors").is_file()
                               for c in checkpoints)


def test_up_stops_its_children_on_sigterm(embedded):
    up = embedded.procs["up"]
    os.kill(up.pid, signal.SIGTERM)
    up.wait(timeout=40)
    time.sleep(0.5)
    import requests

    with pytest.raises(requests.ConnectionError):
        requests.get(f"{embedded.url}/api/v1/health", timeout=2)
