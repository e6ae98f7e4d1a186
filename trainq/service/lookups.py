"""The caller's own objects, found by id or name. What the caller may not see answers 404, so another user's job,
dataset or sweep looks like none at all. The blueprints share these; none of them imports another blueprint."""

from __future__ import annotations

import re

from sqlalchemy import select

from trainq.models.spec import UPLOAD_REF, Uploaded
from trainq.service.auth import principal
from trainq.service.context import db
from trainq.service.datasets import uploaded, version_of
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
    return {"id": d.id, "name": d.name, "version": d.version, "ref": d.ref, "kind": d.kind, "rows": d.rows,
            "shape": d.shape, "classes": d.classes, "class_names": d.class_names, "columns": d.columns,
            "target": d.target, "source": d.source, "size": d.size, "sha256": d.sha256,
            "task": "regression" if d.classes is None else "classification", "profile": d.profile,
            "created_at": d.created_at.isoformat()}


def visible_datasets():
    p = principal()
    query = select(Dataset)
    return query if p.is_admin else query.where(Dataset.owner_id == p.id)


def find_dataset(ref: str) -> Dataset | None:
    """The caller's dataset version by NAME (the latest version), NAME@VERSION, or (an admin) its id."""
    p = principal()
    own = version_of(db(), p.id, ref)
    if own is None and p.is_admin and re.fullmatch("[0-9a-f]{32}", ref):
        own = db().get(Dataset, ref)
    return own


def upload_info(ref: str) -> Uploaded | None:
    d = find_dataset(ref)
    return None if d is None else uploaded(d)


def get_dataset(ref: str) -> Dataset:
    """A dataset version by id, NAME@VERSION or NAME (its latest); 404 if the caller has none such."""
    d = db().scalar(visible_datasets().where(Dataset.id == ref)) if re.fullmatch("[0-9a-f]{32}", ref) else None
    if d is None:
        d = find_dataset(ref) if re.fullmatch(UPLOAD_REF, ref) else None
    if d is None:
        fail(404, "not_found", f"no dataset {ref}; `trainq dataset list` shows yours")
    return d


def get_sweep(sweep_id: str) -> Sweep:
    p = principal()
    sweep = db().get(Sweep, sweep_id)
    if sweep is None or not (p.is_admin or sweep.owner_id == p.id):
        fail(404, "not_found", f"no sweep {sweep_id}")
    return sweep
