"""The service's own upkeep of the jobs table on PostgreSQL: queue places stay index-only counts."""

from __future__ import annotations

import json
import time

from sqlalchemy import text

from trainq.service.db import make_engine
from trainq.service.migrate import upgrade
from trainq.service.reconciler import upkeep

QUEUED = 1500

PLACE = """EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM jobs
           WHERE pool = 'cpu' AND status = 'queued' AND priority = 0 AND created_at < now()"""


def heap_fetches(conn) -> int:
    def walk(node):
        yield node.get("Heap Fetches", 0)
        for child in node.get("Plans", []):
            yield from walk(child)

    plan = conn.scalar(text(PLACE))
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return sum(walk(plan[0]["Plan"]))


def changed_rows(conn) -> int:
    return conn.scalar(text("SELECT n_ins_since_vacuum + n_dead_tup FROM pg_stat_user_tables "
                            "WHERE relid = 'jobs'::regclass"))


def test_a_deep_queue_is_vacuumed_so_counting_the_jobs_ahead_reads_no_table_rows(make_database):
    url = make_database()
    upgrade(url)
    engine = make_engine(url, autocommit=True)
    try:
        with engine.connect() as conn:
            # The server's autovacuum must not do it first (it is off on our CI machine, on elsewhere).
            conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
            conn.execute(text(
                "INSERT INTO jobs (id, name, status, spec, pool, priority, params, max_epochs, created_at, attempts, "
                "cancel_requested, epoch) SELECT md5(i::text), 'q', 'queued', '{}', 'cpu', 0, 0, 1, "
                "now() - make_interval(secs => i), 0, false, 0 FROM generate_series(1, :n) AS i"), {"n": QUEUED})
            deadline = time.monotonic() + 10
            while changed_rows(conn) < QUEUED and time.monotonic() < deadline:
                time.sleep(0.2)  # the statistics reach the shared view within about a second
            assert heap_fetches(conn) == QUEUED  # every queued row's visibility is read from the table

            assert upkeep(engine, rows=QUEUED + 1) is False  # fewer changed rows than asked for: nothing done
            assert heap_fetches(conn) == QUEUED

            assert upkeep(engine, rows=QUEUED) is True
            assert heap_fetches(conn) == 0  # the visibility map now answers for every page
            assert changed_rows(conn) == 0
            assert upkeep(engine, rows=1) is False  # nothing changed since
    finally:
        engine.dispose()


def test_upkeep_does_nothing_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'trainq.db'}"
    upgrade(url)
    engine = make_engine(url, autocommit=True)
    try:
        assert upkeep(engine, rows=0) is False
    finally:
        engine.dispose()
