"""How the command line finds GPUs for its workers: asked of nvidia-smi (a stand-in script on PATH here, a real
process), never of CUDA, and refused where torch has no CUDA build."""

from __future__ import annotations

import os

import click
import pytest
import torch
from click.testing import CliRunner

from tests.gpus import fake_nvidia_smi
from trainq.cli import _cuda_build_missing, _local_gpus, main


@pytest.fixture()
def nvidia_smi(tmp_path, monkeypatch):
    """Put an nvidia-smi on PATH that lists `count` GPUs' indices and exits with `status`."""
    def install(count: int, status: int = 0) -> None:
        folder = fake_nvidia_smi(tmp_path, count, status)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return install


def test_auto_takes_every_gpu_nvidia_smi_lists(nvidia_smi, tmp_path):
    nvidia_smi(2)
    assert _local_gpus("auto") == ["0", "1"]
    assert (tmp_path / "calls").read_text().split() == ["--query-gpu=index", "--format=csv,noheader"]


def test_auto_finds_none_without_nvidia_smi_or_when_it_fails(nvidia_smi, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _local_gpus("auto") == []
    nvidia_smi(1, status=9)  # no driver loaded, say
    assert _local_gpus("auto") == []


def test_explicit_indices_and_none_ask_nothing(nvidia_smi, tmp_path):
    nvidia_smi(1)
    assert _local_gpus("2, 3") == ["2", "3"]
    assert _local_gpus("none") == []
    assert not (tmp_path / "calls").exists()
    with pytest.raises(click.BadParameter, match="GPU indices such as 0,1"):
        _local_gpus("0,first")


def test_gpu_workers_are_refused_where_torch_has_no_cuda_build(nvidia_smi, monkeypatch):
    nvidia_smi(1)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    assert _cuda_build_missing() is None
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # as on this CPU-only machine
    missing = _cuda_build_missing()
    assert "built without CUDA" in missing and torch.__version__ in missing
    runner = CliRunner()
    answer = runner.invoke(main, ["worker", "--pool", "gpu", "--gpus", "auto"])
    assert answer.exit_code == 2 and "--gpus auto: this torch" in answer.output
    assert "built without CUDA" in answer.output
    answer = runner.invoke(main, ["worker", "--pool", "gpu", "--gpus", "none"])
    assert answer.exit_code == 2 and "--gpus none: no GPU to start a worker for" in answer.output
    answer = runner.invoke(main, ["up", "--gpus", "0"])  # asked for by name: refused before anything starts
    assert answer.exit_code == 2 and "--gpus 0: this torch" in answer.output


def test_the_command_line_finds_the_service_on_the_port_it_was_started_on(monkeypatch):
    """TRAINQ_PORT=8765 trainq up, then trainq submit in the same shell: the client goes to 8765, unless
    TRAINQ_SERVICE_URL names another place."""
    from trainq.settings import Settings

    monkeypatch.delenv("TRAINQ_SERVICE_URL", raising=False)
    monkeypatch.setenv("TRAINQ_PORT", "8765")
    assert Settings().service_url == "http://127.0.0.1:8765"
    monkeypatch.setenv("TRAINQ_SERVICE_URL", "http://trainq.internal:80")
    assert Settings().service_url == "http://trainq.internal:80"
    monkeypatch.delenv("TRAINQ_PORT")
    monkeypatch.delenv("TRAINQ_SERVICE_URL")
    assert Settings().service_url == "http://127.0.0.1:8000"


def test_a_fast_jobs_epochs_are_shown_first_some_middle_and_last():
    from trainq.cli import _shown_epochs

    assert _shown_epochs(-1, 3) == [1, 2, 3]
    assert _shown_epochs(0, 40) == [1, 11, 21, 30, 40]
    assert _shown_epochs(38, 40) == [39, 40]
