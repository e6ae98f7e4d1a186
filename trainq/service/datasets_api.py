"""Uploaded datasets over HTTP: upload, list, get, delete; a spec names one with {name: upload, upload: NAME}."""

from __future__ import annotations

import re

from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from trainq.models.spec import UPLOAD_NAME
from trainq.service.auth import audit, principal, require_user
from trainq.service.context import db, services
from trainq.service.http import body_bytes, fail
from trainq.service.lookups import dataset_json, find_dataset, get_dataset, visible_datasets
from trainq.service.tables import Dataset, Job, JobStatus
from trainq.service.objects import StoreError, dataset_key
from trainq.service.uploads import UploadError, parse, store

bp = Blueprint("datasets_api", __name__, url_prefix="/api/v1/datasets")


@bp.before_request
def authenticate():
    require_user()


def uploaded_file() -> bytes:
    """The file of a form upload (`curl -F file=@train.csv`): the one file part, whatever its field name."""
    files = list(request.files.values())
    if len(files) != 1:
        fail(400, "bad_request", f"a form upload must carry exactly one file, got {len(files)}; or send the file "
                                 "itself as the body: curl --data-binary @train.csv",
             errors=[{"path": "file", "message": "one file part"}])
    return files[0].read()


@bp.post("")
def upload():
    name = request.args.get("name", "")
    if not re.fullmatch(UPLOAD_NAME, name):
        fail(422, "validation", "name must be 1-64 letters, digits, '_', '.', '-'",
             errors=[{"path": "name", "message": f"must match {UPLOAD_NAME}"}])
    task = request.args.get("task")
    if task not in (None, "classification", "regression"):
        fail(422, "validation", "task must be classification or regression",
             errors=[{"path": "task", "message": "classification or regression"}])
    if find_dataset(name) is not None:
        fail(409, "exists", f"you have a dataset named {name!r}; delete it first or choose another name")
    raw = uploaded_file() if request.mimetype == "multipart/form-data" else body_bytes()
    try:
        parsed = parse(raw, target=request.args.get("target"), task=task,
                       max_rows=services().settings.max_dataset_rows)
    except UploadError as exc:
        fail(422, "bad_dataset", str(exc), errors=[{"path": "(file)", "message": str(exc)}])
    session = db()
    row = Dataset(owner_id=principal().id, name=name, rows=len(parsed.x), shape=list(parsed.x.shape[1:]),
                  classes=parsed.classes, class_names=parsed.class_names, columns=parsed.columns,
                  source=parsed.source, size=0, sha256="")
    session.add(row)
    session.flush()
    objects, key = services().store, dataset_key(row.id)
    try:
        row.size, row.sha256 = store(parsed, objects, key)
    except StoreError as exc:
        session.rollback()
        fail(503, "store_unavailable", f"{exc}; upload it again later")
    audit("dataset_upload", f"dataset:{row.id}", name=name, rows=row.rows)
    try:
        session.commit()
    except IntegrityError:  # the same name uploaded twice at once: the second loses, and leaves no file
        session.rollback()
        objects.delete(key)
        fail(409, "exists", f"you have a dataset named {name!r}")
    except Exception:
        objects.delete(key)
        raise
    return jsonify(dataset_json(row)), 201


@bp.get("")
def list_datasets():
    rows = db().scalars(visible_datasets().order_by(Dataset.created_at.desc())).all()
    return jsonify({"datasets": [dataset_json(d) for d in rows]})


@bp.get("/<hexid:dataset_id>")
def show(dataset_id: str):
    return jsonify(dataset_json(get_dataset(dataset_id)))


@bp.delete("/<hexid:dataset_id>")
def delete(dataset_id: str):
    d = get_dataset(dataset_id)
    session = db()
    busy = session.scalar(select(Job.id).where(Job.dataset_id == d.id, Job.status.in_(
        [JobStatus.queued.value, JobStatus.running.value])).limit(1))
    if busy:
        fail(409, "in_use", f"job {busy} uses this dataset; cancel it or wait for it to finish")
    session.execute(Job.__table__.update().where(Job.dataset_id == d.id).values(dataset_id=None))
    session.delete(d)
    audit("dataset_delete", f"dataset:{dataset_id}", name=d.name)
    session.commit()
    services().store.delete(dataset_key(dataset_id))
    return "", 204
