"""The model registry's HTTP API: register a job's model, list and show models and versions, move aliases, delete,
download a version's ONNX file, and predict from raw features by name.

A model is addressed as NAME (its newest ready version), NAME@ALIAS or NAME/versions/N. Another user's model is 404.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, g, jsonify, request, url_for
from sqlalchemy import func, select

from trainq.service.auth import audit, principal, require_user
from trainq.service.context import db, read_connection, services
from trainq.service.http import body_bytes, fail, fast_json, read_body, read_fast, send_object
from trainq.service.inference import (IMAGE_TYPES, InputError, friendly, image_inputs, record_inputs, run,
                                     sample_runs)
from trainq.data.formats import DataError, sniff
from trainq.service import annotations, scoring
from trainq.service.lookups import find_dataset, get_job, visible_datasets
from trainq.service.objects import batch_key, model_key
from trainq.service.registry import (
    Ref,
    RegistryError,
    aliases_of,
    delete_model,
    delete_version,
    drop_alias,
    find_model,
    move_alias,
    parse_ref,
    register,
    resolve,
    send_exports,
    require_ready,
    serving,
    session_for,
    version_json,
)
from trainq.service.tables import BatchJob, Dataset, Model, ModelVersion, VersionState

bp = Blueprint("models_api", __name__, url_prefix="/api/v1/models")


@bp.before_request
def authenticate():
    require_user()


@bp.errorhandler(RegistryError)
def refused(exc: RegistryError):
    errors = [{"path": exc.path, "message": str(exc)}] if exc.path else []
    return jsonify({"error": exc.code, "message": str(exc), "errors": errors}), exc.status


@bp.errorhandler(InputError)
def bad_input(exc: InputError):
    return jsonify({"error": "bad_input", "message": str(exc), "errors": exc.errors}), exc.status


def lookup(ref: Ref | str, ready_only: bool = False) -> tuple[Model, ModelVersion]:
    p = principal()
    return resolve(db(), parse_ref(ref) if isinstance(ref, str) else ref, p.id, p.is_admin, ready_only=ready_only)


def model_json(model: Model, versions: list[ModelVersion]) -> dict[str, Any]:
    aliases = aliases_of(db(), model.id)
    return {"name": model.name, "latest": model.latest, "created_at": model.created_at.isoformat(),
            "aliases": aliases, "versions": [version_json(model, v, aliases) for v in versions]}


@bp.post("")
def register_model():
    body = read_body()
    if not isinstance(body, dict):
        fail(400, "bad_request", "send {\"name\": MODEL, \"job_id\": JOB}")
    missing = [f for f in ("name", "job_id") if not isinstance(body.get(f), str)]
    if missing:
        fail(422, "validation", f"{', '.join(missing)}: required (a string)",
             errors=[{"path": f, "message": "required (a string)"} for f in missing])
    job_id = body["job_id"]
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        fail(422, "validation", "job_id: a job id is 32 hexadecimal digits",
             errors=[{"path": "job_id", "message": "a job id is 32 hexadecimal digits"}])
    job = get_job(job_id)
    p = principal()
    session = db()
    kind = body.get("checkpoint")
    if kind is not None and not isinstance(kind, str):
        fail(422, "validation", "checkpoint: best or latest", errors=[{"path": "checkpoint", "message": "best or latest"}])
    model, version = register(session, body["name"], job, p.id, p.name, kind)
    audit("register", f"model:{model.name}", version=version.version, job=job.id)
    session.commit()
    send_exports(session, services().export)
    return jsonify(version_json(model, version)), 201


@bp.get("")
def list_models():
    p = principal()
    query = select(Model).order_by(Model.name)
    if not p.is_admin:
        query = query.where(Model.owner_id == p.id)
    session = db()
    models = session.scalars(query).all()
    counts = dict(session.execute(select(ModelVersion.model_id, func.count()).group_by(ModelVersion.model_id)).all())
    ready = dict(session.execute(select(ModelVersion.model_id, func.max(ModelVersion.version))
                                 .where(ModelVersion.state == VersionState.ready.value)
                                 .group_by(ModelVersion.model_id)).all())
    return jsonify({"models": [{"name": m.name, "latest": m.latest, "versions": counts.get(m.id, 0),
                                "newest_ready": ready.get(m.id), "aliases": aliases_of(session, m.id),
                                "created_at": m.created_at.isoformat()} for m in models]})


def model_named(name: str) -> Model:
    p = principal()
    model = find_model(db(), parse_ref(name).name, p.id, p.is_admin)
    if model is None:
        fail(404, "not_found", f"no model {name!r}; GET /api/v1/models lists yours",
             errors=[{"path": "model", "message": "no such model"}])
    return model


@bp.get("/<name>")
def get_model(name: str):
    if "@" in name:  # NAME@ALIAS: the version it points at
        model, version = lookup(name)
        return jsonify(version_json(model, version, aliases_of(db(), model.id)))
    model = model_named(name)
    versions = db().scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                            .order_by(ModelVersion.version.desc())).all()
    return jsonify(model_json(model, versions))


@bp.get("/<name>/versions/<number>")
def get_version(name: str, number: str):
    model, version = lookup(f"{parse_ref(name).name}/versions/{number}")
    return jsonify(version_json(model, version, aliases_of(db(), model.id)))


@bp.put("/<name>/aliases/<alias>")
def put_alias(name: str, alias: str):
    body = read_body()
    model = model_named(name)
    session = db()
    version, before = move_alias(session, model, alias, body.get("version") if isinstance(body, dict) else None)
    audit("alias", f"model:{model.name}", alias=alias, version=version.version, previous=before)
    session.commit()
    if version.state == VersionState.ready.value:  # warm: the first prediction through the alias pays no load
        try:
            session_for(services().models, services().store, version.id)
        except Exception:  # noqa: BLE001 - a warm-up failure shows on the first prediction instead
            pass
    return jsonify({"model": model.name, "alias": alias, "version": version.version, "previous": before})


@bp.delete("/<name>/aliases/<alias>")
def delete_alias(name: str, alias: str):
    model = model_named(name)
    session = db()
    drop_alias(session, model, alias)
    audit("alias_delete", f"model:{model.name}", alias=alias)
    session.commit()
    return "", 204


def locked_version(name: str, number: str) -> tuple[Model, ModelVersion]:
    model, version = lookup(f"{parse_ref(name).name}/versions/{number}")
    return model, db().scalars(select(ModelVersion).where(ModelVersion.id == version.id).with_for_update()).one()


@bp.put("/<name>/versions/<number>/description")
def put_description(name: str, number: str):
    """A version's description in markdown (`{"description": TEXT}`), as a run's note."""
    text = annotations.note_text(read_body(), "description")
    model, version = locked_version(name, number)
    version.description = text or None
    audit("describe", f"model:{model.name}", version=version.version, characters=len(text))
    db().commit()
    return jsonify({"description": text, "html": annotations.markdown_html(text)})


@bp.put("/<name>/versions/<number>/tags/<path:key>")
def put_version_tag(name: str, number: str, key: str):
    key, value = annotations.tag_key(key), annotations.tag_value(read_body())
    model, version = locked_version(name, number)
    version.tags = annotations.with_tag(version.tags, key, value)
    audit("tag", f"model:{model.name}", version=version.version, key=key, value=value)
    db().commit()
    return jsonify({"tags": version.tags})


@bp.delete("/<name>/versions/<number>/tags/<path:key>")
def delete_version_tag(name: str, number: str, key: str):
    model, version = locked_version(name, number)
    version.tags = annotations.without_tag(version.tags, annotations.tag_key(key))
    audit("untag", f"model:{model.name}", version=version.version, key=key)
    db().commit()
    return jsonify({"tags": version.tags or {}})


def forget(version_ids: list[str]) -> None:
    """After the rows are gone: the bundles' files."""
    for vid in version_ids:
        services().store.delete_prefix(model_key(vid))


@bp.delete("/<name>/versions/<number>")
def delete_version_route(name: str, number: str):
    model, version = lookup(f"{parse_ref(name).name}/versions/{number}")
    session = db()
    delete_version(session, model, version)
    audit("delete", f"model:{model.name}", version=version.version)
    session.commit()
    forget([version.id])
    return "", 204


@bp.delete("/<name>")
def delete_model_route(name: str):
    model = model_named(name)
    session = db()
    ids = delete_model(session, model)
    audit("delete", f"model:{model.name}", versions=len(ids))
    session.commit()
    forget(ids)
    return "", 204


def ready_version(ref: str) -> tuple[Model, ModelVersion]:
    model, version = lookup(ref, ready_only=True)
    require_ready(model.name, version)
    return model, version


@bp.get("/<name>/versions/<number>/onnx")
def download_onnx(name: str, number: str):
    model, version = ready_version(f"{parse_ref(name).name}/versions/{number}")
    audit("download", f"model:{model.name}", version=version.version)
    db().commit()
    return send_object(services().store, model_key(version.id, "model.onnx"), f"{model.name}-v{version.version}.onnx",
                       missing="the version's model file is gone")


def predict(ref: str):
    started = time.perf_counter()
    p = principal()
    version = serving(read_connection(), db, parse_ref(ref), p.id, p.is_admin)
    g.served_model, g.served_version = version.model, str(version.version)  # for /metrics
    require_ready(version.model, version)
    signature = version.signature
    settings = services().settings
    images = sent_images()
    if images is not None:
        body: dict = {}
        feeds = image_inputs(images, signature, settings.max_predict_rows, settings.max_image_pixels)
    else:
        body = read_fast()
        feeds = record_inputs(body, signature, settings.max_predict_rows)
    runs = sample_runs(body.get("parameters"), signature)
    names = [o["name"] for o in signature["outputs"]]
    results = run(session_for(services().models, services().store, version.version_id), feeds, names, runs)
    answer = {"model": version.model, "version": version.version, "request_id": uuid.uuid4().hex,
              "task": signature.get("task"), "predictions": friendly(results, signature)}
    if signature.get("uncertainty"):
        answer["samples"] = runs * signature["uncertainty"]["samples"]
    return fast_json({**answer, "took_ms": round((time.perf_counter() - started) * 1000, 3)})


def sent_images() -> list[tuple[str, bytes]] | None:
    """Image files of a prediction request: an image body (Content-Type image/png or image/jpeg), or the files of a
    multipart form; None for a JSON request."""
    if request.mimetype in IMAGE_TYPES:
        return [("(body)", body_bytes())]
    if request.mimetype == "multipart/form-data":
        files = [(f"{field}:{f.filename or ''}", f.read()) for field, f in request.files.items(multi=True)]
        if not files:
            fail(400, "bad_request", "a multipart prediction request carries image files (curl -F img=@cat.png)")
        return files
    return None


@bp.post("/<name>/predict")
def predict_route(name: str):
    return predict(name)


@bp.post("/<name>/versions/<number>/predict")
def predict_version(name: str, number: str):
    return predict(f"{parse_ref(name).name}/versions/{number}")



# ---------------------------------------------------------------------------------------------------------------------
# Batch scoring
# ---------------------------------------------------------------------------------------------------------------------


def batch_of(name: str, batch_id: str) -> tuple[Model, ModelVersion, BatchJob]:
    model = model_named(name)
    batch = db().get(BatchJob, batch_id)
    version = db().get(ModelVersion, batch.version_id) if batch is not None else None
    if version is None or version.model_id != model.id:
        fail(404, "not_found", f"no batch {batch_id} of model {model.name!r}")
    return model, version, batch


def batch_answer(model: Model, version: ModelVersion, batch: BatchJob) -> dict:
    return scoring.batch_json(batch, model.name, version.version, url_for(
        "models_api.batch_output", name=model.name, batch_id=batch.id))


@bp.post("/<name>/batch")
def start_batch(name: str):
    """Score a dataset (`{"dataset": NAME_OR_ID}`) or a CSV or NPZ file sent as the body, on a worker."""
    return batch_for(name)


@bp.post("/<name>/versions/<number>/batch")
def start_version_batch(name: str, number: str):
    return batch_for(f"{parse_ref(name).name}/versions/{number}")


def batch_for(ref: str):
    model, version = ready_version(ref)
    session = db()
    if request.mimetype in ("application/json", "application/yaml", "application/x-yaml", "text/yaml"):
        body = read_body()
        given = body.get("dataset") if isinstance(body, dict) else None
        if not isinstance(given, str):
            fail(422, "validation", "dataset: the name (or id) of an uploaded dataset, or send a CSV or NPZ file as "
                                    "the body instead", errors=[{"path": "dataset", "message": "required (a string)"}])
        dataset = find_dataset(given) or (db().scalar(visible_datasets().where(Dataset.id == given))
                                          if len(given) == 32 else None)
        if dataset is None:
            fail(404, "not_found", f"no dataset {given!r}", errors=[{"path": "dataset", "message": "no such dataset"}])
        batch = scoring.create(session, services().store, model, version, principal().id, dataset=dataset)
    else:
        blob = body_bytes()
        if not blob:
            fail(400, "bad_request", "send a CSV (a header naming the model's features) or an NPZ with an array x, or "
                                     "JSON {\"dataset\": NAME}")
        try:
            kind = sniff(blob[:65536])
        except DataError as exc:
            fail(422, "bad_input", str(exc), errors=[{"path": "(body)", "message": str(exc)}])
        kind = "npz" if kind == "zip" else kind
        batch = scoring.create(session, services().store, model, version, principal().id, upload=(kind, blob))
    audit("batch", f"model:{model.name}", version=version.version, batch=batch.id)
    session.commit()
    scoring.send_batches(session, services().score)
    response = jsonify(batch_answer(model, version, batch))
    response.status_code = 202
    response.headers["Location"] = url_for("models_api.get_batch", name=model.name, batch_id=batch.id)
    return response


@bp.get("/<name>/batches/<hexid:batch_id>")
def get_batch(name: str, batch_id: str):
    return jsonify(batch_answer(*batch_of(name, batch_id)))


@bp.get("/<name>/batches/<hexid:batch_id>/output")
def batch_output(name: str, batch_id: str):
    model, version, batch = batch_of(name, batch_id)
    if batch.status != "succeeded":
        fail(409, "not_ready", f"batch {batch_id} is {batch.status}" + (f": {batch.error}" if batch.error else ""))
    return send_object(services().store, batch_key(batch.id, "output.csv"),
                       f"{model.name}-v{version.version}-{batch.id[:8]}.csv", mimetype="text/csv",
                       missing="the batch's output is gone")
