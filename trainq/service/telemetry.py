"""What the service counts for Prometheus (monitoring.py adds what it reads from SQL when scraped).

The counters and the request-duration histogram live in each process; under gunicorn with several processes,
prometheus-client's multiprocess mode adds them up across processes (`trainq serve` sets PROMETHEUS_MULTIPROC_DIR
before anything imports prometheus_client, and marks a process dead when gunicorn replaces it). The queue, job and
worker gauges are read from SQL at scrape time: every service instance reports the same figures, and nothing has to
keep them in step. Labels are pools, devices, kinds, states, statuses, route templates (never an id), methods and
status codes, and a prediction's model name and version: no job name and no other user data (Prometheus' naming
guide: base units, `_total` on counters).
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram

REQUEST_SECONDS = Histogram("trainq_http_request_duration_seconds", "HTTP requests by route template, method and code",
                            ["route", "method", "code"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
METRIC_POINTS = Counter("trainq_metric_points", "Metric points stored from workers")
LEASES_EXPIRED = Counter("trainq_leases_expired", "Attempts whose lease expired (their worker went silent)")
PREDICTIONS = Counter("trainq_predictions", "Prediction requests (/predict and v2 infer) by model, version and HTTP "
                      "status code", ["model", "version", "code"])
PREDICTION_SECONDS = Histogram("trainq_prediction_duration_seconds", "Prediction request durations by model and "
                               "version", ["model", "version"],
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
BROKER_FAILURES = Counter("trainq_broker_publish_failures", "Messages the broker did not take (sent again later)")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_gone(pid: int) -> None:
    """gunicorn replaced a process: its live gauges go (its counters stay counted)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
