"""What a platform team runs next to the service, on real processes: /metrics added up across gunicorn's processes,
and the probes a Kubernetes deployment points at (deploy/kubernetes is checked in tests/test_deploy.py)."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.stack import Stack
from tests.specs import mlp

pytestmark = pytest.mark.integration


def test_metrics_add_up_every_gunicorn_process(make_database, tmp_path):
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL="redis://127.0.0.1:6379/9")
    try:
        stack.serve()  # two gunicorn processes on PostgreSQL
        job_id = stack.submit(mlp())
        reads = 60
        for _ in range(reads):  # fresh connections: gunicorn hands them to either process
            assert requests.get(f"{stack.url}/api/v1/jobs/{job_id}", timeout=10,
                                headers=dict(stack.http.headers)).status_code == 200
        text = requests.get(f"{stack.url}/metrics", timeout=10).text
        counts = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "trainq_http_request_duration_seconds_count"}
        assert counts[(("code", "200"), ("method", "GET"), ("route", "/api/v1/jobs/<hexid:job_id>"))] == reads
        assert 'trainq_queue_jobs{device="any",pool="cpu"} 1.0' in text
        assert requests.get(f"{stack.url}/api/v1/health/live", timeout=10).json() == {"status": "live"}
        assert requests.get(f"{stack.url}/api/v1/health/ready", timeout=10).status_code == 200
        # both processes served some of the reads (one file each), and the scrape added them up to all of them
        assert len(list((tmp_path / "data").glob("prometheus-*/histogram_*.db"))) == 2
    finally:
        stack.close()


def test_twenty_idle_workers_hold_two_redis_connections_each_and_broadcast_nothing(make_database, tmp_path):
    """Celery's heartbeats, gossip, mingle, events and remote control stay off (TRAINQ_CELERY_EVENTS=0): a fleet of
    workers costs Redis two connections each (consuming and publishing), and an idle one sends nothing."""
    import threading
    import time

    import redis

    db = 12  # a database of its own: Redis' client list says which database each connection uses
    url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(url).flushdb()
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=url)
    count = 20
    try:
        stack.serve()
        for i in range(count):
            stack.start(f"w{i}", "worker", "--pool", "cpu", "--name", f"w{i}@test")
        for i in range(count):
            stack.wait_for_log(f"w{i}", "ready.", timeout=180)
        time.sleep(3)  # past the first heartbeat interval of each
        server = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        ours = [c for c in server.client_list() if c.get("db") == str(db)]
        assert len(ours) <= 2 * count + 4, len(ours)  # the service's producer pool: a few more
        published: list[str] = []

        def watch() -> None:
            with redis.Redis.from_url("redis://127.0.0.1:6379/0").monitor() as monitor:
                until = time.monotonic() + 5
                for command in monitor.listen():
                    if f"/{db}." in command["command"] or "PUBLISH" in command["command"].upper():
                        published.append(command["command"][:120])
                    if time.monotonic() > until:
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join(10)
        assert published == [], published[:5]
        # and they still work: a job goes through one of them
        job = stack.wait(stack.submit(mlp(epochs=1)), timeout=120)
        assert job["status"] == "succeeded", stack.logs()
    finally:
        stack.close()
        redis.Redis.from_url(url).flushdb()
