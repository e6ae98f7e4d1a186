"""The tables: jobs, their attempts, metrics, checkpoints and events. SQL is the source of truth."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from trainq.service.db import Base, JSONType, UTCDateTime, utcnow


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"  # a sweep trial its pruner stopped early


FINISHED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value, JobStatus.pruned.value)


class StopReason(str, enum.Enum):
    completed = "completed"
    early_stopped = "early_stopped"
    cancelled = "cancelled"
    error = "error"
    pruned = "pruned"


def new_id() -> str:
    return uuid.uuid4().hex


class Role(str, enum.Enum):
    admin = "admin"  # sees and manages everything
    user = "user"  # sees and manages only their own jobs and checkpoints


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8), default=Role.user.value)
    password_hash: Mapped[str | None] = mapped_column(String(255))  # None: signs in with a token only
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """An API token, stored as its SHA-256 (tokens are 256 random bits, so a slow hash adds nothing)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who did what to which job or checkpoint: submit, cancel, delete, download."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user_id: Mapped[str | None] = mapped_column(String(32))
    user_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    ip: Mapped[str | None] = mapped_column(String(64))


class Dataset(Base):
    """One version of an uploaded dataset: immutable once stored. Its file lives in storage as uploaded (a table, an
    archive of images) or, for NPZ arrays, as an .npz read without pickle; `profile` says what it holds."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    kind: Mapped[str] = mapped_column(String(8), default="arrays", server_default="arrays")  # arrays | table | images
    rows: Mapped[int] = mapped_column(BigInteger)
    shape: Mapped[list[int]] = mapped_column(JSONType)  # arrays: one example's; tables: [columns]; images: []
    classes: Mapped[int | None] = mapped_column(Integer)  # None for regression
    class_names: Mapped[list[str] | None] = mapped_column(JSONType)
    columns: Mapped[list[str] | None] = mapped_column(JSONType)  # a table's columns, in order
    source: Mapped[str] = mapped_column(String(8))  # the uploaded format: csv | tsv | parquet | jsonl | npz | zip | tar
    target: Mapped[str | None] = mapped_column(String(256))  # a table's target column, as profiled
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # tables and images (see trainq.data.profile)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("owner_id", "name", "version"),)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def key(self) -> str:
        """Where its file lives in storage."""
        from trainq.service.objects import dataset_key

        return dataset_key(self.id, "npz" if self.kind == "arrays" else self.source)


class DatasetUpload(Base):
    """A dataset upload in parts, under way: the parts live in storage (uploads/<id>/...) until it completes into a
    version or is abandoned."""

    __tablename__ = "dataset_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(256))
    task: Mapped[str | None] = mapped_column(String(16))
    multipart_id: Mapped[str | None] = mapped_column(String(1024))  # an object store's multipart upload
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sweep(Base):
    """A hyperparameter search: its trials are ordinary jobs; Optuna (samplers, pruners) decides what they try."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    project: Mapped[str] = mapped_column(String(100), default="default", server_default="default", index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the sweep as submitted, validated
    base: Mapped[dict[str, Any]] = mapped_column(JSONType)  # its base job spec with every default filled in
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | cancelled | failed
    budget: Mapped[int] = mapped_column(Integer)  # trials in all
    launched: Mapped[int] = mapped_column(Integer, default=0)  # trials made into jobs so far
    best_job_id: Mapped[str | None] = mapped_column(String(32))
    best_value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    trial: Mapped[int | None] = mapped_column(Integer)  # the Optuna trial number, for a sweep's trial
    pack_id: Mapped[str | None] = mapped_column(String(32), index=True)  # trials trained together as one model
    name: Mapped[str] = mapped_column(String(200))
    project: Mapped[str] = mapped_column(String(100), default="default", server_default="default")
    tags: Mapped[dict[str, str] | None] = mapped_column(JSONType)  # {key: text}: the spec's, then changed by users
    note: Mapped[str | None] = mapped_column(Text)  # markdown: why the run exists, what it showed
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    pool: Mapped[str] = mapped_column(String(63))
    device: Mapped[str] = mapped_column(String(8), default="any", server_default="any")  # any | cpu | gpu
    priority: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[int] = mapped_column(BigInteger, default=0)
    max_epochs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: the broker has not taken it yet
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    current_attempt_id: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    stop_reason: Mapped[str | None] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    # the installed layer types it was planned with: {type: {package, version}}; a worker must have each to claim it
    plugins: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    @property
    def queue(self) -> str:
        from trainq.broker import queue_name

        return queue_name(self.pool, self.device or "any", int(self.spec.get("resources", {}).get("gpus", 1)))

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_project_created", "project", "created_at"),
        Index("ix_jobs_tags", "tags", postgresql_using="gin", postgresql_ops={"tags": "jsonb_path_ops"}),
        # The queue's order (priority, then age) per pool, over queued jobs only: counting the jobs ahead of one
        # is two range scans of this small index instead of filtering every queued job (api.ahead_in_queue).
        Index("ix_jobs_queue", "pool", "priority", "created_at", postgresql_where=text("status = 'queued'"),
              sqlite_where=text("status = 'queued'")),
    )


class Attempt(Base):
    """One try at a job by one worker; its token fences every write it makes."""

    __tablename__ = "attempts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    token_hash: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ended | lost
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("job_id", "name", "step"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt_id: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    metric_name: Mapped[str | None] = mapped_column(String(64))
    metric: Mapped[float | None] = mapped_column(Float)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(16))  # service | worker
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)


class Worker(Base):
    """A worker process serving one pool on one device; it says it is alive every few seconds."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery hostname, as in jobs.worker
    pool: Mapped[str] = mapped_column(String(63), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # cpu | gpu
    device: Mapped[str] = mapped_column(String(255))  # what it trains on, e.g. "cpu (2 threads)" or "cuda:0 NVIDIA H200"
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # GPUs it trains one job on
    state: Mapped[str] = mapped_column(String(16), default="online")  # online | draining | stopped
    drain_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # its attempts that ended
    layers: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # its installed layer types: {type: {package,
    # version}}, as its heartbeat says
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Model(Base):
    """A registered model: a name, unique per owner, whose versions are succeeded jobs' trained networks."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    latest: Mapped[int] = mapped_column(Integer, default=0)  # the last version number handed out (never reused)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("owner_id", "name"),)


class VersionState(str, enum.Enum):
    exporting = "exporting"  # waiting for a worker, or being exported
    verifying = "verifying"  # the ONNX file is written; onnxruntime is checked against torch
    ready = "ready"  # answers predictions
    failed = "failed"  # `error` says why


class ModelVersion(Base):
    """One version of a model: a bundle in storage (weights, spec, preprocessing, signature, ONNX) made by a worker."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    # the dataset version its job trained on: kept when the job is deleted, and a dataset version in use stays
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=VersionState.exporting.value)
    error: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # the job's final metrics
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # inputs, features, ranges, outputs, classes
    export_token_hash: Mapped[str | None] = mapped_column(String(64))  # fences the exporting worker's writes
    onnx_size: Mapped[int | None] = mapped_column(BigInteger)
    onnx_sha256: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    description: Mapped[str | None] = mapped_column(Text)  # markdown, as a run's note
    tags: Mapped[dict[str, str] | None] = mapped_column(JSONType)

    __table_args__ = (UniqueConstraint("model_id", "version"),)


class ModelAlias(Base):
    """A name (champion, challenger, ...) pointing at one version of a model; it moves in one UPDATE."""

    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchJob(Base):
    """Scoring a file with a model version on a worker: progress in rows, rows that failed by number, a CSV out."""

    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(8))  # dataset | csv | npz: what the worker reads
    pool: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | succeeded | failed
    rows: Mapped[int | None] = mapped_column(BigInteger)  # known once the worker has read the input
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    bad_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    problems: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)  # the first rows that failed, by number
    error: Mapped[str | None] = mapped_column(Text)
    token_hash: Mapped[str | None] = mapped_column(String(64))
    output_size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heard_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the scoring worker's last word
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
