"""Packed sweeps on real workers: a sweep's small trials train together as one model on one worker, each still its
own job (own attempt, metrics, events, checkpoints, outcome) with the results it would have alone; a cancel stops one
member. (A worker killed mid-pack: test_faults.py, away from this module's stack and its worker on the same Redis.)"""

from __future__ import annotations

import pytest

from tests.integration.stack import Stack
from tests.specs import mlp, with_

pytestmark = pytest.mark.integration

EPOCHS = 8


def sweep(name: str, pack, trials: int = 6, epochs: int = EPOCHS, **extra) -> dict:
    base = with_(mlp(hidden=(64,), epochs=epochs, batch_size=64), **{"dataset.val_fraction": 0.2})
    return {"name": name, "base": base, "search": {"optimizer.lr": {"log_uniform": [1e-3, 3e-2]}},
            "method": "random", "trials": trials, "parallel": trials, "metric": "val_loss", "seed": 5,
            "pack": pack, **extra}


def events_of(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.get(f"/api/v1/jobs/{job_id}/events")["events"]]


def test_a_packed_sweep_gives_every_trial_the_result_it_has_alone(stack):
    packed = stack.sweep_done(stack.start_sweep(sweep("packed", "auto")))
    apart = stack.sweep_done(stack.start_sweep(sweep("apart", "off")))
    assert packed["status"] == apart["status"] == "succeeded" and packed["pack"] == "auto"
    assert packed["counts"] == apart["counts"] == {"succeeded": 6}
    assert [t["params"] for t in packed["trials"]] == [t["params"] for t in apart["trials"]]  # same seeds
    packs = {stack.job(t["job_id"])["pack_id"] for t in packed["trials"]}
    assert len(packs) == 1 and None not in packs  # auto packed all six: a small MLP on a CPU
    assert all(stack.job(t["job_id"])["pack_id"] is None for t in apart["trials"])
    for t in packed["trials"]:
        assert sorted(t["packed_with"]) == sorted(set(range(6)) - {t["trial"]})
    for p, a in zip(packed["trials"], apart["trials"]):
        pj, aj = stack.job(p["job_id"]), stack.job(a["job_id"])
        assert pj["metrics"]["test_loss"] == pytest.approx(aj["metrics"]["test_loss"], abs=1e-4)
        assert p["value"] == pytest.approx(a["value"], abs=1e-4)
        series = stack.get(f"/api/v1/jobs/{p['job_id']}/metrics")["series"]
        assert series["val_loss"]["epoch"] == list(range(1, EPOCHS + 1))  # each epoch once, from its own reporter
        assert pj["attempts"] == 1 and pj["epoch"] == EPOCHS
    assert packed["best"]["trial"] == apart["best"]["trial"]
    events = events_of(stack, packed["trials"][0]["job_id"])
    assert any(m.startswith("packed with trials 0, 1, 2, 3, 4, 5") for m in events), events
    assert any(m.startswith("packed with 5 other jobs") for m in events), events
    # the run page says it too
    page = stack.http.get(f"{stack.url}/jobs/{packed['trials'][2]['job_id']}", timeout=10).text
    assert 'id="job-packed"' in page and "trial 0" in page and "trial 2</a>" not in page


def test_asha_prunes_the_same_trials_at_the_same_epochs_packed_and_apart(stack):
    """Successive halving compares a trial at a rung with those that reached it before: apart, one worker trains
    the trials one after another; packed, the members reach each rung together and are asked in trial order. Both
    see the same values in the same order, so the same trials stop at the same epochs."""
    asha = {"pruner": {"type": "asha", "min_resource": 1, "reduction_factor": 2},
            "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}}
    packed = stack.sweep_done(stack.start_sweep(sweep("asha-packed", "auto", **asha)))
    apart = stack.sweep_done(stack.start_sweep(sweep("asha-apart", "off", **asha)))
    assert packed["counts"] == apart["counts"] and packed["counts"].get("pruned", 0) >= 2, packed["counts"]
    outcomes = [[(stack.job(t["job_id"])["status"], stack.job(t["job_id"])["epoch"]) for t in s["trials"]]
                for s in (packed, apart)]
    assert outcomes[0] == outcomes[1]
    assert len({stack.job(t["job_id"])["pack_id"] for t in packed["trials"]}) == 1
    assert packed["best"]["trial"] == apart["best"]["trial"]


def test_cancelling_one_packed_trial_stops_it_alone(stack):
    sweep_id = stack.start_sweep(sweep("cancel-one", 4, trials=4, epochs=400))
    state = stack.get(f"/api/v1/sweeps/{sweep_id}")
    victim = state["trials"][1]["job_id"]
    stack.wait(victim, until=lambda j: j["epoch"] >= 3, timeout=120)
    answer = stack.http.post(f"{stack.url}/api/v1/jobs/{victim}/cancel", timeout=10)
    assert answer.status_code == 200, answer.text
    job = stack.wait(victim, timeout=60)
    assert job["status"] == "cancelled" and job["epoch"] < 400
    others = [t["job_id"] for t in state["trials"] if t["job_id"] != victim]
    assert all(stack.job(j)["status"] == "running" for j in others)  # the rest train on
    done = stack.sweep_done(sweep_id, timeout=300)
    assert done["counts"] == {"succeeded": 3, "cancelled": 1}, done["counts"]
    assert all(stack.job(j)["epoch"] == 400 for j in others)
