from __future__ import annotations

import pytest

from tests.integration.stack import Stack


@pytest.fixture(scope="module")
def stack(make_database, redis_url, tmp_path_factory):
    """A service on PostgreSQL and Redis with one CPU worker, shared by the tests of a module."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    url = make_database()
    s = Stack(tmp_path_factory.mktemp("stack"), TRAINQ_DATABASE_URL=url, TRAINQ_BROKER_URL=redis_url,
              TRAINQ_MAX_BODY_BYTES=str(4 * 1024 * 1024), TRAINQ_SYSTEM_METRICS_SECONDS="1")
    try:
        s.serve()
        s.worker()
        yield s
    finally:
        s.close()
