"""Workers register and heartbeat, a drain finishes the running job and takes no new one, device kinds route jobs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from tests.integration.stack import ADMIN_TOKEN, Stack, wait_until as until
from tests.specs import mlp, with_

pytestmark = pytest.mark.integration


@pytest.fixture()
def pools(make_database, redis_url, tmp_path):
    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url)
    try:
        yield s.serve()
    finally:
        s.close()


def workers(stack: Stack) -> dict[str, dict]:
    return {w["name"]: w for w in stack.get("/api/v1/workers")["workers"]}


def test_a_drained_worker_finishes_its_job_takes_no_new_one_and_stops(pools):
    waiting = pools.submit(mlp(epochs=1))
    assert pools.job(waiting)["waiting_reason"].startswith("no worker online for pool cpu")
    proc = pools.worker()
    assert pools.wait(waiting)["status"] == "succeeded"
    w = until(lambda: workers(pools).get("worker@test"), what="the worker registers")
    assert (w["state"], w["pool"], w["kind"]) == ("online", "cpu", "cpu") and w["device"].startswith("cpu (")
    until(lambda: workers(pools)["worker@test"]["jobs_done"] == 1, what="jobs_done counts the job")

    long = pools.submit(mlp(hidden=(256, 256), epochs=120, batch_size=8))  # several seconds
    pools.wait(long, until=lambda j: j["status"] == "running" and j["epoch"] >= 1)
    drained = subprocess.run([sys.executable, "-m", "trainq.cli", "worker", "drain", "worker@test"],
                             env={**pools.env, "TRAINQ_TOKEN": ADMIN_TOKEN}, capture_output=True, text=True, timeout=30)
    assert drained.returncode == 0 and "draining" in drained.stdout, drained.stderr
    assert workers(pools)["worker@test"]["state"] == "draining"
    pools.wait_for_log("worker", "asked to drain")
    after = pools.submit(mlp(epochs=1))
    job = pools.wait(long)
    assert (job["status"], job["stop_reason"], job["attempts"], job["epoch"]) == ("succeeded", "completed", 1, 120)
    proc.wait(timeout=60)  # the worker leaves once idle, on its own
    assert workers(pools)["worker@test"]["state"] == "stopped"
    time.sleep(2)
    queued = pools.job(after)
    assert queued["status"] == "queued" and queued["attempts"] == 0
    assert queued["waiting_reason"].startswith("no worker online for pool cpu")
    pools.worker("second")  # another worker takes what the drained one left in the queue
    assert pools.wait(after)["status"] == "succeeded" and pools.job(after)["worker"] == "second@test"


def test_a_gpu_job_waits_for_a_gpu_worker_while_cpu_jobs_pass_it(pools):
    pools.worker()
    gpu = pools.submit(with_(mlp(epochs=1), **{"resources.device": "gpu"}))
    cpu = pools.submit(with_(mlp(epochs=1), **{"resources.device": "cpu"}))
    anyone = pools.submit(mlp(epochs=1))
    assert pools.wait(cpu)["status"] == "succeeded"
    assert pools.wait(anyone)["status"] == "succeeded"
    job = pools.job(gpu)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["waiting_reason"].startswith("no GPU worker online for pool cpu")
