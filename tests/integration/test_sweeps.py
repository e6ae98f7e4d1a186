"""Sweeps on real workers: ASHA prunes most trials, spends far fewer epochs, and finds as good a model."""

from __future__ import annotations

import time

import pytest

from tests.specs import mlp

pytestmark = pytest.mark.integration

EPOCHS = 27  # ASHA's rungs with reduction factor 3: epochs 1, 3, 9, 27


def sweep(name: str, pruner: str) -> dict:
    return {"name": name, "base": mlp(hidden=(64,), epochs=EPOCHS, batch_size=64),
            "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]},
                       "model.layers[0].units": {"choice": [32, 64, 128]}},
            "method": "random", "trials": 16, "parallel": 4, "metric": "val_loss", "direction": "minimize",
            "pruner": {"type": pruner}, "seed": 7}


def run(stack, body: dict, timeout: float = 240) -> dict:
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = stack.get(f"/api/v1/sweeps/{sweep_id}")
        if state["status"] != "running":
            return state
        time.sleep(0.5)
    raise TimeoutError(f"sweep {sweep_id} still running: {stack.get(f'/api/v1/sweeps/{sweep_id}')}\n{stack.logs()}")


def test_asha_prunes_half_the_trials_spends_half_the_epochs_and_finds_as_good_a_model(stack):
    full = run(stack, sweep("unpruned", "none"))
    asha = run(stack, sweep("asha", "asha"))
    for state in (full, asha):
        assert state["status"] == "succeeded" and state["trials_launched"] == 16
        assert len(state["trials"]) == 16 and {t["trial"] for t in state["trials"]} == set(range(16))
    assert full["counts"] == {"succeeded": 16}
    assert full["budget"]["epochs_spent"] == 16 * EPOCHS == full["budget"]["epochs_full_search"]
    # Same seeds: trial n tried the same parameters in both sweeps.
    assert [t["params"] for t in asha["trials"]] == [t["params"] for t in full["trials"]]
    pruned = [t for t in asha["trials"] if t["status"] == "pruned"]
    assert len(pruned) >= 8, asha["counts"]
    assert all(t["stop_reason"] == "pruned" and t["epochs"] < EPOCHS for t in pruned)
    assert asha["budget"]["epochs_spent"] <= full["budget"]["epochs_spent"] / 2, asha["budget"]
    assert abs(asha["best"]["test_accuracy"] - full["best"]["test_accuracy"]) <= 0.01, (asha["best"], full["best"])
    assert asha["best"]["value"] == min(t["value"] for t in asha["trials"] if t["status"] == "succeeded")
    # A pruned trial's job says so, and stopped at the epoch its pruner named.
    job = stack.job(pruned[0]["job_id"])
    assert (job["status"], job["stop_reason"], job["epoch"]) == ("pruned", "pruned", pruned[0]["epochs"])
    events = [e["message"] for e in stack.get(f"/api/v1/jobs/{job['id']}/events")["events"]]
    assert any(m.startswith(f"pruned at epoch {job['epoch']}") for m in events), events
    # "Train the best": an ordinary job from the best trial's spec.
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps/{asha['id']}/train_best", json={"epochs": 5}, timeout=30)
    assert answer.status_code == 201, answer.text
    best = stack.wait(answer.json()["id"])
    assert best["status"] == "succeeded" and best["epoch"] == 5
    assert best["spec"]["optimizer"]["lr"] == asha["best"]["params"]["optimizer.lr"]


def test_early_stopping_works_inside_trials(stack):
    body = {"name": "early", "base": mlp(epochs=200, batch_size=64, early_stopping={"patience": 2}),
            "search": {"optimizer.lr": {"choice": [0.01, 0.003]}}, "method": "grid", "parallel": 2,
            "metric": "val_loss", "pruner": {"type": "none"}}
    state = run(stack, body)
    assert state["status"] == "succeeded" and len(state["trials"]) == 2
    for trial in state["trials"]:
        assert (trial["status"], trial["stop_reason"]) == ("succeeded", "early_stopped")
        assert trial["epochs"] < 200
    assert state["budget"]["epochs_spent"] == sum(t["epochs"] for t in state["trials"]) < 400


def test_a_tpe_sweep_with_median_pruning_survives_a_service_restart_and_a_worker_kill(make_database, redis_url,
                                                                                      tmp_path):
    """The sweep's state is SQL (the sweep, its trials as jobs) and Optuna's study in the same database: a restarted
    service carries the sweep on (its reconciler settles running sweeps), and a killed worker's trial resumes."""
    import signal

    import redis

    from tests.integration.stack import Stack

    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url, TRAINQ_LEASE_SECONDS="3")
    try:
        s.serve()
        s.worker("w1")
        body = {"name": "tpe-restart", "base": mlp(hidden=(128, 128), epochs=12, batch_size=16),
                "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-2]},
                           "model.layers[0].units": {"int_uniform": [32, 128]}},
                "method": "tpe", "trials": 6, "parallel": 2, "metric": "val_accuracy",
                "pruner": {"type": "median", "startup_trials": 2, "warmup_epochs": 2}, "seed": 3}
        answer = s.http.post(f"{s.url}/api/v1/sweeps", json=body, timeout=30)
        assert answer.status_code == 201, answer.text
        sweep_id = answer.json()["id"]
        first = answer.json()["trials"][0]["job_id"]
        s.wait(first, until=lambda j: j["status"] == "running" and j["epoch"] >= 2)
        s.stop("w1", signal.SIGKILL)  # the worker dies mid-trial
        s.stop("service")  # and the service restarts
        s.serve()
        s.worker("w2")
        deadline = time.monotonic() + 240
        while (state := s.get(f"/api/v1/sweeps/{sweep_id}"))["status"] == "running":
            assert time.monotonic() < deadline, s.logs()
            time.sleep(0.5)
        assert state["status"] == "succeeded" and state["direction"] == "maximize"
        assert state["trials_launched"] == 6 and {t["trial"] for t in state["trials"]} == set(range(6))
        assert {t["status"] for t in state["trials"]} <= {"succeeded", "pruned"}
        resumed = s.job(first)
        assert resumed["attempts"] == 2 and resumed["status"] in ("succeeded", "pruned")
        params = [tuple(sorted(t["params"].items())) for t in state["trials"]]
        assert len(set(params)) == 6
        assert all(32 <= t["params"]["model.layers[0].units"] <= 128 for t in state["trials"])
    finally:
        s.close()
