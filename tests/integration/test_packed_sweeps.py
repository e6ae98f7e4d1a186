"""Packed sweeps on real workers: a sweep's small trials train together as one model on one worker, each still its
own job (own attempt, metrics, events, checkpoints, outcome) with the results it would have alone; a cancel stops one
member; a worker killed mid-pack resumes every member from its checkpoint, each epoch reported once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.stack import Stack, wait_until
from tests.specs import mlp, with_
from trainq.models.packed import fit_pack
from trainq.models.spec import parse_spec

pytestmark = pytest.mark.integration

EPOCHS = 8


def sweep(name: str, pack, trials: int = 6, epochs: int = EPOCHS, **extra) -> dict:
    base = with_(mlp(hidden=(64,), epochs=epochs, batch_size=64), **{"dataset.val_fraction": 0.2})
    return {"name": name, "base": base, "search": {"optimizer.lr": {"log_uniform": [1e-3, 3e-2]}},
            "method": "random", "trials": trials, "parallel": trials, "metric": "val_loss", "seed": 5,
            "pack": pack, **extra}


def start(stack: Stack, body: dict) -> str:
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def finished(stack: Stack, sweep_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = stack.get(f"/api/v1/sweeps/{sweep_id}")
        if state["status"] != "running":
            return state
        time.sleep(0.3)
    raise TimeoutError(f"sweep {sweep_id} still running:\n{stack.logs()}")


def events_of(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.get(f"/api/v1/jobs/{job_id}/events")["events"]]


def test_a_packed_sweep_gives_every_trial_the_result_it_has_alone(stack):
    packed = finished(stack, start(stack, sweep("packed", "auto")))
    apart = finished(stack, start(stack, sweep("apart", "off")))
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


def test_cancelling_one_packed_trial_stops_it_alone(stack):
    sweep_id = start(stack, sweep("cancel-one", 4, trials=4, epochs=400))
    state = stack.get(f"/api/v1/sweeps/{sweep_id}")
    victim = state["trials"][1]["job_id"]
    stack.wait(victim, until=lambda j: j["epoch"] >= 3, timeout=120)
    answer = stack.http.post(f"{stack.url}/api/v1/jobs/{victim}/cancel", timeout=10)
    assert answer.status_code == 200, answer.text
    job = stack.wait(victim, timeout=60)
    assert job["status"] == "cancelled" and job["epoch"] < 400
    others = [t["job_id"] for t in state["trials"] if t["job_id"] != victim]
    assert all(stack.job(j)["status"] == "running" for j in others)  # the rest train on
    done = finished(stack, sweep_id, timeout=300)
    assert done["counts"] == {"succeeded": 3, "cancelled": 1}, done["counts"]
    assert all(stack.job(j)["epoch"] == 400 for j in others)


@pytest.fixture()
def fragile_stack(make_database, redis_url, tmp_path):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url, TRAINQ_LEASE_SECONDS="3",
              TRAINQ_PACK_CHECKPOINT_SECONDS="0")
    try:
        s.serve()
        yield s
    finally:
        s.close()


def test_a_worker_killed_mid_pack_resumes_every_member_with_each_epoch_once(fragile_stack):
    stack = fragile_stack
    body = sweep("killed", "auto", trials=3, epochs=60)
    body["base"]["training"]["batch_size"] = 8  # slower epochs: room to kill it mid-run
    stack.worker("doomed")
    sweep_id = start(stack, body)
    trials = stack.get(f"/api/v1/sweeps/{sweep_id}")["trials"]
    for t in trials:
        stack.wait(t["job_id"], until=lambda j: j["epoch"] >= 5, timeout=120)
    wait_until(lambda: all(stack.get(f"/api/v1/jobs/{t['job_id']}/checkpoints")["checkpoints"] for t in trials),
               what="a checkpoint of every member")
    stack.stop("doomed", signal.SIGKILL)  # the worker and its job process, with no chance to say anything
    stack.worker("successor")
    done = finished(stack, sweep_id, timeout=300)
    assert done["counts"] == {"succeeded": 3}, stack.logs()
    jobs = [stack.job(t["job_id"]) for t in done["trials"]]
    # The reference: the same pack trained in one go here. (Not each trial alone: with batches of 8 and Adam at
    # these rates, rounding differences between any two summation orders grow past 1e-4 within a few epochs.)
    uninterrupted = fit_pack([parse_spec(job["spec"]) for job in jobs])
    for job, reference in zip(jobs, uninterrupted):
        assert job["attempts"] == 2 and job["worker"] == "successor@test"
        series = stack.get(f"/api/v1/jobs/{job['id']}/metrics")["series"]
        assert series["val_loss"]["epoch"] == list(range(1, 61))  # none lost, none twice
        expected = [h["val_loss"] for h in reference.result.history]
        assert series["val_loss"]["value"] == pytest.approx(expected, abs=1e-5)
        assert job["metrics"]["test_loss"] == pytest.approx(reference.result.metrics["test_loss"], abs=1e-5)
        messages = events_of(stack, job["id"])
        assert any("packed with 2 other jobs" in m for m in messages), messages
        # Resumed as a pack again, except a member whose last checkpoint was an epoch behind the others' (uploads
        # are asynchronous; a kill -9 can land between two): it trains apart, and says so.
        resumed = next(i for i, m in enumerate(messages) if "resuming after epoch" in m)
        assert any("packed with" in m or "trains apart" in m for m in messages[resumed:resumed + 3]), messages
