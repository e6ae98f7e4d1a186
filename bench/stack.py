"""Start a service on PostgreSQL and Redis (and workers) for a benchmark, as the integration tests do."""

from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import common  # noqa: F401
import psycopg
import redis

from tests.integration.stack import Stack

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/8"


@contextmanager
def running_stack(workers: int = 1, **env: str):
    name = f"trainq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS).flushdb()
    stack = Stack(Path(tempfile.mkdtemp(prefix="trainq-bench-")),
                  TRAINQ_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                  TRAINQ_BROKER_URL=REDIS, TRAINQ_SUBMIT_PER_MINUTE="100000000", **env)
    try:
        stack.serve()
        for i in range(workers):
            stack.worker(f"worker{i}")
        yield stack
    finally:
        stack.close()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(REDIS).flushdb()
