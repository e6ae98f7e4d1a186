"""Faults survived on real processes: a worker killed, stopped or hung mid-run, the service restarted, Redis emptied."""

from __future__ import annotations

import signal

import pytest

from tests.integration.stack import Stack, wait_until
from tests.specs import mlp
from trainq.models.engine import fit
from trainq.models.spec import parse_spec

pytestmark = pytest.mark.integration


@pytest.fixture()
def short_lease_stack(make_database, redis_url, tmp_path):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url, TRAINQ_LEASE_SECONDS="3")
    try:
        s.serve()
        yield s
    finally:
        s.close()


# Long enough to interrupt (~5 s on a free core), checkpointed every half second so a kill -9 finds one to resume.
SPEC = mlp(hidden=(128, 128), epochs=30, batch_size=8, checkpoint_every_seconds=0.5)


def running_on(stack: Stack, worker: str, until_epoch: int) -> str:
    """Start a worker, submit SPEC to it, and return the job's id once it has finished `until_epoch` epochs and the
    service holds a checkpoint. (The reporter posts metrics before checkpoints, and on a fast machine its first
    flush carries several epochs: a fault between the two posts would leave nothing to resume from.)"""
    stack.worker(worker)
    job_id = stack.submit(SPEC)
    stack.wait(job_id, until=lambda j: j["epoch"] >= until_epoch, timeout=120)
    wait_until(lambda: stack.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"], what="a stored checkpoint")
    return job_id


def taken_over(stack: Stack, job_id: str, successor: str) -> dict:
    """Start the successor worker and check the job ends as if it had never been interrupted: a second attempt on
    the successor, every epoch once, and the validation curve and test accuracy of an uninterrupted run (CPU)."""
    stack.worker(successor)
    job = stack.wait(job_id, timeout=180)
    assert job["status"] == "succeeded", stack.logs()
    assert job["attempts"] == 2 and job["worker"] == f"{successor}@test"
    series = stack.get(f"/api/v1/jobs/{job_id}/metrics")["series"]
    assert series["val_loss"]["epoch"] == list(range(1, SPEC["training"]["epochs"] + 1))  # none lost, none twice
    steps = series["train_loss_step"]["step"]
    assert steps == sorted(set(steps))  # one row per (name, step)
    uninterrupted = fit(parse_spec(SPEC))
    assert series["val_loss"]["value"] == pytest.approx([h["val_loss"] for h in uninterrupted.history], rel=1e-5)
    assert job["metrics"]["test_accuracy"] == pytest.approx(uninterrupted.metrics["test_accuracy"], abs=1e-6)
    return job


def events_of(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.get(f"/api/v1/jobs/{job_id}/events")["events"]]


def test_kill_9_mid_run_resumes_from_the_latest_checkpoint_with_the_same_result(short_lease_stack):
    stack = short_lease_stack
    job_id = running_on(stack, "doomed", until_epoch=6)
    stack.stop("doomed", signal.SIGKILL)  # the worker and its job process, with no chance to say anything
    assert stack.job(job_id)["status"] == "running"  # the service does not know yet: the lease still runs
    taken_over(stack, job_id, "rescuer")
    events = events_of(stack, job_id)
    assert any("lease expired" in m for m in events)
    assert any("resuming from epoch" in m for m in events)


def test_a_service_restart_mid_run_loses_and_duplicates_no_metric(make_database, redis_url, tmp_path):
    import time

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url)
    try:
        stack.serve()
        stack.worker()
        spec = mlp(hidden=(128, 128), epochs=30, batch_size=8, log_every_steps=5)
        job_id = stack.submit(spec)
        stack.wait(job_id, until=lambda j: j["epoch"] >= 3, timeout=120)
        stack.stop("service")
        time.sleep(4)  # the worker keeps training and buffers its reports
        stack.serve()
        job = stack.wait(job_id, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 1, stack.logs()
        series = stack.get(f"/api/v1/jobs/{job_id}/metrics")["series"]
        assert series["val_loss"]["epoch"] == list(range(1, 31))
        steps = series["train_loss_step"]["step"]
        per_epoch = -(-1257 // 8)  # training rows of digits / batch size, rounded up
        assert steps == list(range(5, 30 * per_epoch + 1, 5))  # every report, once
    finally:
        stack.close()


def test_sigterm_hands_the_job_back_and_it_resumes_elsewhere(short_lease_stack):
    import os

    stack = short_lease_stack
    job_id = running_on(stack, "preempted", until_epoch=6)
    worker = stack.procs["preempted"]
    os.kill(worker.pid, signal.SIGTERM)  # what docker stop and a preemption send: to the worker process only
    worker.wait(timeout=30)  # it exits within the grace period instead of finishing the job
    handed_back = stack.job(job_id)
    assert handed_back["status"] == "queued" and handed_back["epoch"] >= 6
    taken_over(stack, job_id, "successor")  # every epoch once, the values of an uninterrupted run
    events = events_of(stack, job_id)
    assert any("handed back by preempted@test" in m for m in events)
    # the drain checkpointed where it stopped, part-way through an epoch, and the successor went on from that batch
    assert any("at batch" in m and "where it was interrupted" in m for m in events), events


def test_redis_killed_and_restarted_empty_loses_no_job(make_database, tmp_path):
    import subprocess
    import time

    from tests.integration.stack import free_port

    port = free_port()

    def start_redis():
        return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)

    server = start_redis()
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    try:
        time.sleep(0.5)
        stack.serve()
        stack.worker()
        spec = mlp(hidden=(128,), epochs=25, batch_size=8)
        ids = [stack.submit({**spec, "name": f"job-{i}"}) for i in range(3)]  # one runs, two wait in Redis
        stack.wait(ids[0], until=lambda j: j["status"] == "running" and j["epoch"] >= 2, timeout=60)
        server.kill()
        server.wait()
        server = start_redis()  # empty: the two waiting messages are gone
        started = time.monotonic()
        finished = [stack.wait(job_id, timeout=180) for job_id in ids]
        assert [j["status"] for j in finished] == ["succeeded"] * 3, stack.logs()
        assert time.monotonic() - started < 150
        assert all(j["attempts"] == 1 for j in finished)  # nothing ran twice
    finally:
        stack.close()
        server.kill()


def test_a_hung_worker_is_fenced_and_its_job_resumes_elsewhere(short_lease_stack):
    import os
    import time

    stack = short_lease_stack
    job_id = running_on(stack, "hung", until_epoch=4)
    hung = stack.procs["hung"]
    os.killpg(hung.pid, signal.SIGSTOP)  # it stops answering, but is not dead
    job = taken_over(stack, job_id, "rescuer")
    os.killpg(hung.pid, signal.SIGCONT)  # it wakes up and tries to go on: every write of its attempt is refused
    time.sleep(3)
    after = stack.job(job_id)
    assert (after["status"], after["attempts"], after["metrics"]) == ("succeeded", 2, job["metrics"])
    assert stack.get(f"/api/v1/jobs/{job_id}/metrics?names=val_loss")["series"]["val_loss"]["epoch"] == \
        list(range(1, 31))
    assert "fenced" in (stack.folder / "hung.log").read_text()


def test_a_job_that_outlives_the_brokers_visibility_timeout_still_has_one_live_attempt(make_database, redis_url,
                                                                                        tmp_path):
    """Redis hands an unacknowledged message to another consumer after its visibility timeout (Celery's known
    double run of long tasks). Here it is 2 s against a job of ~10 s: the second delivery must exit at the claim."""
    import time

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url,
                  TRAINQ_BROKER_VISIBILITY_SECONDS="2")
    try:
        stack.serve()
        stack.worker("first")
        stack.worker("second")
        job_id = stack.submit(mlp(hidden=(128, 128), epochs=150, batch_size=8))
        deadline = time.monotonic() + 60
        while not any(f"job {job_id} not claimed" in (tmp_path / f"{w}.log").read_text() for w in ("first", "second")):
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        assert stack.job(job_id)["status"] == "running"  # the re-delivery came while the job still ran
        job = stack.wait(job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), stack.logs()
        events = [e["message"] for e in stack.get(f"/api/v1/jobs/{job_id}/events")["events"]]
        assert sum("claimed by" in m for m in events) == 1
        series = stack.get(f"/api/v1/jobs/{job_id}/metrics?names=val_loss")["series"]["val_loss"]
        assert series["epoch"] == list(range(1, 151))  # every epoch once: no second run wrote anything
    finally:
        stack.close()


def test_a_tpe_sweep_with_median_pruning_survives_a_service_restart_and_a_worker_kill(make_database, redis_url,
                                                                                      tmp_path):
    """The sweep's state is SQL (the sweep, its trials as jobs) and Optuna's study in the same database: a restarted
    service carries the sweep on (its reconciler settles running sweeps), and a killed worker's trial resumes.
    (Here, not beside the sweep tests: their module's shared stack has a worker on the same Redis database, which
    would take this stack's messages.)"""
    import time

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url, TRAINQ_LEASE_SECONDS="3")
    try:
        s.serve()
        s.worker("w1")
        # a few seconds a trial on a free core: long enough for the kill (at epoch 2) to land in the middle of trial 0
        body = {"name": "tpe-restart", "base": mlp(hidden=(128, 128), epochs=20, batch_size=8),
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
    """A packed sweep's worker killed mid-run: every member's lease expires, the reconciler sends the pack back as
    one message, and the next worker resumes each member from its own checkpoint, every epoch reported once."""
    from tests.integration.test_packed_sweeps import sweep
    from trainq.models.packed import fit_pack

    stack = fragile_stack
    body = sweep("killed", "auto", trials=3, epochs=60)
    body["base"]["training"]["batch_size"] = 8  # slower epochs: room to kill it mid-run
    stack.worker("doomed")
    sweep_id = stack.start_sweep(body)
    trials = stack.get(f"/api/v1/sweeps/{sweep_id}")["trials"]
    for t in trials:
        stack.wait(t["job_id"], until=lambda j: j["epoch"] >= 5, timeout=120)
    wait_until(lambda: all(stack.get(f"/api/v1/jobs/{t['job_id']}/checkpoints")["checkpoints"] for t in trials),
               what="a checkpoint of every member")
    stack.stop("doomed", signal.SIGKILL)  # the worker and its job process, with no chance to say anything
    stack.worker("successor")
    done = stack.sweep_done(sweep_id, timeout=300)
    assert done["counts"] == {"succeeded": 3}, stack.logs()
    jobs = [stack.job(t["job_id"]) for t in done["trials"]]
    # The reference: the same pack trained in one go here. (Not each trial alone: with batches of 8 and Adam at
    # these rates, rounding differences between any two summation orders grow past 1e-4 within a few epochs.)
    uninterrupted = fit_pack([parse_spec(job["spec"]) for job in jobs])
    # Resumed as one pack, every member's arithmetic is the reference's to the last bit but for rounding noise. A
    # member whose checkpoint was an epoch behind trains apart (below), and then every member sums in another order
    # from there: rounding differences, ~1e-4 after fifty epochs, where a member restarted from scratch or from another
    # member's weights is off by more than 1e-2 (and the epoch list below catches an epoch lost or reported twice).
    split = any("trains apart" in m or "trains alone" in m for job in jobs for m in events_of(stack, job["id"]))
    tolerance = 1e-3 if split else 1e-5
    for job, reference in zip(jobs, uninterrupted):
        assert job["attempts"] == 2 and job["worker"] == "successor@test"
        series = stack.get(f"/api/v1/jobs/{job['id']}/metrics")["series"]
        assert series["val_loss"]["epoch"] == list(range(1, 61))  # none lost, none twice
        expected = [h["val_loss"] for h in reference.result.history]
        assert series["val_loss"]["value"] == pytest.approx(expected, abs=tolerance)
        assert job["metrics"]["test_loss"] == pytest.approx(reference.result.metrics["test_loss"], abs=tolerance)
        messages = events_of(stack, job["id"])
        assert any("packed with 2 other jobs" in m for m in messages), messages
        # Resumed as a pack again, except a member whose last checkpoint was an epoch behind the others' (uploads
        # are asynchronous; a kill -9 can land between two): it trains apart, and says so.
        resumed = next(i for i, m in enumerate(messages) if "resuming after epoch" in m)
        assert any("packed with" in m or "trains apart" in m for m in messages[resumed:resumed + 3]), messages


def test_a_streamed_table_killed_mid_epoch_resumes_at_its_next_batch_as_if_never_stopped(short_lease_stack, tmp_path):
    """A table several times the worker's memory budget trains streamed from shards; its worker is killed part-way
    through an epoch; a successor resumes at the batch after the last checkpoint (not at the epoch's start) and the
    run ends with the metrics of an uninterrupted one."""
    from dataclasses import replace

    from tests.integration.test_datasets_on_workers import churn_csv
    from trainq.data import formats, profile
    from trainq.models.checkpoint import read_meta
    from trainq.models.spec import Uploaded
    from trainq.settings import Settings
    from trainq.workers.data import source

    stack = short_lease_stack
    stack.env["TRAINQ_DATA_MEMORY_MB"] = "1"  # the workers' budget: the table below takes 4 MiB in memory
    data = churn_csv(70_000)
    uploaded = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": "churn", "target": "churned"},
                               data=data, timeout=60)
    assert uploaded.status_code == 201, uploaded.text
    spec = {"name": "streamed", "dataset": {"name": "upload", "upload": "churn", "missing": "median"},
            "model": {"layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                 {"type": "dropout", "p": 0.1}, {"type": "dense", "units": 2}]},
            "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.003},
            "training": {"epochs": 3, "batch_size": 16, "checkpoint_every_seconds": 0.5, "seed": 0}}  # auto: streams
    stack.worker("doomed")
    job_id = stack.submit(spec)

    def mid_epoch() -> bool:
        found = [c for c in stack.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"] if c["is_latest"]]
        if not found or stack.job(job_id)["epoch"] < 1:
            return False
        blob = stack.http.get(stack.url + found[0]["download_url"], timeout=10).content
        return read_meta(blob)["batch_in_epoch"] > 0

    wait_until(mid_epoch, timeout=120, what="a checkpoint part-way through the second epoch")
    stack.stop("doomed", signal.SIGKILL)
    stack.worker("rescuer")
    job = stack.wait(job_id, timeout=240)
    assert job["status"] == "succeeded" and job["attempts"] == 2, stack.logs()
    events = events_of(stack, job_id)
    assert any("rows into shards" in m for m in events) and any("at batch" in m for m in events), events
    series = stack.get(f"/api/v1/jobs/{job_id}/metrics")["series"]
    assert series["val_loss"]["epoch"] == [1, 2, 3]  # every epoch once

    path = tmp_path / "churn.csv"
    path.write_bytes(data)
    found = profile.profile_table(formats.batches(path, "csv"), "csv", target="churned")
    local = Uploaded("churn", 1, "table", found["rows"], 2, ("no", "yes"), None, found, "local", "local")
    parsed = parse_spec(spec, uploads=lambda ref: replace(local))
    src = source(parsed.dataset, path, Settings(data_dir=tmp_path / "local", data_memory_mb=1))
    assert hasattr(src, "manifest")  # the same shards the workers wrote: the budget, not the spec, chose streaming
    uninterrupted = fit(parsed, device="cpu", arrays=src)
    assert series["val_loss"]["value"] == pytest.approx([h["val_loss"] for h in uninterrupted.history], rel=1e-6)
    assert job["metrics"]["test_accuracy"] == pytest.approx(uninterrupted.metrics["test_accuracy"], abs=1e-9)
