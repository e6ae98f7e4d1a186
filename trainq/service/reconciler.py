"""The reconciler: a thread in the service that requeues jobs whose worker went silent or whose message was lost."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from flask import Flask
from sqlalchemy import text

from trainq.broker import job_ids_in_broker
from trainq.service import jobs, registry, scoring

log = logging.getLogger(__name__)

LOCK_KEY = 0x7472_6169_6E71  # "trainq": one reconciler pass at a time across service processes (PostgreSQL)
UPKEEP_ROWS = 1000  # rows of the jobs table inserted or left dead since its last vacuum before the service vacuums it


def reconcile_once(app: Flask) -> dict | None:
    services = app.extensions["trainq"]
    with services.sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_KEY}):
                return None  # another service process is reconciling right now
        result = jobs.reconcile(session, services.enqueue,
                                timedelta(seconds=services.settings.requeue_after_seconds),
                                in_broker=lambda queues: job_ids_in_broker(services.settings, queues),
                                max_attempts=services.settings.max_attempts)
        session.commit()
        result["sweeps"] = settle_sweeps(app, session)
        result["exports"] = resend_exports(services, session)
    if services.read_engine is not None and upkeep(services.read_engine):
        result["vacuumed"] = 1
    if any(result.values()):
        log.info("reconciled: %s", result)
    return result


def upkeep(engine, rows: int = UPKEEP_ROWS) -> bool:
    """PostgreSQL: VACUUM the jobs table once `rows` of it were inserted or left dead since its last vacuum; return
    whether it did. A queued job's place is an index-only count of the queued jobs ahead of it, and every one of them
    on a page the visibility map does not yet mark all-visible costs a heap fetch (2,900 jobs ahead: 1.3 ms before a
    vacuum, 0.5 ms after). The server's autovacuum may be off or far behind (it is off on our CI machine), so the
    service does not leave this to it. A plain VACUUM visits only the pages not yet all-visible, and PostgreSQL skips
    the indexes while few pages hold dead rows, so its cost follows the rows changed, not the table's size; ANALYZE,
    which samples the whole table, stays the server's business. `engine` must be the autocommit one: VACUUM cannot
    run inside a transaction. A session-level advisory lock keeps two service processes from vacuuming at once."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        if unvacuumed_rows(conn) < rows or not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY + 1}):
            return False
        try:
            conn.execute(text("VACUUM jobs"))
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY + 1})
    return True


def unvacuumed_rows(conn) -> int:
    """Rows of the jobs table inserted or left dead since its last vacuum, by PostgreSQL's statistics (which reach
    this view up to a second after the writes)."""
    return conn.scalar(text("SELECT n_ins_since_vacuum + n_dead_tup FROM pg_stat_user_tables "
                            "WHERE relid = 'jobs'::regclass")) or 0


def settle_sweeps(app: Flask, session) -> int:
    """Carry every running sweep on: trials that ended outside the finish route (lost, given up, cancelled),
    trials not yet launched (after a restart). Return how many trials it launched."""
    from trainq.service import sweeps

    services = app.extensions["trainq"]
    launched = 0
    for sweep_id in sweeps.running_sweeps(session):
        try:
            created = sweeps.settle(session, services.settings, sweep_id)
            session.commit()
        except Exception:  # noqa: BLE001 - one broken sweep must not stop the others
            session.rollback()
            log.exception("settling sweep %s failed", sweep_id)
            continue
        registry.send_exports(session, services.export)
        jobs.enqueue_all(session, created, services.enqueue)
        launched += len(created)
    return launched


def resend_exports(services, session) -> int:
    """Model versions still exporting long after they were registered, and batches whose worker went silent: send
    them to their pool again."""
    from trainq.service.db import utcnow

    after = timedelta(seconds=services.settings.requeue_after_seconds)
    stale = registry.stale_exports(session, utcnow(), after)
    for version_id, pool in stale:
        services.export(version_id, pool)
    batches = scoring.stale(session, utcnow(), after)
    for batch_id, pool in batches:
        services.score(batch_id, pool)
    return len(stale) + len(batches)


def start(app: Flask) -> threading.Event:
    """Run reconcile_once every reconcile_seconds in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    interval = app.extensions["trainq"].settings.reconcile_seconds

    def loop():
        while not stop.wait(interval):
            try:
                reconcile_once(app)
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.exception("reconciler pass failed")

    threading.Thread(target=loop, name="reconciler", daemon=True).start()
    return stop
