"""What operators scrape and probe: /metrics in Prometheus' text format (queue, jobs, workers from SQL; requests,
metric points, expired leases and broker failures counted), its optional token, and the liveness and readiness
probes. Across gunicorn's processes: tests/integration/test_operations.py."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WORKER_TOKEN
from tests.specs import mlp, with_
from trainq.service.app import create_app


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    from prometheus_client import CONTENT_TYPE_LATEST

    # the exposition format's header, once: a second charset makes Go's parser (Prometheus 3) fail the scrape
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    out = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_queue_jobs_and_workers_are_read_from_sql_at_each_scrape(app, client_as):
    admin = client_as("admin")
    for spec in (mlp(), mlp(), with_(mlp(), **{"resources": {"pool": "gpu-big", "device": "gpu"}})):
        assert admin.post("/api/v1/jobs", json=spec).status_code == 201
    beat = admin.post("/api/v1/worker/workers/w1@test/heartbeat", headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
                      json={"pool": "cpu", "kind": "cpu", "device": "cpu", "host": "h", "pid": 1, "concurrency": 1})
    assert beat.status_code == 200, beat.get_data(as_text=True)
    samples = scrape(app.test_client())
    assert value(samples, "trainq_queue_jobs", pool="cpu", device="any") == 2
    assert value(samples, "trainq_queue_jobs", pool="gpu-big", device="gpu") == 1
    assert value(samples, "trainq_jobs", status="queued") == 3 and value(samples, "trainq_jobs", status="running") == 0
    assert 0 <= value(samples, "trainq_queue_oldest_age_seconds", pool="cpu") < 60
    assert value(samples, "trainq_workers", pool="cpu", kind="cpu", state="online") == 1
    job_id = admin.get("/api/v1/jobs?limit=1").get_json()["jobs"][0]["id"]
    admin.post(f"/api/v1/jobs/{job_id}/cancel")
    samples = scrape(app.test_client())
    assert value(samples, "trainq_jobs", status="queued") == 2
    assert value(samples, "trainq_jobs", status="cancelled") == 1
    # no job name and no id in any label: route templates only
    labels = {v for key in samples for _, v in key[1]}
    assert not any(job_id in v or "digits-mlp" in v for v in labels), labels
    assert value(samples, "trainq_http_request_duration_seconds_count", route="/api/v1/jobs/<hexid:job_id>/cancel",
                 method="POST", code="200") >= 1


def test_points_stored_expired_leases_and_broker_failures_are_counted(app, client_as, worker_headers, settings):
    from trainq.service import jobs

    admin = client_as("admin")
    before = scrape(app.test_client())
    job_id = admin.post("/api/v1/jobs", json=mlp()).get_json()["id"]
    claim = admin.post(f"/api/v1/worker/jobs/{job_id}/claim", headers=worker_headers, json={"worker": "w"}).get_json()
    points = [["val_loss", step, step, 1.0 / step] for step in range(1, 6)]
    attempt = {**worker_headers, "X-Trainq-Attempt-Token": claim["token"]}
    for _ in range(2):  # sent twice (a retry): stored, and counted, once
        assert admin.post(f"/api/v1/worker/attempts/{claim['attempt_id']}/metrics", headers=attempt,
                          json={"points": points}).status_code == 200
    with app.extensions["trainq"].sessions() as session:  # the lease runs out: the reconciler requeues the job
        jobs.reconcile(session, lambda job, members=None: True, timedelta(seconds=300),
                       now=jobs.utcnow() + timedelta(seconds=settings.lease_seconds + 1))
        session.commit()
    app.extensions["trainq"].settings = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app.extensions["trainq"]._celery = None
    assert admin.post("/api/v1/jobs", json=mlp()).status_code == 201  # stored; the broker refused it
    after = scrape(app.test_client())
    assert value(after, "trainq_metric_points_total") - value(before, "trainq_metric_points_total") == 5
    assert value(after, "trainq_leases_expired_total") - value(before, "trainq_leases_expired_total") == 1
    assert value(after, "trainq_broker_publish_failures_total") - value(
        before, "trainq_broker_publish_failures_total") == 1


def test_a_metrics_token_keeps_metrics_to_whoever_holds_it(settings):
    app = create_app(settings.model_copy(update={"metrics_token": "scrape-me"}))
    client = app.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and "TRAINQ_METRICS_TOKEN" in refused.get_json()["message"]
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "trainq_jobs" in client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).get_data(as_text=True)


def test_liveness_asks_nothing_and_readiness_asks_the_database_the_broker_and_the_store(settings):
    client = create_app(settings).test_client()
    assert client.get("/api/v1/health/live").get_json() == {"status": "live"}
    ready = client.get("/api/v1/health/ready")
    assert ready.status_code == 200 and ready.get_json()["broker"] == "ok"
    no_broker = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})).test_client()
    answer = no_broker.get("/api/v1/health/ready")
    assert answer.status_code == 503 and "broker" in answer.get_json() and "database" not in answer.get_json()
    assert no_broker.get("/api/v1/health/live").status_code == 200  # a broker outage restarts nothing
    no_database = create_app(settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/x"}))
    answer = no_database.test_client().get("/api/v1/health/ready")
    assert answer.status_code == 503 and "database" in answer.get_json()
    no_bucket = create_app(settings.model_copy(update={"storage_url": "s3://trainq-nowhere/x",
                                                       "s3_endpoint_url": "http://127.0.0.1:1"}))
    answer = no_bucket.test_client().get("/api/v1/health/ready")
    assert answer.status_code == 503 and "trainq-nowhere" in answer.get_json()["storage"]
    assert answer.get_json().keys() == {"status", "storage"}  # database and broker answer
    scrape = no_database.test_client().get("/metrics")  # a failed scrape, never a 500 nor a wrong figure
    assert scrape.status_code == 503 and "health/ready" in scrape.get_json()["message"]
