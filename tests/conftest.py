"""Shared fixtures: a real PostgreSQL database (migrated by Alembic), a real Redis, an app, a client.

Environment: TRAINQ_TEST_PG (default postgresql+psycopg://postgres@127.0.0.1:5432) and TRAINQ_TEST_REDIS
(default redis://127.0.0.1:6379/7; that database is flushed before and after the run).
"""

from __future__ import annotations

from contextlib import contextmanager

import os
import uuid

import psycopg
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy.orm import sessionmaker

from trainq.service.app import create_app
from trainq.service.db import make_engine
from trainq.service.migrate import upgrade
from trainq.settings import Settings

PG_SERVER = os.environ.get("TRAINQ_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TRAINQ_TEST_REDIS", "redis://127.0.0.1:6379/7")
WORKER_TOKEN = "test-worker-token"


def _admin():
    server = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(f"{server}/postgres", autocommit=True)


@pytest.fixture(scope="session")
def make_database():
    """Create empty PostgreSQL databases on demand; drop them all at the end."""
    created = []

    def make() -> str:
        name = f"trainq_test_{uuid.uuid4().hex[:12]}"
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{PG_SERVER}/{name}"

    yield make
    with _admin() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(make_database) -> str:
    url = make_database()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture()
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return client


@pytest.fixture()
def settings(pg_url, redis_url, tmp_path) -> Settings:
    return Settings(database_url=pg_url, broker_url=redis_url, data_dir=tmp_path, worker_token=WORKER_TOKEN,
                    lease_seconds=30, requeue_after_seconds=300)


class TokenClient(FlaskClient):
    """A test client that sends its API token unless a test sets Authorization itself."""

    token: str | None = None

    def open(self, *args, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        return super().open(*args, headers=headers, **kwargs)


class JoinedEngine:
    """Stands for an engine whose every connection is the test's one (inside its outer transaction)."""

    def __init__(self, connection):
        self.connection = connection

    @contextmanager
    def connect(self):
        yield self.connection


@pytest.fixture()
def app(settings):
    """The app, its sessions joined to one outer transaction that is rolled back after the test."""
    app = create_app(settings)
    engine = make_engine(settings.resolved_database_url)
    connection = engine.connect()
    outer = connection.begin()
    app.extensions["trainq"].sessions = sessionmaker(bind=connection, expire_on_commit=False,
                                                     join_transaction_mode="create_savepoint")
    app.extensions["trainq"].read_sessions = None  # reads, too, inside the test's transaction
    app.extensions["trainq"].read_engine.dispose()
    app.extensions["trainq"].read_engine = None
    if app.extensions["trainq"].beats is not None:  # the one-statement heartbeats, too
        app.extensions["trainq"].beats.dispose()
        app.extensions["trainq"].beats = JoinedEngine(connection)
    app.test_client_class = TokenClient
    yield app
    outer.rollback()
    connection.close()
    engine.dispose()


@pytest.fixture()
def tokens(app) -> dict[str, str]:
    """Users admin (role admin), alice and bob (role user), each with an API token."""
    from trainq.service.auth import create_token, create_user

    with app.extensions["trainq"].sessions() as session:
        made = {name: create_token(session, create_user(session, name, role, password=f"{name}-password"))
                for name, role in (("admin", "admin"), ("alice", "user"), ("bob", "user"))}
        session.commit()
    return made


@pytest.fixture()
def client_as(app, tokens):
    """client_as("bob") -> a client signed in with bob's token; client_as(None) -> anonymous."""
    def make(name: str | None) -> TokenClient:
        c = app.test_client()
        c.token = tokens[name] if name else None
        return c
    return make


@pytest.fixture()
def client(client_as):
    return client_as("alice")


@pytest.fixture()
def anon(client_as):
    return client_as(None)


@pytest.fixture()
def worker_headers():
    return {"Authorization": f"Bearer {WORKER_TOKEN}"}
