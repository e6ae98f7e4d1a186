"""The Open Inference Protocol v2 (KServe's and Triton's REST protocol), so a standard v2 client works unchanged:

    GET  /v2/health/live, /v2/health/ready             (no token: for probes)
    GET  /v2/models/{name}[/versions/{v}]               metadata: inputs and outputs with name, datatype, shape
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

`name` may be NAME@ALIAS. Errors are {"error": "..."} (with the field paths in "errors"), as the protocol has them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import text

from trainq import __version__
from trainq.service.auth import principal, require_user
from trainq.service.context import db, read_connection, services
from trainq.service.http import ApiError, body_bytes, fail, fast_json, read_fast
from trainq.service.inference import InputError, run, sample_runs, v2_inputs, v2_outputs
from trainq.service.registry import RegistryError, parse_ref, require_ready, resolve, serving, session_for
from trainq.service.tables import VersionState

bp = Blueprint("oip", __name__, url_prefix="/v2")

PUBLIC = {"oip.live", "oip.ready", "oip.server"}


@bp.before_request
def authenticate():
    if request.endpoint not in PUBLIC:
        require_user()


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    return jsonify({"error": exc.description, **({"errors": exc.body["errors"]} if "errors" in exc.body else {})}), \
        exc.code, exc.extra_headers


@bp.errorhandler(RegistryError)
def refused(exc: RegistryError):
    return jsonify({"error": str(exc), "errors": [{"path": exc.path, "message": str(exc)}] if exc.path else []}), \
        exc.status


@bp.errorhandler(InputError)
def bad_input(exc: InputError):
    return jsonify({"error": str(exc), "errors": exc.errors}), 400


@bp.get("")
def server():
    return jsonify({"name": "trainq", "version": __version__, "extensions": []})


@bp.get("/health/live")
def live():
    return jsonify({"live": True})


@bp.get("/health/ready")
def ready():
    try:
        db().execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - the database is what predictions need besides the files
        return jsonify({"ready": False}), 503
    return jsonify({"ready": True})


def version_for(name: str, number: str | None):
    ref = parse_ref(name if number is None else f"{parse_ref(name).name}/versions/{number}", "model")
    p = principal()
    return resolve(db(), ref, p.id, p.is_admin, ready_only=number is None)


def metadata(name: str, number: str | None):
    model, version = version_for(name, number)
    signature = version.signature or {}
    return jsonify({"name": name if number is None else model.name, "versions": [str(version.version)],
                    "platform": "onnxruntime", "inputs": signature.get("inputs", []),
                    "outputs": [{k: o[k] for k in ("name", "datatype", "shape")}
                                for o in signature.get("outputs", [])],
                    "parameters": {"state": version.state, "task": signature.get("task"),
                                   "features": signature.get("features"),
                                   "class_names": signature.get("class_names")}})


def model_ready(name: str, number: str | None):
    """The protocol's answer is its status code, as clients read it (tritonclient's is_model_ready): 200 for a
    version that answers, 400 for one that exists and does not yet (exporting, verifying, failed), 404 for none."""
    try:
        _, version = version_for(name, number)
    except RegistryError as exc:
        if exc.status == 409:  # it exists, and no version of it is ready
            return jsonify({"name": name, "ready": False, "error": str(exc)}), 400
        raise
    if version.state != VersionState.ready.value:
        return jsonify({"name": name, "ready": False, "error": f"version {version.version} is {version.state}"}), 400
    return jsonify({"name": name, "ready": True})


HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary data extension: JSON, then the tensors' bytes


def read_request() -> tuple[Any, dict[int, bytes]]:
    """The request's JSON, and the bytes of inputs sent in the binary data extension (by input index)."""
    raw = body_bytes()
    header = request.headers.get(HEADER_LENGTH)
    if header is None:
        return read_fast(raw), {}
    if not header.isdigit() or int(header) > len(raw):
        fail(400, "bad_request", f"{HEADER_LENGTH} must be the length of the JSON part of the body ({len(raw)} "
                                 "bytes in all)")
    size = int(header)
    body, rest, binary, offset = read_fast(raw[:size]), raw[size:], {}, 0
    for i, tensor in enumerate(body.get("inputs") or [] if isinstance(body, dict) else []):
        length = tensor.get("parameters", {}).get("binary_data_size") if isinstance(tensor, dict) and isinstance(
            tensor.get("parameters"), dict) else None
        if length is None:
            continue
        if not isinstance(length, int) or length < 0 or offset + length > len(rest):
            fail(400, "bad_request", f"inputs[{i}].parameters.binary_data_size: {length!r} bytes, but "
                                     f"{len(rest) - offset} are left after the JSON")
        binary[i], offset = rest[offset:offset + length], offset + length
    if offset != len(rest):
        fail(400, "bad_request", f"{len(rest) - offset} bytes after the JSON belong to no input's binary_data_size")
    return body, binary


def binary_outputs(body: dict, names: list[str]) -> set[str]:
    """Outputs asked for in the binary data extension: each with parameters.binary_data, or all of them with the
    request's parameters.binary_data_output (tritonclient's default)."""
    parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    if parameters.get("binary_data_output") is True:
        return set(names)
    return {o["name"] for o in body.get("outputs") or [] if isinstance(o, dict)
            and isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True}


def infer(name: str, number: str | None):
    ref = parse_ref(name if number is None else f"{parse_ref(name).name}/versions/{number}", "model")
    p = principal()
    version = serving(read_connection(), db, ref, p.id, p.is_admin)
    g.served_model, g.served_version = version.model, str(version.version)  # for /metrics
    require_ready(version.model, version)
    signature = version.signature
    body, binary = read_request()
    feeds, wanted, extra = v2_inputs(body, signature, services().settings.max_predict_rows, binary)
    names = [o["name"] for o in signature["outputs"]]
    session = session_for(services().models, services().store, version.version_id)
    runs = sample_runs(extra["parameters"], signature)
    results = run(session, feeds, names, runs)
    if wanted is not None:
        results = {n: results[n] for n in wanted}
    tensors, blobs = v2_outputs(results, signature, binary_outputs(body, list(results)))
    answer = {"model_name": version.model, "model_version": str(version.version), "outputs": tensors}
    if extra["id"] is not None:
        answer["id"] = extra["id"]
    if runs > 1:
        answer["parameters"] = {"samples": runs * signature["uncertainty"]["samples"]}
    if not blobs:
        return fast_json(answer)
    import orjson

    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(head + b"".join(blobs), mimetype="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


@bp.get("/models/<name>")
def model_metadata(name: str):
    return metadata(name, None)


@bp.get("/models/<name>/versions/<number>")
def version_metadata(name: str, number: str):
    return metadata(name, number)


@bp.get("/models/<name>/ready")
def ready_model(name: str):
    return model_ready(name, None)


@bp.get("/models/<name>/versions/<number>/ready")
def ready_version(name: str, number: str):
    return model_ready(name, number)


@bp.post("/models/<name>/infer")
def infer_model(name: str):
    return infer(name, None)


@bp.post("/models/<name>/versions/<number>/infer")
def infer_version(name: str, number: str):
    return infer(name, number)
