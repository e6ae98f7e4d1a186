"""The service's own upkeep of the jobs table on PostgreSQL: queue places stay index-only counts."""

from __future__ import annotations

import json
import time

from sqlalchemy import text

from trainq.service.app import create_app
from trainq.service.db import make_engine
from trainq.service.migrate import upgrade
from trainq.service.reconciler import reconcile_once, unvacuumed_rows, upkeep
from trainq.settings import Settings

QUEUED, FINISHED = 1500, 10_000
AHEAD = 750  # the jobs ahead of the one whose place is counted: the queued ones older than 750 s
BASE = "TIMESTAMPTZ '2026-01-01 00:00:00+00'"  # job i was created i seconds before it

PLACE = f"""EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM jobs
            WHERE pool = 'cpu' AND status = 'queued' AND priority = 0 AND created_at < {BASE} - interval '{AHEAD} s'"""


def heap_fetches(conn) -> int:
    """The table rows read by counting the queued jobs ahead, which must be an index-only scan of ix_jobs_queue."""
    def walk(node):
        yield node
        for child in node.get("Plans", []):
            yield from walk(child)

    plan = conn.scalar(text(PLACE))
    nodes = list(walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]))
    scans = [n for n in nodes if n.get("Index Name") == "ix_jobs_queue" and n["Node Type"] == "Index Only Scan"]
    assert len(scans) == 1, [n["Node Type"] for n in nodes]
    return scans[0]["Heap Fetches"]


def test_a_deep_queue_is_vacuumed_so_counting_the_jobs_ahead_reads_no_table_rows(make_database, redis_url, tmp_path):
    url = make_database()
    upgrade(url)
    engine = make_engine(url, autocommit=True)
    app = create_app(Settings(database_url=url, broker_url=redis_url, data_dir=tmp_path, worker_token="w"))
    try:
        with engine.connect() as conn:
            # The server's autovacuum must not do it first (it is off on our CI machine, on elsewhere).
            conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
            conn.execute(text(
                "INSERT INTO jobs (id, name, status, spec, pool, priority, params, max_epochs, created_at, attempts, "
                "cancel_requested, epoch, enqueued_at) SELECT md5(i::text), 'q', "
                "CASE WHEN i <= :queued THEN 'queued' ELSE 'succeeded' END, '{}', 'cpu', 0, 0, 1, "
                f"{BASE} - make_interval(secs => i), 0, false, 0, now() "  # just sent: the reconciler leaves them
                "FROM generate_series(1, :n) AS i"), {"queued": QUEUED, "n": QUEUED + FINISHED})
            deadline = time.monotonic() + 10
            while unvacuumed_rows(conn) < QUEUED + FINISHED and time.monotonic() < deadline:
                time.sleep(0.2)  # the statistics reach the shared view within about a second
            assert heap_fetches(conn) == AHEAD  # each queued job ahead: its visibility is read from the table

            assert upkeep(engine, rows=QUEUED + FINISHED + 1) is False  # fewer changed rows than asked: nothing done
            assert heap_fetches(conn) == AHEAD

            assert reconcile_once(app)["vacuumed"] == 1  # the reconciler's pass, at its default threshold
            assert heap_fetches(conn) == 0  # the visibility map now answers for every page
            assert unvacuumed_rows(conn) == 0
            assert upkeep(engine, rows=1) is False  # nothing changed since
            assert "vacuumed" not in reconcile_once(app)
    finally:
        engine.dispose()
        app.extensions["trainq"].read_engine.dispose()


def test_upkeep_does_nothing_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'trainq.db'}"
    upgrade(url)
    engine = make_engine(url, autocommit=True)
    try:
        assert upkeep(engine, rows=0) is False
    finally:
        engine.dispose()
