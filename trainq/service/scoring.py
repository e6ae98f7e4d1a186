"""Batch scoring: a file scored by a ready model version on a worker of the pool that trained it.

The input is an uploaded dataset (its stored arrays, columns matched to the model's features by name) or a file
sent with the request: a CSV whose header names the features (other columns are carried to the output) or an NPZ
with an array `x`. The worker reads it row by row: a row that does not fit the signature (a missing field, a value
that is not a number, NaN) is reported by its number and left out, the others are scored; progress is counted in
rows; the output is a CSV of the row numbers, the carried columns and the answers. Every write of the scoring worker
carries its claim's token, as an export's does.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from trainq.service.db import utcnow
from trainq.service.objects import StoreError, batch_key
from trainq.service.registry import Fenced, RegistryError, holds, new_claim, require_ready
from trainq.service.tables import BatchJob, Dataset, Job, Model, ModelVersion

PROBLEMS_KEPT = 1000  # failed rows listed in the batch; more are counted
PENDING = "trainq_batches"  # in session.info: batches created in this transaction, to send once it commits


def create(session: Session, store, model: Model, version: ModelVersion, owner_id: str | None, *,
           dataset: Dataset | None = None, upload: tuple[str, bytes] | None = None) -> BatchJob:
    """A queued batch of a dataset, or of a file sent with the request (`upload`: its kind, csv or npz, and bytes)."""
    require_ready(model.name, version)
    pool = session.scalar(select(Job.pool).where(Job.id == version.job_id)) or "cpu"
    batch = BatchJob(owner_id=owner_id, version_id=version.id, dataset_id=dataset.id if dataset else None,
                     source="dataset" if dataset else upload[0], pool=pool, status="queued", done=0, bad_rows=0)
    session.add(batch)
    session.flush()
    if upload is not None:
        try:
            store.put(batch_key(batch.id, f"input.{upload[0]}"), upload[1])
        except StoreError as exc:
            raise RegistryError(503, "store_unavailable", f"{exc}; send it again later") from None
    session.info.setdefault(PENDING, []).append((batch.id, pool))
    return batch


def send_batches(session: Session, send) -> None:
    for batch_id, pool in session.info.pop(PENDING, []):
        send(batch_id, pool)


def claim(session: Session, batch_id: str) -> tuple[BatchJob, str]:
    batch = session.get(BatchJob, batch_id)
    if batch is None:
        raise LookupError(batch_id)
    if batch.status not in ("queued", "running"):
        raise Fenced(f"batch {batch_id} is {batch.status}")
    token, batch.token_hash = new_claim()
    batch.status = "running"
    batch.started_at = batch.heard_at = utcnow()
    batch.done = batch.bad_rows = 0
    session.flush()
    return batch, token


def live(session: Session, batch_id: str, token: str) -> BatchJob:
    batch = session.get(BatchJob, batch_id)
    if batch is None:
        raise LookupError(batch_id)
    if not holds(batch.token_hash, token) or batch.status != "running":
        raise Fenced("this scoring claim is no longer live")
    return batch


def progress(batch: BatchJob, body: dict[str, Any]) -> None:
    batch.heard_at = utcnow()
    for field in ("rows", "done", "bad_rows"):
        value = body.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RegistryError(400, "bad_request", f"{field} must be a whole number", field)
            setattr(batch, field, value)


def finish(session: Session, store, batch: BatchJob, body: dict[str, Any]) -> BatchJob:
    progress(batch, body)
    problems = body.get("problems") or []
    if not isinstance(problems, list):
        raise RegistryError(400, "bad_request", "problems must be a list of {row, message}", "problems")
    batch.problems = [{"row": int(p.get("row", 0)), "message": str(p.get("message", ""))[:500]}
                      for p in problems[:PROBLEMS_KEPT] if isinstance(p, dict)]
    if body.get("status") == "failed":
        batch.status, batch.error = "failed", str(body.get("error") or "scoring failed")[:5000]
    else:
        size = store.size(batch_key(batch.id, "output.csv"))
        if size is None:
            raise RegistryError(400, "incomplete", "a succeeded batch needs its output uploaded first")
        batch.status, batch.output_size = "succeeded", size
    batch.finished_at, batch.token_hash = utcnow(), None
    return batch


def store_output(store, batch: BatchJob, blob: bytes) -> dict[str, Any]:
    try:
        store.put(batch_key(batch.id, "output.csv"), blob)
    except StoreError as exc:
        raise RegistryError(503, "store_unavailable", f"{exc}; send it again later") from None
    return {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def stale(session: Session, now: datetime, after: timedelta) -> list[tuple[str, str]]:
    """Batches still queued long after they were made (their message was lost), or running with no word from their
    worker that long (it died): sent again; the next claim fences the last one and starts over."""
    cutoff = now - after
    return list(session.execute(select(BatchJob.id, BatchJob.pool).where(or_(
        and_(BatchJob.status == "queued", BatchJob.created_at < cutoff),
        and_(BatchJob.status == "running", BatchJob.heard_at < cutoff)))).all())


def batch_json(batch: BatchJob, model: str, version: int, output_url: str | None) -> dict[str, Any]:
    return {"id": batch.id, "model": model, "version": version, "status": batch.status, "source": batch.source,
            "dataset_id": batch.dataset_id, "rows": batch.rows, "done": batch.done, "bad_rows": batch.bad_rows,
            "problems": batch.problems or [], "error": batch.error,
            "progress": round(batch.done / batch.rows, 4) if batch.rows else 0.0,
            "output_url": output_url if batch.status == "succeeded" else None, "output_size": batch.output_size,
            "created_at": batch.created_at.isoformat(),
            "started_at": batch.started_at.isoformat() if batch.started_at else None,
            "finished_at": batch.finished_at.isoformat() if batch.finished_at else None}
