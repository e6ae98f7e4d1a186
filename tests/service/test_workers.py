"""The worker registry: registration by heartbeat, states, drains, why a queued job waits, device routing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.specs import mlp, with_
from trainq.service.db import utcnow
from trainq.service.tables import Worker


@pytest.fixture(autouse=True)
def fresh_reasons(monkeypatch):
    """These tests change workers between reads: no reason kept from one read to the next."""
    from trainq.service import workers

    monkeypatch.setattr(workers, "REASON_TTL", 0.0)
    workers._reasons.clear()


def beat(app, name, worker_headers, **info):
    body = {"pool": "cpu", "kind": "cpu", "device": "cpu (2 threads per job)", "host": "node-1", "pid": 41,
            "concurrency": 1, **info}
    return app.test_client().post(f"/api/v1/worker/workers/{name}/heartbeat", json=body, headers=worker_headers)


def age(app, name, seconds):
    with app.extensions["trainq"].sessions() as session:
        session.execute(update(Worker).where(Worker.name == name)
                        .values(last_seen_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def test_a_heartbeat_registers_the_worker_and_the_list_shows_it(app, client, worker_headers):
    answer = beat(app, "cpu@node-1", worker_headers, concurrency=2)
    assert answer.status_code == 200 and answer.get_json() == {"drain": False}
    body = client.get("/api/v1/workers").get_json()
    (w,) = body["workers"]
    assert (w["name"], w["pool"], w["kind"], w["state"], w["host"], w["concurrency"]) == (
        "cpu@node-1", "cpu", "cpu", "online", "node-1", 2)
    assert w["jobs"] == [] and w["jobs_done"] == 0
    assert body["pools"]["cpu"] == {"online": 1, "slots": 2, "busy": 0, "queued": 0}


def test_a_silent_worker_is_shown_lost_and_a_stopped_one_stopped(app, client, worker_headers):
    beat(app, "cpu@a", worker_headers)
    beat(app, "cpu@b", worker_headers)
    age(app, "cpu@a", 60)
    app.test_client().post("/api/v1/worker/workers/cpu@b/stopped", headers=worker_headers)
    states = {w["name"]: w["state"] for w in client.get("/api/v1/workers").get_json()["workers"]}
    assert states == {"cpu@a": "lost", "cpu@b": "stopped"}
    assert client.get("/api/v1/workers").get_json()["pools"]["cpu"]["online"] == 0


def test_a_drain_is_passed_to_the_worker_and_ends_with_a_restart(app, client_as, worker_headers):
    beat(app, "gpu@n2-gpu0", worker_headers, pool="gpu", kind="gpu", device="cuda:0 NVIDIA H200")
    assert client_as("alice").post("/api/v1/workers/gpu@n2-gpu0/drain").status_code == 403  # admins only
    assert client_as("admin").post("/api/v1/workers/nobody@x/drain").status_code == 404
    answer = client_as("admin").post("/api/v1/workers/gpu@n2-gpu0/drain")
    assert answer.status_code == 202 and answer.get_json()["state"] == "draining"
    assert beat(app, "gpu@n2-gpu0", worker_headers, pool="gpu", kind="gpu", device="x").get_json() == {"drain": True}
    (w,) = client_as("admin").get("/api/v1/workers").get_json()["workers"]
    assert w["state"] == "draining"
    # The same name from a new process (the worker was restarted): a fresh registration, not draining.
    assert beat(app, "gpu@n2-gpu0", worker_headers, pool="gpu", kind="gpu", device="x", pid=99).get_json() == {
        "drain": False}


def test_a_bad_heartbeat_is_a_400_naming_the_field(app, worker_headers, client):
    answer = beat(app, "cpu@x", worker_headers, kind="tpu")
    assert answer.status_code == 400 and answer.get_json()["errors"][0]["path"] == "kind"
    answer = app.test_client().post("/api/v1/worker/workers/cpu@x/heartbeat", json=[1],
                                    headers=worker_headers)
    assert answer.status_code == 400
    assert client.post("/api/v1/worker/workers/cpu@x/heartbeat", json={}).status_code == 401  # a user token
    assert client.get("/api/v1/workers").get_json()["workers"] == []


def test_a_queued_job_says_why_it_waits(app, client, worker_headers):
    job = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["waiting_reason"].startswith(
        "no worker online for pool cpu")
    beat(app, "cpu@n1", worker_headers)
    assert "is free" in client.get(f"/api/v1/jobs/{job['id']}").get_json()["waiting_reason"]
    gpu_job = client.post("/api/v1/jobs", json=with_(mlp(epochs=1), **{"resources.device": "gpu"})).get_json()
    assert gpu_job["device"] == "gpu"
    reason = client.get(f"/api/v1/jobs/{gpu_job['id']}").get_json()["waiting_reason"]
    assert reason.startswith("no GPU worker online for pool cpu") and "--gpus" in reason
    # The CPU worker takes the first job: now the pool is busy for the next one.
    claimed = app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim", json={"worker": "cpu@n1",
                                                                                    "kind": "cpu"},
                                     headers=worker_headers)
    assert claimed.status_code == 200
    other = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    assert client.get(f"/api/v1/jobs/{other['id']}").get_json()["waiting_reason"] == (
        "all 1 workers of pool cpu are busy (1 running)")
    (w,) = client.get("/api/v1/workers").get_json()["workers"]
    assert w["busy"] == 1 and [j["id"] for j in w["jobs"]] == [job["id"]]


def test_a_job_waiting_in_one_pool_is_told_of_a_pool_where_its_kind_of_worker_is_online(app, client, worker_headers):
    gpu_job = client.post("/api/v1/jobs", json=with_(mlp(epochs=1), **{"resources.device": "gpu"})).get_json()
    beat(app, "cpu@n1", worker_headers)  # a CPU worker of the job's pool does not help it
    beat(app, "gpu@n1-gpu0", worker_headers, pool="gpu", kind="gpu", gpus=1, device="cuda:0")  # as `trainq up` starts
    reason = client.get(f"/api/v1/jobs/{gpu_job['id']}").get_json()["waiting_reason"]
    assert reason == ("no GPU worker online for pool cpu; start one with: trainq worker --pool cpu --gpus 0, or "
                      "submit to pool gpu (resources.pool), where one is online")
    age(app, "gpu@n1-gpu0", 3600)  # gone: nothing to point to
    reason = client.get(f"/api/v1/jobs/{gpu_job['id']}").get_json()["waiting_reason"]
    assert reason == "no GPU worker online for pool cpu; start one with: trainq worker --pool cpu --gpus 0"


def test_a_gpu_job_is_never_claimed_by_a_cpu_worker(app, client, worker_headers):
    job = client.post("/api/v1/jobs", json=with_(mlp(epochs=1), **{"resources.device": "gpu"})).get_json()
    answer = app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim",
                                    json={"worker": "cpu@n1", "kind": "cpu"}, headers=worker_headers)
    assert answer.status_code == 409 and answer.get_json()["error"] == "wrong_device"
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["status"] == "queued"
    answer = app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim",
                                    json={"worker": "gpu@n1-gpu0", "kind": "gpu"}, headers=worker_headers)
    assert answer.status_code == 200


def test_a_users_sees_only_their_own_jobs_on_a_worker(app, client_as, worker_headers):
    job = client_as("bob").post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    beat(app, "cpu@n1", worker_headers)
    app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim", json={"worker": "cpu@n1"},
                           headers=worker_headers)
    (seen_by_alice,) = client_as("alice").get("/api/v1/workers").get_json()["workers"]
    assert seen_by_alice["busy"] == 1 and seen_by_alice["jobs"] == []
    (seen_by_admin,) = client_as("admin").get("/api/v1/workers").get_json()["workers"]
    assert [j["id"] for j in seen_by_admin["jobs"]] == [job["id"]]


def test_a_data_parallel_job_waits_for_a_worker_with_enough_gpus(app, client, worker_headers):
    from trainq.broker import worker_queues

    spec = with_(mlp(epochs=1), **{"resources.gpus": 2})
    job = client.post("/api/v1/jobs", json=spec).get_json()
    assert client.post("/api/v1/jobs", json=with_(spec, **{"resources.device": "cpu"})).status_code == 422
    beat(app, "cpu@n1-gpu0", worker_headers, kind="gpu", gpus=1, device="cuda:0")
    reason = client.get(f"/api/v1/jobs/{job['id']}").get_json()["waiting_reason"]
    assert reason.startswith("no worker with 2 GPUs online for pool cpu") and "--gpus-per-worker 2" in reason
    refused = app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim",
                                     json={"worker": "cpu@n1-gpu0", "kind": "gpu", "gpus": 1}, headers=worker_headers)
    assert refused.status_code == 409 and "needs 2 GPUs" in refused.get_json()["message"]
    beat(app, "cpu@n2-gpu0-1", worker_headers, kind="gpu", gpus=2, device="cuda:0, cuda:1")
    assert "is free" in client.get(f"/api/v1/jobs/{job['id']}").get_json()["waiting_reason"]
    assert worker_queues("cpu", "gpu", 2) == ["cpu", "cpu.gpu", "cpu.gpu2"]
    assert worker_queues("cpu", "cpu", 0) == ["cpu", "cpu.cpu"]
    with app.app_context():
        from trainq.service.tables import Job
        with app.extensions["trainq"].sessions() as session:
            assert session.get(Job, job["id"]).queue == "cpu.gpu2"
    taken = app.test_client().post(f"/api/v1/worker/jobs/{job['id']}/claim",
                                   json={"worker": "cpu@n2-gpu0-1", "kind": "gpu", "gpus": 2}, headers=worker_headers)
    assert taken.status_code == 200


def test_the_waiting_reason_is_kept_for_a_second_per_pool(app, client, worker_headers, monkeypatch):
    from trainq.service import workers

    monkeypatch.setattr(workers, "REASON_TTL", 60.0)
    first = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    second = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    assert client.get(f"/api/v1/jobs/{first['id']}").get_json()["waiting_reason"].startswith("no worker online")
    beat(app, "cpu@n1", worker_headers)
    # Within the time to live, every queued job of the pool gets the kept answer, with no query for it.
    assert client.get(f"/api/v1/jobs/{second['id']}").get_json()["waiting_reason"].startswith("no worker online")
    workers._reasons.clear()
    assert "is free" in client.get(f"/api/v1/jobs/{second['id']}").get_json()["waiting_reason"]


def test_the_queue_lists_jobs_in_order_with_the_positions_a_job_read_gives(client):
    low = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    high = client.post("/api/v1/jobs", json=with_(mlp(epochs=1), **{"resources.priority": 50})).get_json()
    later = client.post("/api/v1/jobs", json=mlp(epochs=1)).get_json()
    queue = client.get("/api/v1/workers").get_json()["queue"]
    assert [(j["id"], j["position"]) for j in queue] == [(high["id"], 1), (low["id"], 2), (later["id"], 3)]
    for job in queue:
        assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["queue_position"] == job["position"]
    page = client.get(f"/jobs/{later['id']}")  # the dashboard's run page reads the job the same way
    assert page.status_code == 200 and b"no worker online for pool cpu" in page.data


def test_heartbeats_are_one_statement_each_on_postgresql_and_fenced_ones_still_answer_409(app, client,
                                                                                          worker_headers):
    """A registered worker's heartbeat and a live attempt's are one UPDATE ... RETURNING each on the heartbeat engine
    (no ORM session, no transaction); a stale attempt falls to the ORM path and is told it is fenced."""
    from sqlalchemy import event

    from tests.service.test_api import attempt_headers, claim, submit

    services = app.extensions["trainq"]
    assert services.beats is not None  # these tests run on PostgreSQL
    beat(app, "cpu@quick", worker_headers)  # registers (ORM path)
    job = submit(client, mlp())
    claimed = claim(client, job["id"], worker_headers, worker="cpu@quick").json
    connection = services.beats.connection  # the test's one connection: every statement of the app goes through it
    seen = []

    def record(conn, cursor, statement, *rest):
        seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        assert beat(app, "cpu@quick", worker_headers).get_json() == {"drain": False}
        url = f"/api/v1/worker/attempts/{claimed['attempt_id']}/heartbeat"
        answer = client.post(url, json={"epoch": 3}, headers=attempt_headers(worker_headers, claimed))
        assert answer.status_code == 200 and answer.get_json() == {"cancel": False}
    finally:
        event.remove(connection, "before_cursor_execute", record)
    assert len(seen) == 2 and all(s.lstrip().startswith("UPDATE") and "RETURNING" in s for s in seen), seen
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["epoch"] == 3
    finished = client.post(f"/api/v1/worker/attempts/{claimed['attempt_id']}/finish", headers=attempt_headers(
        worker_headers, claimed), json={"status": "succeeded", "stop_reason": "completed", "epoch": 3, "metrics": {}})
    assert finished.status_code == 200, finished.get_json()
    stale = client.post(url, json={}, headers=attempt_headers(worker_headers, claimed))
    assert stale.status_code == 409  # no longer live: the one statement matched nothing, the ORM path says why
    wrong = client.post(url, json={}, headers={**worker_headers, "X-Trainq-Attempt-Token": "not-the-token"})
    assert wrong.status_code == 404


def test_a_worker_says_in_a_few_words_why_the_service_could_not_be_reached(caplog):
    """When the service is gone (a `trainq up` stopped with Ctrl-C stops it with its workers), the worker's retries
    and its last error name the cause and where, not urllib3's nested exceptions and the URL three times over."""
    from tests.integration.stack import free_port
    from trainq.workers.client import ServiceClient

    port = free_port()  # nothing listens there
    client = ServiceClient(f"http://127.0.0.1:{port}", "token", timeout=1)
    with caplog.at_level("WARNING", logger="trainq.workers.client"), pytest.raises(ConnectionError) as failed:
        client.call("POST", "/api/v1/worker/workers/w@h/stopped", retry_for=0.25)
    assert str(failed.value).endswith(f"failed for 0s: connection refused by 127.0.0.1:{port}"), failed.value
    retries = [r.getMessage() for r in caplog.records]
    assert retries and all(m.endswith("s") and f"connection refused by 127.0.0.1:{port}; retrying in" in m
                           for m in retries), retries
    assert not any("HTTPConnectionPool" in m or "NewConnectionError" in m for m in [*retries, str(failed.value)])
