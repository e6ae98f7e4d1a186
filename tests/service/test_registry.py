"""The registry's rules against real PostgreSQL and Redis, the worker's calls made by hand: numbering, who may
register what, the export's states and its fencing, aliases, deletion."""

from __future__ import annotations

import json

from tests.service.test_api import attempt_headers, claim, submit
from tests.specs import mlp, with_

BLOB: list[bytes] = []


def checkpoint() -> bytes:
    if not BLOB:
        from trainq.models.engine import fit
        from trainq.models.spec import parse_spec

        fit(parse_spec(mlp(epochs=1)), checkpoint_sink=lambda b, i: BLOB.append(b))
    return BLOB[-1]


def succeeded(client, worker_headers, spec=None) -> dict:
    """A job trained 'by hand': claimed, one checkpoint uploaded, finished succeeded."""
    job = submit(client, spec or mlp(epochs=1))
    c = claim(client, job["id"], worker_headers).json
    headers = attempt_headers(worker_headers, c)
    assert client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints", data=checkpoint(),
                       headers=headers).status_code == 201
    done = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/finish", headers=headers, json={
        "status": "succeeded", "stop_reason": "completed", "epoch": 1, "metrics": {"test_accuracy": 0.5}})
    assert done.status_code == 200, done.json
    return job


def export_messages(redis_client) -> list[str]:
    keys = ["cpu"] + [f"cpu:{step}" for step in range(1, 10)]
    return [json.loads(m)["headers"]["argsrepr"].strip("[]'\"") for key in keys
            for m in redis_client.lrange(key, 0, -1) if json.loads(m)["headers"]["task"] == "trainq.export"]


def test_registering_numbers_versions_and_sends_each_export_to_the_jobs_pool(client, worker_headers, redis_client):
    job = succeeded(client, worker_headers)
    first = client.post("/api/v1/models", json={"name": "digits", "job_id": job["id"]})
    second = client.post("/api/v1/models", json={"name": "digits", "job_id": job["id"]})
    assert first.status_code == second.status_code == 201
    assert (first.json["version"], second.json["version"]) == (1, 2)
    assert first.json["state"] == "exporting" and first.json["metrics"] == {"test_accuracy": 0.5}
    assert len(export_messages(redis_client)) == 2
    model = client.get("/api/v1/models/digits").json
    assert [v["version"] for v in model["versions"]] == [2, 1] and model["latest"] == 2
    listed = client.get("/api/v1/models").json["models"]
    assert listed == [{"name": "digits", "latest": 2, "versions": 2, "newest_ready": None, "aliases": {},
                       "created_at": listed[0]["created_at"]}]


def test_what_cannot_be_registered_is_refused_with_the_field(client, client_as, worker_headers):
    queued = submit(client)
    answer = client.post("/api/v1/models", json={"name": "digits", "job_id": queued["id"]})
    assert answer.status_code == 409 and answer.json["errors"][0]["path"] == "job_id"
    assert "is queued: a succeeded job's model is registered as it ended" in answer.json["message"]
    with_checkpoint = client.post("/api/v1/models", json={"name": "digits", "job_id": queued["id"],
                                                          "checkpoint": "best"})
    assert with_checkpoint.status_code == 409  # a queued job has no checkpoint to name
    wrong = client.post("/api/v1/models", json={"name": "digits", "job_id": queued["id"], "checkpoint": "first"})
    assert wrong.status_code == 422 and wrong.json["errors"][0]["path"] == "checkpoint"
    job = succeeded(client, worker_headers)
    for body, path in (({"name": "bad name", "job_id": job["id"]}, "name"), ({"job_id": job["id"]}, "name"),
                       ({"name": "m", "job_id": "123"}, "job_id")):
        answer = client.post("/api/v1/models", json=body)
        assert answer.status_code == 422 and answer.json["errors"][0]["path"] == path, answer.json
    assert client_as("bob").post("/api/v1/models", json={"name": "m", "job_id": job["id"]}).status_code == 404
    assert client.get("/api/v1/models").json["models"] == []  # nothing half-registered


def test_the_export_claim_fences_an_earlier_one_and_a_failure_says_why(client, worker_headers):
    job = succeeded(client, worker_headers)
    client.post("/api/v1/models", json={"name": "digits", "job_id": job["id"]})
    first = client.post(f"/api/v1/worker/exports/{_version_id(client)}/claim", headers=worker_headers).json
    version_id = first["version_id"]
    assert first["spec"]["name"] == job["name"] and first["dataset"] is None
    blob = client.get(first["checkpoint_url"], headers={**worker_headers, "X-Trainq-Attempt-Token": first["token"]})
    assert blob.data == checkpoint()
    second = client.post(f"/api/v1/worker/exports/{version_id}/claim", headers=worker_headers).json
    stale = {**worker_headers, "X-Trainq-Attempt-Token": first["token"]}
    live = {**worker_headers, "X-Trainq-Attempt-Token": second["token"]}
    assert client.post(f"/api/v1/worker/exports/{version_id}/verifying", headers=stale).status_code == 409
    assert client.post(f"/api/v1/worker/exports/{version_id}/verifying", headers=live).json == {"state": "verifying"}
    assert client.get("/api/v1/models/digits/versions/1").json["state"] == "verifying"
    incomplete = client.post(f"/api/v1/worker/exports/{version_id}/finish", headers=live, json={"state": "ready"})
    assert incomplete.status_code == 400  # no ONNX file uploaded: never ready
    assert client.put(f"/api/v1/worker/exports/{version_id}/files/../x", headers=live, data=b"x").status_code == 404
    assert client.put(f"/api/v1/worker/exports/{version_id}/files/evil.sh", headers=live,
                      data=b"x").status_code == 400
    failed = client.post(f"/api/v1/worker/exports/{version_id}/finish", headers=live,
                         json={"state": "failed", "error": "ExportError: onnxruntime and torch disagree"})
    assert failed.json == {"state": "failed"}
    assert client.post(f"/api/v1/worker/exports/{version_id}/claim", headers=worker_headers).status_code == 409
    answer = client.post("/api/v1/models/digits/versions/1/predict", json={"inputs": [[0] * 64]})
    assert answer.status_code == 409 and "failed: ExportError: onnxruntime and torch disagree" in answer.json["message"]
    v2 = client.post("/v2/models/digits/versions/1/infer", json={"inputs": []})
    assert v2.status_code == 409 and set(v2.json) == {"error", "errors"}
    assert client.post("/v2/models/digits/infer", json={"inputs": []}).status_code == 409  # no ready version
    ready = client.get("/v2/models/digits/ready")  # the protocol reads the code: 4xx is not ready
    assert ready.status_code == 400 and ready.json["ready"] is False and "no ready version" in ready.json["error"]


def _version_id(client) -> str:
    from sqlalchemy import select

    from trainq.service.tables import ModelVersion

    with client.application.extensions["trainq"].sessions() as session:
        return session.scalars(select(ModelVersion.id).order_by(ModelVersion.created_at.desc())).first()


def test_aliases_move_are_audited_and_guard_deletion(client, client_as, worker_headers):
    job = succeeded(client, worker_headers)
    for _ in range(2):
        client.post("/api/v1/models", json={"name": "digits", "job_id": job["id"]})
    put = lambda alias, body: client.put(f"/api/v1/models/digits/aliases/{alias}", json=body)  # noqa: E731
    assert put("champion", {"version": 1}).json == {"model": "digits", "alias": "champion", "version": 1,
                                                    "previous": None}
    assert put("champion", {"version": 2}).json["previous"] == 1
    assert put("champion", {"version": 3}).status_code == 404
    assert put("Champion", {"version": 1}).status_code == 400
    assert put("challenger", {"version": "1"}).status_code == 422
    assert client.get("/api/v1/models/digits@champion").json["version"] == 2
    assert client.get("/api/v1/models/digits@nope").status_code == 404
    refused = client.delete("/api/v1/models/digits/versions/2")
    assert refused.status_code == 409 and "@champion" in refused.json["message"]
    assert client.delete("/api/v1/models/digits").status_code == 409
    assert client.delete("/api/v1/models/digits/versions/1").status_code == 204
    assert client_as("bob").put("/api/v1/models/digits/aliases/champion", json={"version": 2}).status_code == 404
    assert client_as("admin").get("/api/v1/models/digits").status_code == 200  # an admin sees everyone's
    assert client.delete("/api/v1/models/digits/aliases/champion").status_code == 204
    assert client.delete("/api/v1/models/digits").status_code == 204
    assert client.get("/api/v1/models/digits").status_code == 404
    audit = client_as("admin").get("/api/v1/audit").json["entries"]
    assert [(e["action"], (e["detail"] or {}).get("version")) for e in audit][:4] == [
        ("delete", None), ("alias_delete", None), ("delete", 1), ("alias", 2)]


def test_register_as_makes_a_version_when_the_job_succeeds(client, worker_headers, redis_client):
    job = succeeded(client, worker_headers, with_(mlp(epochs=1), register_as="auto"))
    version = client.get("/api/v1/models/auto/versions/1").json
    assert version["job_id"] == job["id"] and version["created_by"] == "register_as"
    events = [e["message"] for e in client.get(f"/api/v1/jobs/{job['id']}/events").json["events"]]
    assert "registered as auto version 1; a worker exports it" in events
    assert len(export_messages(redis_client)) == 1
    bad = client.post("/api/v1/jobs", json=with_(mlp(), register_as="no spaces"))
    assert bad.status_code == 422 and bad.json["errors"][0]["path"] == "register_as"


def test_a_batch_needs_a_ready_version_and_an_input_and_is_the_owners_alone(client, client_as, worker_headers,
                                                                           redis_client):
    job = succeeded(client, worker_headers)
    client.post("/api/v1/models", json={"name": "digits", "job_id": job["id"]})
    refused = client.post("/api/v1/models/digits/versions/1/batch", json={"dataset": "x"})
    assert refused.status_code == 409 and "exporting" in refused.json["message"]  # not ready yet
    from trainq.service.db import utcnow
    from trainq.service.tables import ModelVersion

    with client.application.extensions["trainq"].sessions() as session:  # as if its worker had exported it
        version = session.get(ModelVersion, _version_id(client))
        version.state, version.ready_at = "ready", utcnow()
        version.signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}], "outputs": []}
        session.commit()
    assert client.post("/api/v1/models/digits/batch", json={"dataset": "nope"}).status_code == 404
    assert client.post("/api/v1/models/digits/batch", json={"data": 1}).json["errors"][0]["path"] == "dataset"
    assert client.post("/api/v1/models/digits/batch", data=b"", content_type="text/csv").status_code == 400
    started = client.post("/api/v1/models/digits/batch", data=b"a,b\n1,2\n", content_type="text/csv")
    assert started.status_code == 202 and started.json["status"] == "queued" and started.json["source"] == "csv"
    assert [json.loads(m)["headers"]["task"] for m in redis_client.lrange("cpu", 0, -1)].count("trainq.score") == 1
    location = started.headers["Location"]
    assert client.get(location).json["progress"] == 0.0
    assert client.get(location + "/output").status_code == 409
    assert client_as("bob").get(location).status_code == 404
    claimed = client.post(f"/api/v1/worker/batches/{started.json['id']}/claim", headers=worker_headers).json
    live = {**worker_headers, "X-Trainq-Attempt-Token": claimed["token"]}
    assert client.get(claimed["input_url"], headers=live).data == b"a,b\n1,2\n"
    client.post(f"/api/v1/worker/batches/{started.json['id']}/progress", headers=live, json={"rows": 10, "done": 4})
    assert client.get(location).json["progress"] == 0.4
    assert client.post(f"/api/v1/worker/batches/{started.json['id']}/finish", headers=live,
                       json={"status": "succeeded"}).status_code == 400  # no output uploaded: never succeeded


def test_v2_readiness_is_its_status_code_for_a_version_not_ready(client, worker_headers):
    job = succeeded(client, worker_headers)
    assert client.post("/api/v1/models", json={"name": "slow", "job_id": job["id"]}).status_code == 201
    ready = client.get("/v2/models/slow/ready")
    assert ready.status_code == 400 and ready.json["ready"] is False  # exporting: 4xx, as clients read it
    assert client.get("/v2/models/slow/versions/1/ready").status_code == 400
    assert client.get("/v2/models/nothing/ready").status_code == 404


def test_a_cancelled_runs_best_checkpoint_is_registered_when_asked_for(client, worker_headers):
    job = submit(client, mlp(epochs=3))
    c = claim(client, job["id"], worker_headers).json
    headers = attempt_headers(worker_headers, c)
    for best in (True, False):  # the best epoch's checkpoint, then a later one that was not
        assert client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints", data=checkpoint(),
                           headers=headers, query_string={"is_best": "1" if best else "0"}).status_code == 201
    client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/finish", headers=headers,
                json={"status": "cancelled", "stop_reason": "cancelled", "epoch": 1})
    refused = client.post("/api/v1/models", json={"name": "kept", "job_id": job["id"]})
    assert refused.status_code == 409 and "--checkpoint best" in refused.json["message"]
    checkpoints = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json["checkpoints"]
    best = next(x for x in checkpoints if x["is_best"])
    answer = client.post("/api/v1/models", json={"name": "kept", "job_id": job["id"], "checkpoint": "best"})
    assert answer.status_code == 201, answer.json
    assert answer.json["checkpoint_id"] == best["id"] and not best["is_latest"]


def test_a_version_is_described_and_tagged_as_a_run_is_and_names_its_run(client, client_as, worker_headers):
    job = succeeded(client, worker_headers)
    assert client.post("/api/v1/models", json={"name": "described", "job_id": job["id"]}).status_code == 201
    base = "/api/v1/models/described/versions/1"
    answer = client.put(f"{base}/description", json={"description": "Champion of **May**. <img src=x onerror=1>"})
    assert answer.status_code == 200 and "<strong>May</strong>" in answer.json["html"]
    assert "<img" not in answer.json["html"] and "&lt;img" in answer.json["html"]
    assert client.put(f"{base}/tags/approved", json={"value": True}).json["tags"] == {"approved": "true"}
    version = client.get(base).json
    assert version["description"].startswith("Champion of **May**") and version["tags"] == {"approved": "true"}
    assert version["job_id"] == job["id"]
    assert client.delete(f"{base}/tags/approved").json["tags"] == {}
    assert client.put(f"{base}/description", json={"note": "x"}).json["errors"][0]["path"] == "description"
    assert client_as("bob").put(f"{base}/tags/x", json={"value": "y"}).status_code == 404
