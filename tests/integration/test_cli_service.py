"""The command line against a real service and worker, as a user runs it in a terminal: progress while waiting,
the jobs list, a job's status and events, cancel, the worker list, and what it says about a missing or wrong token."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.integration.stack import ADMIN_TOKEN
from tests.specs import mlp, with_

pytestmark = pytest.mark.integration


def trainq(stack, *args: str, token: str | None = ADMIN_TOKEN, cwd=None) -> subprocess.CompletedProcess:
    env = dict(stack.env)
    if token is not None:
        env["TRAINQ_TOKEN"] = token
    if cwd is not None:  # a user's shell elsewhere: no data folder of the service's in its environment
        env.pop("TRAINQ_DATA_DIR")
    return subprocess.run([sys.executable, "-m", "trainq.cli", *args], env=env, cwd=cwd or stack.folder,
                          capture_output=True, text=True, timeout=180)


def spec_file(tmp_path, spec: dict) -> str:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_submit_wait_shows_progress_then_the_final_metrics(stack, tmp_path):
    spec = with_(mlp(hidden=(32,), epochs=4), name="cli-wait")
    spec["training"]["early_stopping"] = {"monitor": "val_accuracy", "patience": 10}
    done = trainq(stack, "submit", spec_file(tmp_path, spec), "--wait")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert re.fullmatch("[0-9a-f]{32}", job_id)
    progress = [line for line in done.stderr.splitlines() if line.startswith("epoch")]
    assert progress and progress[-1].startswith("epoch    4/4  val_accuracy=") and "ETA 0s" in progress[-1]
    assert "succeeded (completed) after 4 epochs" in done.stdout
    lines = done.stdout.splitlines()
    accuracy = next(line for line in lines if line.startswith("test_accuracy "))
    assert float(accuracy.split()[1]) == pytest.approx(stack.job(job_id)["metrics"]["test_accuracy"], abs=1e-6)
    matrix = lines[lines.index("test_confusion_matrix:") + 1:][:10]
    assert len(matrix) == 10 and all(len(row.split()) == 10 for row in matrix)  # rows, not one number a line

    listed = trainq(stack, "jobs", "--name", "cli-wait")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["ID", "NAME", "PROJECT", "STATUS", "EPOCH", "BEST", "TAGS", "CREATED"]
    assert row.split()[:5] == [job_id, "cli-wait", "default", "succeeded", "4/4"]

    status = trainq(stack, "status", job_id)
    assert "status       succeeded" in status.stdout and "epoch        4/4" in status.stdout
    logs = trainq(stack, "logs", job_id)
    assert "claimed by worker@test" in logs.stdout and "UTC" in logs.stdout


def test_cancel_and_follow_the_logs_of_a_running_job(stack, tmp_path):
    job_id = stack.submit(with_(mlp(hidden=(256, 256), epochs=1000, batch_size=16), name="cli-cancel"))
    stack.wait(job_id, until=lambda j: j["status"] == "running")
    cancelled = trainq(stack, "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(job_id), cancelled.stderr
    followed = trainq(stack, "logs", job_id, "--follow")  # returns once the job has ended
    assert followed.returncode == 0 and stack.job(job_id)["status"] == "cancelled"
    assert "claimed by worker@test" in followed.stdout


def test_the_worker_list_has_column_headers(stack):
    listed = trainq(stack, "worker", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "POOL", "DEVICE", "RUNNING", "DONE"]
    assert lines[1].split()[:3] == ["worker@test", "online", "cpu"]


def test_a_missing_token_and_a_wrong_token_get_different_advice(stack, tmp_path):
    missing = trainq(stack, "jobs", token=None, cwd=tmp_path)  # run from another folder: no .trainq/admin_token here
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    for hint in ("none was given", "--token", "TRAINQ_TOKEN", "trainq token create", str(tmp_path / ".trainq")):
        assert hint in missing.stderr, (hint, missing.stderr)
    wrong = trainq(stack, "jobs", token="tq_not-a-token")
    assert wrong.returncode == 1 and "refused the API token from --token / TRAINQ_TOKEN" in wrong.stderr


def test_logs_of_a_long_run_are_printed_to_their_end_page_after_page(stack):
    """The events route answers 500 at a time: `trainq logs` asks for every page (a long run's end, its cancel line,
    came after the first 500)."""
    from sqlalchemy.orm import sessionmaker

    from trainq.service.db import make_engine
    from trainq.service.jobs import add_event

    job_id = stack.submit(with_(mlp(epochs=1), resources={"pool": "nobody"}))  # no worker: it waits
    engine = make_engine(stack.env["TRAINQ_DATABASE_URL"])
    with sessionmaker(engine)() as session:
        for i in range(1200):
            add_event(session, job_id, f"line {i}")
        session.commit()
    engine.dispose()
    logs = trainq(stack, "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert len(lines) == 1201 and lines[-1].endswith("line 1199") and "submitted to pool nobody" in lines[0]
    stack.http.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", timeout=10)


def test_a_sweep_from_the_command_line_prints_each_trial_as_it_ends_then_the_best(stack, tmp_path):
    import yaml

    body = {"name": "cli-sweep", "base": mlp(hidden=(16,), epochs=2), "method": "random", "trials": 3,
            "parallel": 3, "metric": "val_accuracy", "pruner": {"type": "none"}, "seed": 0,
            "search": {"optimizer.lr": {"log_uniform": [0.001, 0.05]}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    done = trainq(stack, "sweep", "submit", str(path), "--wait")
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.splitlines()[0]
    trials = [line for line in done.stderr.splitlines() if line.startswith("trial")]
    assert len(trials) == 3 and all("succeeded" in line and "optimizer.lr=" in line for line in trials), trials
    assert "sweep succeeded: 3 trials" in done.stdout and "best completed: trial" in done.stdout
    summary = stack.get(f"/api/v1/sweeps/{sweep_id}")
    best = trainq(stack, "sweep", "best", sweep_id)
    assert best.stdout.splitlines()[0] == summary["best"]["job_id"]
    listed = trainq(stack, "sweep", "list")
    assert listed.stdout.splitlines()[0].split() == ["ID", "NAME", "STATUS", "TRIALS", "BEST", "CREATED"]
    assert any(line.startswith(sweep_id) and "3/3" in line for line in listed.stdout.splitlines())
    shown = trainq(stack, "sweep", "show", sweep_id)
    rows = [line.split() for line in shown.stdout.splitlines() if line[:1].isdigit()]
    assert "OPTIMIZER.LR" in shown.stdout and [r[:2] for r in rows] == [["0", "succeeded"], ["1", "succeeded"],
                                                                        ["2", "succeeded"]]
    wrong = trainq(stack, "sweep", "show", "nope")
    assert wrong.returncode == 2 and "not a sweep id" in wrong.stderr and "Traceback" not in wrong.stderr


def test_submit_wait_on_a_fast_job_still_shows_its_first_some_middle_and_its_last_epoch(stack, tmp_path):
    spec = with_(mlp(hidden=(8,), epochs=40, batch_size=512), name="cli-fast")
    done = trainq(stack, "submit", spec_file(tmp_path, spec), "--wait")
    assert done.returncode == 0, done.stderr
    epochs = [int(line.split()[1].split("/")[0]) for line in done.stderr.splitlines() if line.startswith("epoch")]
    assert epochs[0] == 1 and epochs[-1] == 40 and len(epochs) >= 4, done.stderr
    assert epochs == sorted(set(epochs))


def test_layers_lists_the_types_and_one_types_fields(stack):
    listed = trainq(stack, "layers")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["TYPE", "FROM"]
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith(("every", "not offered"))}
    assert set(rows) == {layer["type"] for layer in stack.get("/api/v1/layers")["layers"]}
    assert "built-in" in rows["lstm"] and "units*, layers, bidirectional, dropout, return" in rows["lstm"]
    shown = trainq(stack, "layers", "conv2d")
    assert shown.returncode == 0, shown.stderr
    assert "  out_channels: integer (required)" in shown.stdout.splitlines()
    assert "  padding: integer or same|valid (default 0)" in shown.stdout.splitlines()
    missing = trainq(stack, "layers", "residual")
    assert missing.returncode == 1 and "no layer type 'residual' here; `trainq layers` lists them" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_tags_notes_and_a_search_from_the_command_line(stack):
    tagged = stack.submit(with_(mlp(hidden=(8,), epochs=1), name="cli-tagged", project="cli-study"))
    other = stack.submit(with_(mlp(hidden=(8,), epochs=1), name="cli-other", project="cli-study"))
    for job_id in (tagged, other):
        assert stack.wait(job_id)["status"] == "succeeded", stack.logs()
    done = trainq(stack, "tag", tagged, "team=vision", "stage=first try")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["stage=first try", "team=vision"]
    assert trainq(stack, "tag", tagged, "-r", "stage").stdout.splitlines() == ["team=vision"]
    found = trainq(stack, "jobs", "--project", "cli-study", "--filter", "tags.team = 'vision' and metrics.test_accuracy >= 0")
    assert found.returncode == 0, found.stderr
    rows = found.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [tagged] and "team=vision" in rows[0]
    both = trainq(stack, "jobs", "--project", "cli-study", "--order-by", "attributes.run_name ASC")
    assert [r.split()[1] for r in both.stdout.splitlines()[1:]] == ["cli-other", "cli-tagged"]
    assert trainq(stack, "note", tagged, "Why: the **first** try.").returncode == 0
    assert trainq(stack, "note", tagged).stdout.strip() == "Why: the **first** try."
    wrong = trainq(stack, "jobs", "--filter", "metrics.a > 1 or metrics.b > 2")
    assert wrong.returncode != 0 and "position 14" in wrong.stderr and "Traceback" not in wrong.stderr
    bad = trainq(stack, "tag", tagged, "team")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
