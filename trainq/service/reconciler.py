"""The reconciler: a thread in the service that requeues jobs whose worker went silent or whose message was lost."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from flask import Flask
from sqlalchemy import text

from trainq.broker import job_ids_in_broker
from trainq.service import jobs

log = logging.getLogger(__name__)

LOCK_KEY = 0x7472_6169_6E71  # "trainq": one reconciler pass at a time across service processes (PostgreSQL)


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
    if any(result.values()):
        log.info("reconciled: %s", result)
    return result


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
        for job in created:
            if not jobs.mark_enqueued(session, job, services.enqueue):
                session.commit()
        launched += len(created)
    return launched


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
