"""What the blueprints share per app and per request: the app's Services (settings, sessions, storage, the broker
producer), the request's database session and its read connection. The factory and every blueprint import this
module; it imports none of them, as flaskr keeps `db.py` apart from `create_app`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, g, request
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from trainq.broker import EXPORT_TASK, SCORE_TASK, TRAIN_TASK, broker_priority, make_celery
from trainq.service.telemetry import BROKER_FAILURES
from trainq.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker
    storage: Path
    limiter: object = None  # auth.RateLimiter
    read_sessions: sessionmaker | None = None  # autocommit, for GET: no BEGIN and ROLLBACK round trips
    read_engine: Engine | None = None  # that autocommit engine, for plain Core reads (read_connection)
    tokens: object = None  # auth.TokenCache
    models: object = None  # inference.Sessions: onnxruntime sessions of model versions
    store: object = None  # objects.FileStore | objects.S3Store: checkpoints, datasets, model bundles, batch files
    beats: Engine | None = None  # PostgreSQL: autocommit, synchronous_commit off, for one-statement heartbeats
    _celery: object = None

    def celery(self):
        if self._celery is None:
            self._celery = make_celery(self.settings, "trainq-service")
        return self._celery

    def enqueue(self, job, members: list[str] | None = None) -> bool:
        """Send a job id to its pool's queue (with `members`, a pack's job ids in one message, for one worker to
        train together); False if the broker is unreachable (the reconciler retries)."""
        args = [job.id] if not members else [job.id, members]
        try:
            self.celery().send_task(TRAIN_TASK, args=args, queue=job.queue, priority=broker_priority(job.priority),
                                   retry=True,
                                   retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2})
            return True
        except Exception:  # noqa: BLE001 - any broker failure leaves the job queued in SQL
            log.warning("could not send job %s to the broker", job.id, exc_info=True)
            BROKER_FAILURES.inc()
            return False


    def export(self, version_id: str, pool: str) -> bool:
        """Send a model version's export to a worker of the pool that trained it; False if the broker is unreachable
        (the reconciler sends it again)."""
        return self._send(EXPORT_TASK, version_id, pool)

    def score(self, batch_id: str, pool: str) -> bool:
        """Send a batch to be scored by a worker of the pool; False if the broker is unreachable (sent again)."""
        return self._send(SCORE_TASK, batch_id, pool)

    def _send(self, task: str, object_id: str, pool: str) -> bool:
        try:
            self.celery().send_task(task, args=[object_id], queue=pool, priority=0, retry=True,
                                    retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2})
            return True
        except Exception:  # noqa: BLE001
            log.warning("could not send %s %s to the broker", task, object_id, exc_info=True)
            BROKER_FAILURES.inc()
            return False

    def broker_problem(self) -> str | None:
        """Why the broker cannot take messages now, or None: Redis answers a PING within a second; the embedded
        filesystem broker's folder exists."""
        url = self.settings.resolved_broker_url
        try:
            if url.startswith(("redis://", "rediss://")):
                import redis

                redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
            elif url.startswith("filesystem") and not (self.settings.broker_dir / "queue").is_dir():
                return f"the broker folder {self.settings.broker_dir / 'queue'} is missing"
        except Exception as exc:  # noqa: BLE001 - any failure to reach it means not ready
            return f"{type(exc).__name__}: {exc}"[:200]
        return None


def services() -> Services:
    return current_app.extensions["trainq"]


def db() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        found = services()
        reads = request.method in ("GET", "HEAD") and found.read_sessions is not None
        g.db = (found.read_sessions if reads else found.sessions)()
    return g.db


def read_connection() -> Connection:
    """A Core connection for the request's plain reads (autocommit: no BEGIN and ROLLBACK), closed at teardown. The
    most polled read (a job) uses it: checking a connection out of the pool is far less Python than an ORM session."""
    engine = services().read_engine
    if engine is None:  # no autocommit engine (the unit tests read inside their own transaction)
        return db().connection()
    if "reads" not in g:
        g.reads = engine.connect()
    return g.reads
