"""The whole path on real PostgreSQL, Redis, a gunicorn service and a Celery worker process."""

from __future__ import annotations

import time

import pytest
import requests
import torch

from tests.specs import mlp, with_, xor
from trainq.models.checkpoint import load_weights
from trainq.models.engine import build, evaluate, fit
from trainq.models.spec import parse_spec

pytestmark = pytest.mark.integration


def test_xor_mlp_reaches_accuracy_one(stack):
    job_id = stack.submit(xor())
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", stack.logs()
    assert job["stop_reason"] == "completed" and job["epoch"] == 300
    assert job["metrics"]["test_accuracy"] == 1.0
    assert job["worker"] == "worker@test" and job["attempts"] == 1
    assert job["started_at"] and job["finished_at"] >= job["started_at"]
    series = stack.get(f"/api/v1/jobs/{job_id}/metrics")["series"]
    assert series["val_loss"]["epoch"] == list(range(1, 301))
    assert len(series["train_loss_step"]["step"]) == 30  # every 10 steps of 1 step per epoch


def test_digits_mlp_and_its_best_checkpoint_reproduce_the_reported_accuracy(stack):
    # every epoch checkpointed, so the best one is the best epoch's (on the default clock it may be an earlier best)
    spec = mlp(hidden=(128,), epochs=40, early_stopping={"patience": 8}, checkpoint_every_seconds=0)
    job = stack.wait(stack.submit(spec))
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= 0.95
    assert job["best_epoch"] is not None
    checkpoints = stack.get(f"/api/v1/jobs/{job['id']}/checkpoints")["checkpoints"]
    best = [c for c in checkpoints if c["is_best"]]
    assert len(best) == 1 and best[0]["epoch"] == job["best_epoch"]
    assert sum(c["is_latest"] for c in checkpoints) == 1
    blob = stack.http.get(stack.url + best[0]["download_url"], timeout=10).content
    state = build(parse_spec(spec))
    state.model.load_state_dict(load_weights(blob))
    local = evaluate(state, state.data.test, "test")
    assert local["test_accuracy"] == pytest.approx(job["metrics"]["test_accuracy"], abs=1e-6)


def test_the_service_path_learns_what_the_engine_learns(stack):
    spec = mlp(epochs=4)
    job = stack.wait(stack.submit(spec))
    direct = fit(parse_spec(spec))
    assert job["metrics"]["test_accuracy"] == pytest.approx(direct.metrics["test_accuracy"], abs=1e-6)
    assert job["metrics"]["test_loss"] == pytest.approx(direct.metrics["test_loss"], rel=1e-4)
    series = stack.get(f"/api/v1/jobs/{job['id']}/metrics?names=val_loss")["series"]["val_loss"]["value"]
    assert series == pytest.approx([h["val_loss"] for h in direct.history], rel=1e-4)


def test_cancel_stops_a_running_job_and_saves_nothing_more(stack):
    spec = mlp(hidden=(256, 256), epochs=2000, batch_size=8, log_every_steps=1)
    job_id = stack.submit(spec)
    stack.wait(job_id, until=lambda j: j["status"] == "running" and j["epoch"] >= 1, timeout=60)
    asked = time.monotonic()
    answer = stack.http.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", timeout=10).json()
    assert answer["cancel_requested"] is True
    job = stack.wait(job_id, timeout=30)
    assert time.monotonic() - asked < 10
    assert job["status"] == "cancelled" and job["stop_reason"] == "cancelled"
    assert job["epoch"] < 2000
    before = stack.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"]
    time.sleep(1.5)
    assert stack.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"] == before
    assert max(c["epoch"] for c in before) <= job["epoch"]


def test_a_failing_job_ends_failed_and_the_next_job_still_runs(stack):
    bad = with_(mlp("diabetes", outputs=1, epochs=5, log_every_steps=1), loss={"type": "mse"},
                optimizer={"type": "sgd", "lr": 100.0})
    failed = stack.wait(stack.submit(bad))
    assert failed["status"] == "failed" and failed["stop_reason"] == "error"
    assert "NonFiniteLoss" in failed["error"] and "at step" in failed["error"]
    events = stack.get(f"/api/v1/jobs/{failed['id']}/events")["events"]
    assert any("Traceback" in e["message"] and e["level"] == "error" for e in events)
    after = stack.wait(stack.submit(xor()))
    assert after["status"] == "succeeded" and after["metrics"]["test_accuracy"] == 1.0


def test_a_duplicate_delivery_runs_one_attempt(stack):
    from celery import Celery

    job_id = stack.submit(mlp(epochs=3))
    sender = Celery(broker=stack.env["TRAINQ_BROKER_URL"])
    sender.send_task("trainq.train", args=[job_id], queue="cpu")  # the same id, delivered again
    job = stack.wait(job_id)
    time.sleep(1)  # let the duplicate reach the worker and be refused at claim
    assert stack.job(job_id)["attempts"] == 1 and job["status"] == "succeeded"
    assert torch.isfinite(torch.tensor(job["metrics"]["test_loss"]))


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversize_body_gets_413_also_when_chunked(stack, chunked):
    size = 5 * 1024 * 1024  # the stack's limit is 4 MiB

    def chunks():
        piece = b" " * 65536
        for _ in range(size // len(piece)):
            yield piece

    body = chunks() if chunked else b" " * size
    try:
        # its own connection: after refusing a body the server closes the connection, as it should
        answer = requests.post(f"{stack.url}/api/v1/jobs", data=body, timeout=30,
                               headers={"Content-Type": "application/json", **stack.http.headers})
    except requests.ConnectionError:
        return  # the service closed the connection before reading it all: also refused, and not read
    assert answer.status_code == 413, answer.text
    assert stack.get("/api/v1/health")["status"] == "ok"


def test_a_job_trains_on_an_uploaded_csv(stack):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    label = np.where(x[:, 0] + 2 * x[:, 1] > 0, "pos", "neg")
    text = "a,b,c,label\n" + "\n".join(f"{r[0]},{r[1]},{r[2]},{lab}" for r, lab in zip(x, label))
    answer = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": "linear"}, data=text.encode(),
                             headers={"Content-Type": "text/csv"}, timeout=10)
    assert answer.status_code == 201, answer.text
    spec = {"name": "on-csv", "dataset": {"name": "upload", "upload": "linear"},
            "model": {"layers": [{"type": "dense", "units": 2}]}, "loss": {"type": "cross_entropy"},
            "optimizer": {"type": "adam", "lr": 0.05}, "training": {"epochs": 30, "batch_size": 32}}
    job = stack.wait(stack.submit(spec))
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= 0.95  # a linear rule: a linear model finds it


def test_a_higher_priority_job_goes_first_and_positions_say_so(stack):
    from datetime import datetime

    blocker = stack.submit(mlp(hidden=(256, 256), epochs=400, batch_size=8))
    stack.wait(blocker, until=lambda j: j["status"] == "running", timeout=60)
    low = stack.submit({**xor(), "name": "low", "resources": {"priority": -50}})
    high = stack.submit({**xor(), "name": "high", "resources": {"priority": 50}})
    assert (stack.job(high)["queue_position"], stack.job(low)["queue_position"]) == (1, 2)
    stack.http.post(f"{stack.url}/api/v1/jobs/{blocker}/cancel", timeout=10)
    first, second = stack.wait(high), stack.wait(low)
    assert first["status"] == second["status"] == "succeeded"
    assert datetime.fromisoformat(first["started_at"]) < datetime.fromisoformat(second["started_at"])
    assert "queue_position" not in first
