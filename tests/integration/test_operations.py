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
        assert f'trainq_queue_jobs{{device="any",pool="cpu"}} 1.0' in text
        assert requests.get(f"{stack.url}/api/v1/health/live", timeout=10).json() == {"status": "live"}
        assert requests.get(f"{stack.url}/api/v1/health/ready", timeout=10).status_code == 200
        # both processes served some of the reads (one file each), and the scrape added them up to all of them
        assert len(list((tmp_path / "data").glob("prometheus-*/histogram_*.db"))) == 2
    finally:
        stack.close()
