"""What a platform team runs next to the service, on real processes: /metrics added up across gunicorn's processes,
and the probes a Kubernetes deployment points at (deploy/kubernetes is checked in tests/test_deploy.py)."""

from __future__ import annotations

import os

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


def test_ten_idle_workers_hold_two_redis_connections_each_and_broadcast_nothing(make_database, tmp_path):
    """Celery's heartbeats, gossip, mingle, events and remote control stay off (TRAINQ_CELERY_EVENTS=0): a fleet of
    workers costs Redis two connections each (consuming and publishing), and an idle one sends nothing."""
    import threading
    import time

    import redis

    db = 12  # a database of its own: Redis' client list says which database each connection uses
    url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(url).flushdb()
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=url)
    count = 10  # a fleet's cost per worker shows with ten as with twenty (which took 80 s of worker start-up)
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


def test_a_real_prometheus_scrapes_the_service_and_answers_a_query(make_database, tmp_path):
    """Debian's Prometheus, as an operator runs it: it scrapes /metrics (the exposition format's content type,
    sent once) and answers a query for trainq_jobs through its HTTP API."""
    import shutil
    import subprocess

    from tests.integration.stack import free_port, wait_until

    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("TRAINQ_REQUIRE_BROWSER"):  # under .ci/run, which installs it: a missing one fails
            pytest.fail("prometheus is not installed (apt-get install prometheus)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL="redis://127.0.0.1:6379/9")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: trainq
    static_configs: [{{targets: ["127.0.0.1:{stack.port}"]}}]
""")
    prometheus = None
    try:
        stack.serve()
        for _ in range(3):
            stack.submit(mlp())
        log = open(tmp_path / "prometheus.log", "ab")
        prometheus = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        api = f"http://127.0.0.1:{port}/api/v1"

        def answered(query: str):
            try:
                found = requests.get(f"{api}/query", params={"query": query}, timeout=2).json()
            except (requests.RequestException, ValueError):
                return None
            return found["data"]["result"] if found.get("status") == "success" and found["data"]["result"] else None

        queued = wait_until(lambda: answered('trainq_jobs{status="queued"}'), timeout=60, what="a scraped trainq_jobs")
        assert float(queued[0]["value"][1]) == 3
        targets = requests.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        stack.close()
