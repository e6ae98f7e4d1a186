"""The HTTP API against real PostgreSQL and Redis (no worker process: the worker's calls are made by hand)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.specs import mlp, with_, xor
from trainq.service import jobs
from trainq.service.db import utcnow
from trainq.service.tables import Job


def submit(client, spec=None) -> dict:
    answer = client.post("/api/v1/jobs", json=spec or mlp())
    assert answer.status_code == 201, answer.json
    return answer.json


def queued_ids(redis_client, queue="cpu") -> list[str]:
    """Job ids waiting in a pool's Redis lists, in the order a worker takes them (highest priority step first)."""
    keys = [queue] + [f"{queue}:{step}" for step in range(1, 10)]
    return [json.loads(m)["headers"]["argsrepr"].strip("[]'\"")
            for key in keys for m in reversed(redis_client.lrange(key, 0, -1))]


# ---------------------------------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------------------------------


def test_submit_answers_201_queued_and_sends_the_id_to_the_pool_queue(client, redis_client):
    job = submit(client)
    assert job["status"] == "queued" and job["pool"] == "cpu" and job["params"] == 64 * 64 + 64 + 650
    assert job["spec"]["training"]["epochs"] == 5
    assert queued_ids(redis_client) == [job["id"]]
    got = client.get(f"/api/v1/jobs/{job['id']}").json
    assert got["status"] == "queued" and got["spec"] == job["spec"]


def test_a_named_pool_gets_its_own_queue(client, redis_client):
    job = submit(client, with_(mlp(), **{"resources.pool": "gpu"}))
    assert queued_ids(redis_client, "gpu") == [job["id"]] and queued_ids(redis_client, "cpu") == []


def test_a_form_encoded_body_from_curl_is_read_as_json(client):
    # `curl -d @spec.json` sends application/x-www-form-urlencoded
    answer = client.post("/api/v1/jobs", data=json.dumps(mlp()),
                         content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 201


def test_a_yaml_body_is_accepted(client):
    import yaml

    answer = client.post("/api/v1/jobs", data=yaml.safe_dump(xor()), content_type="application/yaml")
    assert answer.status_code == 201 and answer.json["name"] == "xor"


@pytest.mark.parametrize("path", ["/api/v1/jobs:validate", "/api/v1/jobs?dry_run=1"])
def test_dry_run_plans_without_queueing(client, redis_client, path):
    answer = client.post(path, json=mlp(hidden=(32,)))
    assert answer.status_code == 200
    planned = answer.json["plan"]
    assert planned["params"] == 64 * 32 + 32 + 330
    assert [layer["output_shape"] for layer in planned["layers"]] == [[32], [32], [10]]
    assert planned["memory_bytes"] > 0
    assert client.get("/api/v1/jobs").json["total"] == 0
    assert redis_client.llen("cpu") == 0


def test_bad_specs_get_422_with_every_path(client):
    answer = client.post("/api/v1/jobs", data='{"name": "x", "dataset": {"name": "digits"}, '
                         '"model": {"layers": [{"type": "dense", "units": 7}]}, "loss": {"type": "cross_entropy"}, '
                         '"optimizer": {"type": "adam", "lr": Infinity}, "color": "red"}')
    assert answer.status_code == 422
    paths = {e["path"] for e in answer.json["errors"]}
    assert paths == {"optimizer.lr", "color", "model.layers[0]"}  # the dry run's error too, despite the others
    # once the fields are right, the shape check speaks
    answer = client.post("/api/v1/jobs", json=mlp(outputs=7))
    assert answer.status_code == 422
    assert answer.json["errors"] == [{"path": "model.layers[2]",
                                      "message": "cross_entropy on digits needs 10 output units, got 7"}]


@pytest.mark.parametrize("body", ["{", "not json", "[1, 2", '{"a": }', "\x00\x01"])
def test_malformed_bodies_get_400(client, body):
    answer = client.post("/api/v1/jobs", data=body)
    assert answer.status_code == 400 and answer.json["error"] == "bad_request"


def test_an_empty_body_and_a_non_object_get_clear_errors(client):
    assert client.post("/api/v1/jobs", data="").status_code == 400
    answer = client.post("/api/v1/jobs", json=[1, 2, 3])
    assert answer.status_code == 422 and answer.json["errors"][0]["path"] == "(root)"


def test_deep_nesting_gets_a_4xx(client):
    answer = client.post("/api/v1/jobs", data="[" * 100_000 + "]" * 100_000)
    assert answer.status_code in (400, 422)


def test_an_oversize_body_gets_413(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    answer = client.post("/api/v1/jobs", data=json.dumps(with_(mlp(), name="x" * 5000)))
    assert answer.status_code == 413


# ---------------------------------------------------------------------------------------------------------------------
# Listing and reading
# ---------------------------------------------------------------------------------------------------------------------


def test_list_is_newest_first_filtered_and_paginated(client):
    ids = [submit(client, with_(mlp(), name=f"job-{i}"))["id"] for i in range(5)]
    client.post(f"/api/v1/jobs/{ids[1]}/cancel")
    page = client.get("/api/v1/jobs?limit=2").json
    assert page["total"] == 5 and [j["id"] for j in page["jobs"]] == [ids[4], ids[3]]
    page = client.get("/api/v1/jobs?limit=2&offset=4").json
    assert [j["id"] for j in page["jobs"]] == [ids[0]]
    cancelled = client.get("/api/v1/jobs?status=cancelled").json
    assert [j["id"] for j in cancelled["jobs"]] == [ids[1]]
    assert client.get("/api/v1/jobs?name=job-3").json["total"] == 1
    assert client.get("/api/v1/jobs?name=%25").json["total"] == 0  # % is a character, not a wildcard


@pytest.mark.parametrize("query, path", [
    ("status=lost", None), ("limit=0", None), ("limit=x", None), ("offset=-1", None), ("sort=size", "sort"),
    ("changed_since=045080090002339113461.63420", "changed_since"),  # found by schemathesis: was a 500 (overflow)
    ("changed_since=1.99999999999999999999", "changed_since"), ("changed_since=-1.2", "changed_since"),
    ("changed_since=1.2.3", "changed_since"), ("changed_since=%EF%BC%91.2", "changed_since"),  # a full-width 1
])
def test_bad_list_queries_get_400(client, query, path):
    answer = client.get(f"/api/v1/jobs?{query}")
    assert answer.status_code == 400
    if path is not None:
        assert [e["path"] for e in answer.json["errors"]] == [path]


def test_the_change_cursor_of_an_answer_finds_what_changed_after_it(client):
    first = submit(client, with_(mlp(), name="before"))["id"]
    cursor = client.get("/api/v1/jobs").json["cursor"]
    assert client.get(f"/api/v1/jobs?changed_since={cursor}").json["jobs"] == []
    client.post(f"/api/v1/jobs/{first}/cancel")  # a change writes an event
    changed = client.get(f"/api/v1/jobs?changed_since={cursor}").json
    assert [j["id"] for j in changed["jobs"]] == [first] and changed["cursor"] != cursor


def test_the_runs_page_takes_any_offset_without_a_server_error(client):
    assert client.get("/?offset=1000000000000000000000000000").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/jobs/{}", "/api/v1/jobs/{}/metrics", "/api/v1/jobs/{}/events",
                                  "/api/v1/jobs/{}/checkpoints"])
def test_unknown_jobs_get_404(client, path):
    assert client.get(path.format("0" * 32)).status_code == 404
    assert client.get(path.format("..%2f..%2fetc")).status_code == 404


def test_health(client):
    assert client.get("/api/v1/health").json == {"status": "ok", "database": "ok"}


def test_openapi_carries_the_spec_schema(client):
    doc = client.get("/api/v1/openapi.json").json
    assert "JobSpec" in doc["components"]["schemas"]
    assert "/api/v1/jobs" in doc["paths"]


# ---------------------------------------------------------------------------------------------------------------------
# Cancelling
# ---------------------------------------------------------------------------------------------------------------------


def test_a_cancelled_queued_job_never_starts(client, worker_headers):
    job = submit(client)
    answer = client.post(f"/api/v1/jobs/{job['id']}/cancel").json
    assert answer["status"] == "cancelled" and answer["stop_reason"] == "cancelled"
    claim = client.post(f"/api/v1/worker/jobs/{job['id']}/claim", json={"worker": "w1"}, headers=worker_headers)
    assert claim.status_code == 409


# ---------------------------------------------------------------------------------------------------------------------
# The worker protocol
# ---------------------------------------------------------------------------------------------------------------------


def claim(client, job_id, worker_headers, worker="w1"):
    return client.post(f"/api/v1/worker/jobs/{job_id}/claim", json={"worker": worker}, headers=worker_headers)


def attempt_headers(worker_headers, claimed):
    return {**worker_headers, "X-Trainq-Attempt-Token": claimed["token"]}


def test_worker_routes_need_the_worker_token(client):
    job = submit(client)
    assert claim(client, job["id"], {}).status_code == 401
    answer = claim(client, job["id"], {"Authorization": "Bearer wrong"})
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(f"/api/v1/jobs/{job['id']}").json["status"] == "queued"


def test_only_one_attempt_wins_a_claim(client, worker_headers):
    job = submit(client)
    first = claim(client, job["id"], worker_headers)
    assert first.status_code == 200
    assert first.json["spec"]["name"] == "digits-mlp" and first.json["resume"] is None
    assert claim(client, job["id"], worker_headers, "w2").status_code == 409
    got = client.get(f"/api/v1/jobs/{job['id']}").json
    assert got["status"] == "running" and got["worker"] == "w1" and got["attempts"] == 1


def test_heartbeat_carries_the_cancel_flag(client, worker_headers):
    job = submit(client)
    c = claim(client, job["id"], worker_headers).json
    beat = f"/api/v1/worker/attempts/{c['attempt_id']}/heartbeat"
    assert client.post(beat, json={"epoch": 2}, headers=attempt_headers(worker_headers, c)).json == {"cancel": False}
    assert client.get(f"/api/v1/jobs/{job['id']}").json["epoch"] == 2
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json["status"] == "running"
    assert client.post(beat, json={}, headers=attempt_headers(worker_headers, c)).json == {"cancel": True}
    # a wrong attempt token is not this attempt
    assert client.post(beat, json={}, headers={**worker_headers, "X-Trainq-Attempt-Token": "nope"}).status_code == 404


def test_metrics_are_stored_once_per_name_and_step(client, worker_headers):
    job = submit(client)
    c = claim(client, job["id"], worker_headers).json
    url = f"/api/v1/worker/attempts/{c['attempt_id']}/metrics"
    points = [["train_loss_step", 10, 1, 2.5], ["train_loss_step", 20, 1, 2.0], ["val_loss", 20, 1, 1.9]]
    headers = attempt_headers(worker_headers, c)
    assert client.post(url, json={"points": points}, headers=headers).status_code == 200
    assert client.post(url, json={"points": points + [["val_loss", 40, 2, 1.5]]}, headers=headers).status_code == 200
    series = client.get(f"/api/v1/jobs/{job['id']}/metrics").json["series"]
    assert series["train_loss_step"] == {"step": [10, 20], "epoch": [1, 1], "value": [2.5, 2.0]}
    assert series["val_loss"]["value"] == [1.9, 1.5]
    only = client.get(f"/api/v1/jobs/{job['id']}/metrics?names=val_loss&after_step=20").json["series"]
    assert only == {"val_loss": {"step": [40], "epoch": [2], "value": [1.5]}}
    assert client.post(url, json={"points": [["x", "y"]]}, headers=headers).status_code == 400
    # system series are stepped by the clock: a run page asks for the model's without them, and for them apart
    clock = [["sys/cpu_percent", 1_800_000_000, 2, 95.0], ["sys_like_but_not", 50, 2, 1.0]]
    assert client.post(url, json={"points": clock}, headers=headers).status_code == 200
    model = client.get(f"/api/v1/jobs/{job['id']}/metrics?exclude=sys/&after_step=20").json["series"]
    assert model == {"val_loss": {"step": [40], "epoch": [2], "value": [1.5]},
                     "sys_like_but_not": {"step": [50], "epoch": [2], "value": [1.0]}}
    system = client.get(f"/api/v1/jobs/{job['id']}/metrics?names=sys/cpu_percent&after_step=-1").json["series"]
    assert system == {"sys/cpu_percent": {"step": [1_800_000_000], "epoch": [2], "value": [95.0]}}
    assert client.get(f"/api/v1/jobs/{job['id']}/metrics?exclude=%25&after_step=-1").json["series"].keys() >= {
        "val_loss"}  # the prefix is text, not a pattern


def test_a_stale_attempt_is_fenced_after_its_lease_expires(client, app, worker_headers):
    job = submit(client)
    old = claim(client, job["id"], worker_headers, "w1").json
    session = app.extensions["trainq"].sessions()
    session.execute(Job.__table__.update().where(Job.id == job["id"])
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    sent = []
    result = jobs.reconcile(session, lambda j: sent.append(j.id) or True, timedelta(seconds=300))
    session.commit()
    assert result["requeued"] == 1 and sent == [job["id"]]
    new = claim(client, job["id"], worker_headers, "w2").json
    assert new["attempt"] == 2
    base = f"/api/v1/worker/attempts/{old['attempt_id']}"
    stale = attempt_headers(worker_headers, old)
    assert client.post(f"{base}/heartbeat", json={}, headers=stale).status_code == 409
    assert client.post(f"{base}/metrics", json={"points": [["a", 1, 1, 1.0]]}, headers=stale).status_code == 409
    finish = {"status": "succeeded", "stop_reason": "completed", "epoch": 5, "metrics": {"test_accuracy": 0.1}}
    assert client.post(f"{base}/finish", json=finish, headers=stale).status_code == 409
    assert client.get(f"/api/v1/jobs/{job['id']}").json["status"] == "running"
    live = attempt_headers(worker_headers, new)
    ok = client.post(f"/api/v1/worker/attempts/{new['attempt_id']}/finish",
                     json={**finish, "metrics": {"test_accuracy": 0.9}}, headers=live)
    assert ok.status_code == 200
    done = client.get(f"/api/v1/jobs/{job['id']}").json
    assert done["status"] == "succeeded" and done["metrics"] == {"test_accuracy": 0.9} and done["worker"] == "w2"
    events = [e["message"] for e in client.get(f"/api/v1/jobs/{job['id']}/events").json["events"]]
    assert any("lease expired" in m for m in events) and any("attempt 2 claimed by w2" in m for m in events)


def test_reconciler_sends_again_a_job_the_broker_never_took(client, app):
    job = submit(client)
    session = app.extensions["trainq"].sessions()
    session.execute(Job.__table__.update().where(Job.id == job["id"]).values(enqueued_at=None))
    session.commit()
    sent = []
    assert jobs.reconcile(session, lambda j: sent.append(j.id) or True, timedelta(seconds=300))["resent"] == 1
    assert sent == [job["id"]]
    assert session.scalar(select(Job.enqueued_at).where(Job.id == job["id"])) is not None


def _checkpoint_blob(epochs=1):
    from trainq.models.engine import fit
    from trainq.models.spec import parse_spec

    blobs = []
    fit(parse_spec(mlp(epochs=epochs, checkpoint_every_seconds=0)), checkpoint_sink=lambda b, i: blobs.append(b))
    return blobs


def test_checkpoints_upload_list_download_and_prune(client, worker_headers):
    job = submit(client, with_(mlp(), **{"training.keep_checkpoints": 1}))
    c = claim(client, job["id"], worker_headers).json
    url = f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints"
    headers = attempt_headers(worker_headers, c)
    blobs = _checkpoint_blob(epochs=3)
    for i, blob in enumerate(blobs):
        answer = client.post(f"{url}?is_best={'1' if i == 0 else '0'}&metric_name=val_loss&metric=0.5",
                             data=blob, headers=headers)
        assert answer.status_code == 201
    listed = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json["checkpoints"]
    assert [(c_["epoch"], c_["is_best"], c_["is_latest"]) for c_ in listed] == [(1, True, False), (3, False, True)]
    download = client.get(listed[1]["download_url"])
    assert download.status_code == 200 and download.data == blobs[2]
    # a claim after this resumes from the latest checkpoint
    resume = client.get(f"/api/v1/worker/attempts/{c['attempt_id']}/resume", headers=headers)
    assert resume.data == blobs[2]


def test_a_claim_of_many_jobs_resumes_each_from_its_own_latest_checkpoint(client, app, worker_headers):
    """One request claims a pack's jobs whose leases expired: each gets a new attempt (the old one fenced) and
    resumes from its own latest checkpoint (the furthest epoch), one that saved none from the start; a job that
    another worker holds is refused alone."""
    ids = [submit(client)["id"] for _ in range(4)]
    first = client.post("/api/v1/worker/claims", json={"job_ids": ids[:3], "worker": "w1"}, headers=worker_headers)
    old = first.json["claims"]
    assert [c["attempt"] for c in old] == [1, 1, 1] and all(c["resume"] is None for c in old)
    blobs = _checkpoint_blob(epochs=3)
    for c, saved in zip(old, (blobs, blobs[:1], [])):
        for blob in saved:
            answer = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints", data=blob,
                                 headers=attempt_headers(worker_headers, c))
            assert answer.status_code == 201
    assert claim(client, ids[3], worker_headers, "w9").status_code == 200  # held, its lease running
    session = app.extensions["trainq"].sessions()
    session.execute(Job.__table__.update().where(Job.id.in_(ids[:3]))
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    again = client.post("/api/v1/worker/claims", json={"job_ids": ids + ids[:1], "worker": "w2"},
                        headers=worker_headers)
    new = again.json["claims"]
    assert [c.get("attempt") for c in new] == [2, 2, 2, None, None]
    assert new[4]["error"] == "not_claimable" and "twice" in new[4]["message"]  # one claim a job, never two tokens
    assert [c["resume"] and c["resume"]["epoch"] for c in new[:3]] == [3, 1, None]
    assert new[3]["error"] == "not_claimable" and new[3]["job_id"] == ids[3]
    resumed = client.get(f"/api/v1/worker/attempts/{new[0]['attempt_id']}/resume",
                         headers=attempt_headers(worker_headers, new[0]))
    assert resumed.data == blobs[2]
    stale = client.post(f"/api/v1/worker/attempts/{old[0]['attempt_id']}/heartbeat", json={},
                        headers=attempt_headers(worker_headers, old[0]))
    assert stale.status_code == 409
    events = [e["message"] for e in client.get(f"/api/v1/jobs/{ids[1]}/events").json["events"]]
    assert "attempt 2 claimed by w2, resuming from epoch 1" in events


def test_a_pickle_is_refused_as_a_checkpoint_and_stores_nothing(client, worker_headers, tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    job = submit(client)
    c = claim(client, job["id"], worker_headers).json
    answer = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints", data=pickle.dumps(Payload()),
                         headers=attempt_headers(worker_headers, c))
    assert answer.status_code == 400
    assert not marker.exists()
    assert client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json["checkpoints"] == []


def test_reconciler_resends_at_once_a_queued_job_the_broker_lost(client, app, redis_client):
    from trainq.broker import job_ids_in_broker

    services = app.extensions["trainq"]
    kept, lost = submit(client)["id"], submit(client)["id"]
    session = services.sessions()
    session.execute(Job.__table__.update().values(enqueued_at=utcnow() - timedelta(seconds=20)))
    session.commit()
    assert job_ids_in_broker(services.settings, {"cpu"}) == {kept, lost}
    redis_client.lrem("cpu:5", 1, redis_client.lrange("cpu:5", 0, -1)[0])  # kombu LPUSHes: index 0 is the newest
    assert job_ids_in_broker(services.settings, {"cpu"}) == {kept}

    def in_broker(pools):
        return job_ids_in_broker(services.settings, pools)

    result = jobs.reconcile(session, services.enqueue, timedelta(hours=1), in_broker=in_broker)
    session.commit()
    assert result["resent"] == 1 and queued_ids(redis_client) == [kept, lost]
    assert jobs.reconcile(session, services.enqueue, timedelta(hours=1), in_broker=in_broker)["resent"] == 0


def test_a_job_that_loses_its_worker_every_time_fails_after_max_attempts(client, app, worker_headers):
    services = app.extensions["trainq"]
    job = submit(client)
    session = services.sessions()
    for attempt in range(1, 4):
        assert claim(client, job["id"], worker_headers, f"w{attempt}").json["attempt"] == attempt
        session.execute(Job.__table__.update().where(Job.id == job["id"])
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        result = jobs.reconcile(session, lambda j: True, timedelta(hours=1), max_attempts=3)
        session.commit()
        assert result["failed"] == (1 if attempt == 3 else 0) and result["requeued"] == (0 if attempt == 3 else 1)
    done = client.get(f"/api/v1/jobs/{job['id']}").json
    assert done["status"] == "failed" and done["stop_reason"] == "error"
    assert "lost its worker on each of 3 attempts (last: w3)" in done["error"]
    assert claim(client, job["id"], worker_headers, "w4").status_code == 409


def test_priorities_map_onto_the_brokers_steps_higher_first():
    from trainq.broker import broker_priority

    assert [broker_priority(p) for p in (100, 50, 0, -50, -100, 1000)] == [0, 2, 5, 7, 9, 0]
    assert all(broker_priority(a) <= broker_priority(b) for a, b in zip(range(100, -100, -1), range(99, -101, -1)))
