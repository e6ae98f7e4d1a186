"""Migrations build the schema from empty on PostgreSQL and SQLite, and the models match them exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from trainq.service.db import Base, make_engine
from trainq.service.migrate import downgrade, upgrade

TABLES = {"alembic_version", "jobs", "attempts", "metrics", "checkpoints", "events", "users", "api_tokens", "audit_log", "datasets", "dataset_uploads", "workers", "sweeps", "models", "model_versions", "model_aliases", "batch_jobs"}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request, make_database, tmp_path):
    return make_database() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"


def test_upgrade_from_empty_then_down_and_up_again(empty_url):
    upgrade(empty_url)
    engine = make_engine(empty_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    uniques = inspect(engine).get_unique_constraints("metrics")
    assert [u["column_names"] for u in uniques] == [["job_id", "name", "step"]]
    downgrade(empty_url, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(empty_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_models_match_the_migrations(empty_url):
    upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
