"""The embedded default: `trainq up` on SQLite and the filesystem broker, no PostgreSQL, no Redis."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.stack import Stack, free_port
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
    assert f"sign in as 'admin' with this API token" in log and token in log
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
