"""The caller's own objects, found by id or name. What the caller may not see answers 404, so another user's job,
dataset or sweep looks like none at all. The blueprints share these; none of them imports another blueprint."""

from __future__ import annotations

import re

from sqlalchemy import select

from trainq.models.spec import DatasetInfo
from trainq.service.auth import principal
from trainq.service.context import db
from trainq.service.http import fail
from trainq.service.tables import Dataset, Job, Sweep


def visible(query):
    """Restrict a job query to what the caller may see: everything for an admin, their own jobs otherwise."""
    p = principal()
    return query if p.is_admin else query.where(Job.owner_id == p.id)


def get_job(job_id: str) -> Job:
    """The job if the caller may see it; 404 otherwise, so another user's job looks like no job at all."""
    job = db().scalars(visible(select(Job).where(Job.id == job_id))).first()
    if job is None:
        fail(404, "not_found", f"no job {job_id}")
    return job


def dataset_json(d: Dataset) -> dict:
    return {"id": d.id, "name": d.name, "rows": d.rows, "shape": d.shape, "classes": d.classes,
            "class_names": d.class_names, "columns": d.columns, "source": d.source, "size": d.size,
            "sha256": d.sha256, "task": "regression" if d.classes is None else "classification",
            "created_at": d.created_at.isoformat()}


def visible_datasets():
    p = principal()
    query = select(Dataset)
    return query if p.is_admin else query.where(Dataset.owner_id == p.id)


def find_dataset(name: str) -> Dataset | None:
    """The caller's dataset of this name (an admin may also name any dataset by its id)."""
    p = principal()
    own = db().scalar(select(Dataset).where(Dataset.owner_id == p.id, Dataset.name == name))
    if own is None and p.is_admin and re.fullmatch("[0-9a-f]{32}", name):
        own = db().get(Dataset, name)
    return own


def upload_info(name: str) -> DatasetInfo | None:
    d = find_dataset(name)
    return None if d is None else DatasetInfo(tuple(d.shape), d.classes, d.rows)


def get_dataset(dataset_id: str) -> Dataset:
    d = db().scalar(visible_datasets().where(Dataset.id == dataset_id))
    if d is None:
        fail(404, "not_found", f"no dataset {dataset_id}")
    return d


def get_sweep(sweep_id: str) -> Sweep:
    p = principal()
    sweep = db().get(Sweep, sweep_id)
    if sweep is None or not (p.is_admin or sweep.owner_id == p.id):
        fail(404, "not_found", f"no sweep {sweep_id}")
    return sweep
