"""The compose file is valid for docker-compose and names every part the README promises."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_has_the_parts_and_health_checks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "service", "worker-cpu", "worker-gpu"}
    for name in ("postgres", "redis", "service"):
        assert services[name]["healthcheck"]["test"]
    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # torch's CUDA build: PyPI's Linux wheel by default (the CPU-only index is the Dockerfile's default)
    assert gpu["build"]["args"]["TORCH_INDEX"] == "${TRAINQ_TORCH_INDEX:-https://pypi.org/simple}"
    assert gpu["command"][-2:] == ["--gpus", "0"]  # registers as a GPU worker, so GPU jobs route to it
    assert services["worker-cpu"]["command"] == ["trainq", "worker", "--pool", "cpu"]
    assert "TRAINQ_DATABASE_URL" in services["service"]["environment"]
    for worker in ("worker-cpu", "worker-gpu"):  # workers hold no database credentials
        assert set(services[worker]["environment"]) == {"TRAINQ_BROKER_URL", "TRAINQ_SERVICE_URL",
                                                         "TRAINQ_WORKER_TOKEN"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_validates_the_file():
    env = {**os.environ, "TRAINQ_WORKER_TOKEN": "x" * 32}
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resolved = subprocess.run(["docker-compose", "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    gpu_args = yaml.safe_load(resolved.stdout)["services"]["worker-gpu"]["build"]["args"]
    assert gpu_args["TORCH_INDEX"] == "https://pypi.org/simple"
