"""The SQL layer: declarative base with stable constraint names, engines for SQLite and PostgreSQL, sessions."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_engine(url: str, autocommit: bool = False, relaxed: bool = False) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys so threads can share it. An autocommit
    engine (for plain reads: no BEGIN and ROLLBACK) has a pool of its own whose connections are set so once, not on
    every checkout as `execution_options(isolation_level=...)` does. A `relaxed` one (PostgreSQL, autocommit) does not
    wait for its commits to reach the disk (synchronous_commit off): for heartbeats, whose loss in a database crash
    costs a lease extension, never a fenced write (the server still never applies a statement twice or half)."""
    options: dict = {"isolation_level": "AUTOCOMMIT"} if autocommit or relaxed else {}
    if relaxed and not url.startswith("sqlite"):
        options["connect_args"] = {"options": "-c synchronous_commit=off"}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # No pre-ping: it costs a round trip on every checkout (a third of a job read). Connections are recycled
    # hourly, and one that a database restart broke is invalidated on its first error (the pool then reconnects).
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600, **options)


def heartbeat_engine(url: str) -> Engine | None:
    """The engine of the one-statement heartbeat paths, on PostgreSQL; None elsewhere (they take the ORM path)."""
    return None if url.startswith("sqlite") else make_engine(url, relaxed=True)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
