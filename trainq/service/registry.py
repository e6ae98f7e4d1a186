"""The model registry: models, their versions and aliases, in SQL; each version's bundle in storage.

A version is made from a succeeded job's final checkpoint (its best epoch's weights when early stopping restored
them, so its answers are those the job's test metrics came from). A worker exports it (the export task): the
version is `exporting` until the worker has written the ONNX file, `verifying` while onnxruntime is checked against
torch, then `ready` or `failed` with the reason. Every write of the exporting worker carries the token its claim
got, as a training attempt's do: a second claim (a re-sent export) fences the first.

A model is addressed as `name` (its newest ready version), `name@alias` or `name/versions/N`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainq.models.spec import MODEL_NAME
from trainq.service.db import utcnow
from trainq.service.jobs import hash_token, latest_checkpoint
from trainq.service.objects import StoreError, model_key
from trainq.service.tables import Job, JobStatus, Model, ModelAlias, ModelVersion, VersionState

NAME = re.compile(MODEL_NAME.strip("^$"))
ALIAS = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
REF = re.compile(r"(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/versions/(?P<version>[0-9]{1,9}))?")
FILES = ("model.onnx", "weights.safetensors")  # what the exporting worker uploads into the bundle


class RegistryError(Exception):
    """A request the registry refuses; `status` is the HTTP status that says so."""

    def __init__(self, status: int, code: str, message: str, path: str | None = None):
        super().__init__(message)
        self.status, self.code, self.path = status, code, path


@dataclass(frozen=True)
class Ref:
    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return self.name + (f"@{self.alias}" if self.alias else f"/versions/{self.version}" if self.version else "")


def parse_ref(text: str, where: str = "model") -> Ref:
    """`name`, `name@alias` or `name/versions/N`, checked."""
    found = REF.fullmatch(text or "")
    if found is None or not NAME.fullmatch(found["name"]):
        raise RegistryError(400, "bad_ref", f"{text!r} is not a model reference: give NAME, NAME@ALIAS or "
                                            "NAME/versions/N (a name is letters, digits, '.', '_' and '-')", where)
    if found["alias"] is not None and not ALIAS.fullmatch(found["alias"]):
        raise RegistryError(400, "bad_ref", f"{found['alias']!r} is not an alias: lowercase letters, digits and '-'",
                            where)
    version = int(found["version"]) if found["version"] else None
    if version == 0:
        raise RegistryError(400, "bad_ref", "versions are numbered from 1", where)
    return Ref(found["name"], found["alias"], version)


def onnx_file(store, version_id: str) -> Path:
    """A local file holding a version's model.onnx (a copy when it lives in an object store)."""
    return store.local(model_key(version_id, "model.onnx"))


def session_for(models, store, version_id: str):
    """The version's onnxruntime session: from the process's cache, else loaded from its model.onnx (fetched only
    then); 409 if a ready version's file is gone from storage."""
    try:
        return models.get(version_id, lambda: onnx_file(store, version_id))
    except FileNotFoundError:
        raise RegistryError(409, "gone", "the version's model.onnx is gone from storage: register its job again "
                                         "for a new version") from None


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(422, "validation", "a model name is 1 to 64 letters, digits, '.', '_' or '-', starting "
                                               "with a letter or digit", "name")
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Finding models: the caller's own; an admin's own first, then anyone's
# ---------------------------------------------------------------------------------------------------------------------


def find_model(session: Session, name: str, owner_id: str, is_admin: bool) -> Model | None:
    model = session.scalar(select(Model).where(Model.owner_id == owner_id, Model.name == name))
    if model is None and is_admin:
        model = session.scalar(select(Model).where(Model.name == name).order_by(Model.created_at).limit(1))
    return model


def resolve(session: Session, ref: Ref, owner_id: str, is_admin: bool, *, ready_only: bool = False
            ) -> tuple[Model, ModelVersion]:
    """The version a reference names; 404 (RegistryError) for an unknown model, version or alias. Bare `name` is the
    newest ready version (the newest of any state when none is ready, unless `ready_only`)."""
    model = find_model(session, ref.name, owner_id, is_admin)
    if model is None:
        raise RegistryError(404, "not_found", f"no model {ref.name!r}; `trainq model list` shows yours", "model")
    if ref.alias is not None:
        version = session.scalar(select(ModelVersion).join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
                                 .where(ModelAlias.model_id == model.id, ModelAlias.alias == ref.alias))
        if version is None:
            known = session.scalars(select(ModelAlias.alias).where(ModelAlias.model_id == model.id)).all()
            raise RegistryError(404, "not_found", f"model {ref.name!r} has no alias {ref.alias!r}"
                                + (f" (it has: {', '.join(sorted(known))})" if known else " (it has none)"), "alias")
        return model, version
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if ref.version is not None:
        version = session.scalar(query.where(ModelVersion.version == ref.version))
        if version is None:
            raise RegistryError(404, "not_found", f"model {ref.name!r} has no version {ref.version} (its newest is "
                                                  f"{model.latest})", "version")
        return model, version
    newest = query.order_by(ModelVersion.version.desc()).limit(1)
    version = session.scalar(newest.where(ModelVersion.state == VersionState.ready.value))
    if version is None and not ready_only:
        version = session.scalar(newest)
    if version is None:
        raise RegistryError(404 if not ready_only else 409, "not_ready", f"model {ref.name!r} has no ready version",
                            "model")
    return model, version


@dataclass(frozen=True)
class Serving:
    """What a prediction needs of a version, read in one query."""

    model: str
    version_id: str
    version: int
    state: str
    error: str | None
    signature: dict[str, Any] | None


def require_ready(model: str, version) -> None:
    """409 with the state (and a failure's reason) for a version that cannot answer predictions."""
    if version.state != VersionState.ready.value:
        raise RegistryError(409, "not_ready", f"version {version.version} of {model!r} is {version.state}"
                            + (f": {version.error}" if version.error else ""), "version")


def serving(conn, session: Callable[[], Session], ref: Ref, owner_id: str, is_admin: bool) -> Serving:
    """The version a prediction addresses, in one plain query on `conn` (a prediction's whole budget is a few
    milliseconds; the statements are built once, see `_serving_query`); when none matches, `resolve` finds the error
    that says why, in the ORM session `session()` opens only then. Bare `name` is its newest ready version."""
    kind = "alias" if ref.alias is not None else "version" if ref.version is not None else "ready"
    row = conn.execute(_serving_query(kind, is_admin), {"name": ref.name, "alias": ref.alias, "version": ref.version,
                                                        "owner": owner_id}).first()
    if row is None:
        model, version = resolve(session(), ref, owner_id, is_admin, ready_only=True)
        row = (model.name, version.id, version.version, version.state, version.error, version.signature)
    return Serving(*row)


@functools.cache
def _serving_query(kind: str, is_admin: bool):
    """Building a SELECT costs more than running it: each of the six shapes is built once, with bound parameters."""
    query = select(Model.name, ModelVersion.id, ModelVersion.version, ModelVersion.state, ModelVersion.error,
                   ModelVersion.signature).where(Model.name == bindparam("name"))
    if kind == "alias":
        query = query.join(ModelAlias, ModelAlias.model_id == Model.id).join(
            ModelVersion, ModelVersion.id == ModelAlias.version_id).where(ModelAlias.alias == bindparam("alias"))
    else:
        query = query.join(ModelVersion, ModelVersion.model_id == Model.id)
        query = query.where(ModelVersion.version == bindparam("version")) if kind == "version" else query.where(
            ModelVersion.state == VersionState.ready.value)
    if is_admin:  # the admin's own model of that name first, then the oldest of anyone's
        query = query.order_by((Model.owner_id == bindparam("owner")).desc(), Model.created_at)
    else:
        query = query.where(Model.owner_id == bindparam("owner"))
    return query.order_by(ModelVersion.version.desc()).limit(1)


# ---------------------------------------------------------------------------------------------------------------------
# Registering, aliases, deleting
# ---------------------------------------------------------------------------------------------------------------------


CHECKPOINTS = ("latest", "best")


def register(session: Session, name: str, job: Job, owner_id: str | None, by: str,
             checkpoint_kind: str | None = None) -> tuple[Model, ModelVersion]:
    """The job's trained model as the next version of `name` (made if new), `exporting` until a worker is done.
    A succeeded job's is its latest checkpoint (its best epoch's weights when early stopping restored them); a run
    that was cancelled, failed or pruned is registered only when the caller names the checkpoint to take, its
    `best` (the best epoch written) or its `latest`. The version number comes from one UPDATE ... RETURNING, so two
    registrations at once never share one."""
    check_name(name)
    if checkpoint_kind not in (None, *CHECKPOINTS):
        raise RegistryError(422, "validation", f"checkpoint: {checkpoint_kind!r} is not one of best, latest",
                            "checkpoint")
    if job.status != JobStatus.succeeded.value and (checkpoint_kind is None or job.status not in (
            JobStatus.cancelled.value, JobStatus.failed.value, JobStatus.pruned.value)):
        raise RegistryError(409, "not_succeeded", f"job {job.id} is {job.status}: a succeeded job's model is "
                            "registered as it ended; one that was cancelled, failed or pruned from the checkpoint you "
                            "name: {\"checkpoint\": \"best\"} (trainq model register NAME JOB --checkpoint best)",
                            "job_id")
    checkpoint = (best_checkpoint(session, job.id) if checkpoint_kind == "best" else None) or \
        latest_checkpoint(session, job.id)
    if checkpoint is None:
        raise RegistryError(409, "no_checkpoint", f"job {job.id} kept no checkpoint to register", "job_id")
    model = session.scalar(select(Model).where(Model.owner_id == owner_id, Model.name == name))
    if model is None:
        try:
            with session.begin_nested():
                model = Model(owner_id=owner_id, name=name, latest=0)
                session.add(model)
        except IntegrityError:  # registered at the same moment by another request: use that one
            model = session.scalar(select(Model).where(Model.owner_id == owner_id, Model.name == name))
    number = session.execute(update(Model).where(Model.id == model.id).values(latest=Model.latest + 1)
                             .returning(Model.latest)).scalar_one()
    version = ModelVersion(model_id=model.id, version=number, job_id=job.id, dataset_id=job.dataset_id,
                           checkpoint_id=checkpoint.id,
                           state=VersionState.exporting.value, spec=job.spec, metrics=job.metrics or {},
                           created_by=by)
    session.add(version)
    session.flush()
    session.refresh(model)
    session.info.setdefault(PENDING, []).append((version.id, job.pool))
    return model, version


def best_checkpoint(session: Session, job_id: str):
    """The job's checkpoint of its best epoch among those written, the newest such; None if none is marked best."""
    from trainq.service.tables import Checkpoint

    return session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.is_best)
                           .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()).limit(1)).first()


PENDING = "trainq_exports"  # in session.info: versions registered in this transaction, to send once it commits


def send_exports(session: Session, send) -> int:
    """After the commit: hand each version registered in it to `send(version_id, pool)` (a worker exports it)."""
    pending = session.info.pop(PENDING, [])
    for version_id, pool in pending:
        send(version_id, pool)
    return len(pending)


def register_finished(session: Session, job: Job, name: str | None = None) -> ModelVersion | None:
    """A succeeded job's model as the next version of `name` (default: its spec's `register_as`; a sweep passes its
    `register_best`). A registration that fails is said in the job's events, not raised: the job itself succeeded."""
    from trainq.service.jobs import add_event

    name = name or (job.spec or {}).get("register_as")
    if not name or job.status != JobStatus.succeeded.value:
        return None
    try:
        with session.begin_nested():
            model, version = register(session, name, job, job.owner_id, "register_as")
    except RegistryError as exc:
        add_event(session, job.id, f"not registered as {name!r}: {exc}", level="warning")
        return None
    add_event(session, job.id, f"registered as {model.name} version {version.version}; a worker exports it")
    return version


def move_alias(session: Session, model: Model, alias: str, version_number: Any) -> tuple[ModelVersion, int | None]:
    """Point `alias` at a version of the model in one statement; returns the version and the one it pointed at."""
    if not ALIAS.fullmatch(alias or ""):
        raise RegistryError(400, "bad_alias", f"{alias!r} is not an alias: 1 to 63 lowercase letters, digits and "
                                              "'-', starting with a letter or digit", "alias")
    if not isinstance(version_number, int) or isinstance(version_number, bool) or version_number < 1:
        raise RegistryError(422, "validation", "version must be a version number (1, 2, ...)", "version")
    version = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                        ModelVersion.version == version_number))
    if version is None:
        raise RegistryError(404, "not_found", f"model {model.name!r} has no version {version_number}", "version")
    before = session.scalar(select(ModelVersion.version).join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
                            .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias))
    moved = session.execute(update(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
                            .values(version_id=version.id, updated_at=utcnow()))
    if moved.rowcount == 0:
        try:
            with session.begin_nested():
                session.add(ModelAlias(model_id=model.id, alias=alias, version_id=version.id, updated_at=utcnow()))
        except IntegrityError:  # made at the same moment: move it instead
            session.execute(update(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
                            .values(version_id=version.id, updated_at=utcnow()))
    return version, before


def drop_alias(session: Session, model: Model, alias: str) -> None:
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        raise RegistryError(404, "not_found", f"model {model.name!r} has no alias {alias!r}", "alias")
    session.delete(row)


def aliases_of(session: Session, model_id: str) -> dict[str, int]:
    """alias -> version number."""
    return dict(session.execute(select(ModelAlias.alias, ModelVersion.version)
                                .join(ModelVersion, ModelAlias.version_id == ModelVersion.id)
                                .where(ModelAlias.model_id == model_id).order_by(ModelAlias.alias)).all())


def delete_version(session: Session, model: Model, version: ModelVersion) -> None:
    """A version an alias points to is refused (409): move or drop the alias first."""
    pointing = session.scalars(select(ModelAlias.alias).where(ModelAlias.version_id == version.id)).all()
    if pointing:
        raise RegistryError(409, "aliased", f"version {version.version} of {model.name!r} is "
                                            f"{', '.join('@' + a for a in sorted(pointing))}: move the alias to "
                                            "another version, or delete it, first", "version")
    session.delete(version)


def delete_model(session: Session, model: Model) -> list[str]:
    """The model and all its versions; refused while an alias points anywhere. Returns the versions' ids."""
    aliases = aliases_of(session, model.id)
    if aliases:
        raise RegistryError(409, "aliased", f"model {model.name!r} has aliases ({', '.join(sorted(aliases))}): "
                                            "delete them first", "model")
    ids = session.scalars(select(ModelVersion.id).where(ModelVersion.model_id == model.id)).all()
    session.delete(model)
    return list(ids)


def version_json(model: Model, version: ModelVersion, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    signature = version.signature or {}
    return {"model": model.name, "version": version.version, "ref": f"{model.name}/versions/{version.version}",
            "state": version.state, "error": version.error, "job_id": version.job_id,
            "description": version.description or "", "tags": version.tags or {},
            "checkpoint_id": version.checkpoint_id, "metrics": version.metrics or {},
            "aliases": sorted(a for a, v in (aliases or {}).items() if v == version.version),
            "task": signature.get("task"), "inputs": signature.get("inputs"), "outputs": signature.get("outputs"),
            "features": signature.get("features"), "ranges": signature.get("ranges"),
            "columns": signature.get("columns"), "image": signature.get("image"), "dataset_id": version.dataset_id,
            "class_names": signature.get("class_names"), "uncertainty": signature.get("uncertainty"),
            "onnx_size": version.onnx_size,
            "onnx_sha256": version.onnx_sha256, "created_by": version.created_by,
            "created_at": version.created_at.isoformat(),
            "ready_at": version.ready_at.isoformat() if version.ready_at else None, "spec": version.spec}


# ---------------------------------------------------------------------------------------------------------------------
# The export, as the worker does it
# ---------------------------------------------------------------------------------------------------------------------


class Fenced(Exception):
    """A write from an export claim that a later claim replaced, or after the version was settled."""


def new_claim() -> tuple[str, str]:
    """A fresh claim token and the hash that is stored: a later claim's replaces it, fencing the earlier one."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def holds(stored_hash: str | None, token: str) -> bool:
    """Whether `token` is the live claim's."""
    return stored_hash is not None and secrets.compare_digest(stored_hash, hash_token(token))


def claim_export(session: Session, version_id: str) -> tuple[ModelVersion, str]:
    """Hand the export to a worker: a fresh token (fencing any earlier claim), state `exporting`."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise LookupError(version_id)
    if version.state not in (VersionState.exporting.value, VersionState.verifying.value):
        raise Fenced(f"version {version.version} is {version.state}")
    token, version.export_token_hash = new_claim()
    version.state = VersionState.exporting.value
    session.flush()
    return version, token


def live_export(session: Session, version_id: str, token: str) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise LookupError(version_id)
    if not holds(version.export_token_hash, token) or version.state not in (VersionState.exporting.value,
                                                                             VersionState.verifying.value):
        raise Fenced("this export claim is no longer live")
    return version


def store_file(store, version: ModelVersion, name: str, blob: bytes) -> dict[str, Any]:
    """Write one file of the bundle atomically; a reader never sees half a file."""
    if name not in FILES:
        raise RegistryError(400, "bad_file", f"a bundle holds {', '.join(FILES)}", "name")
    try:
        store.put(model_key(version.id, name), blob)
    except StoreError as exc:
        raise RegistryError(503, "store_unavailable", f"{exc}; send it again later") from None
    return {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def finish_export(session: Session, store, version: ModelVersion, outcome: dict[str, Any]) -> ModelVersion:
    """Settle the export: `ready` with its signature once the ONNX file is stored and loads, or `failed`."""
    if outcome.get("state") == VersionState.failed.value:
        version.state, version.error = VersionState.failed.value, str(outcome.get("error") or "export failed")[:5000]
        version.export_token_hash = None
        return version
    signature = outcome.get("signature")
    try:
        blob = store.get(model_key(version.id, "model.onnx")) if isinstance(signature, dict) else None
    except StoreError:
        blob = None
    if blob is None or not signature.get("inputs"):
        raise RegistryError(400, "incomplete", "a ready version needs its model.onnx uploaded and a signature")
    version.onnx_size, version.onnx_sha256 = len(blob), hashlib.sha256(blob).hexdigest()
    version.signature = signature
    bundle = {"model_version": version.version, "spec": version.spec, "signature": signature,
              "preprocessing": outcome.get("preprocessing"), "checked": outcome.get("checked"),
              "job_id": version.job_id, "checkpoint_id": version.checkpoint_id}
    try:
        store.put(model_key(version.id, "bundle.json"), json.dumps(bundle, indent=1).encode())
    except StoreError as exc:
        raise RegistryError(503, "store_unavailable", f"{exc}; send it again later") from None
    version.state, version.ready_at, version.export_token_hash = VersionState.ready.value, utcnow(), None
    return version


def stale_exports(session: Session, now: datetime, after: timedelta) -> list[tuple[str, str]]:
    """Versions still exporting long after they were registered (their message or their worker was lost), with the
    pool to send them to again; a second claim fences the first, so sending one twice is harmless."""
    return list(session.execute(select(ModelVersion.id, Job.pool).join(Job, Job.id == ModelVersion.job_id).where(
        ModelVersion.state.in_((VersionState.exporting.value, VersionState.verifying.value)),
        ModelVersion.created_at < now - after)).all())
