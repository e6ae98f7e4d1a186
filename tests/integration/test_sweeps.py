"""Sweeps on real workers: ASHA prunes most trials, spends far fewer epochs, and finds as good a model."""

from __future__ import annotations

import pytest

from tests.specs import mlp

pytestmark = pytest.mark.integration

EPOCHS = 27  # ASHA's rungs with reduction factor 3 and the default first rung (27 / 3²): epochs 3, 9, 27


def sweep(name: str, pruner: str) -> dict:
    return {"name": name, "base": mlp(hidden=(64,), epochs=EPOCHS, batch_size=64),
            "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]},
                       "model.layers[0].units": {"choice": [32, 64, 128]}},
            "method": "random", "trials": 16, "parallel": 4, "metric": "val_loss", "direction": "minimize",
            "pruner": {"type": pruner}, "seed": 7}


def run(stack, body: dict, timeout: float = 240) -> dict:
    return stack.sweep_done(stack.start_sweep(body), timeout)


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
