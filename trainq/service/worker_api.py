"""The worker's HTTP API: claim, heartbeat, metrics, events, checkpoints, finish.

Every route needs the worker token; every route after the claim names its attempt and carries the
attempt token in `X-Trainq-Attempt-Token`. A write from an attempt that is no longer live gets 409.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import timedelta

from flask import Blueprint, jsonify, request, url_for
from sqlalchemy import select, update

from trainq.models.checkpoint import read_meta
from trainq.service import jobs, registry, scoring, sweeps, workers
from trainq.service.context import db, services
from trainq.service.datasets import claim_json
from trainq.service.http import body_bytes, fail, read_body, send_object
from trainq.service.job_reads import send_checkpoint
from trainq.service.objects import (StoreError, batch_key, checkpoint_key, model_key, sha256,
                                    staging_key)
from trainq.service.tables import (FINISHED, BatchJob, Checkpoint, Dataset, Job, ModelVersion, Sweep, VersionState,
                                   new_id)

bp = Blueprint("worker_api", __name__, url_prefix="/api/v1/worker")


@bp.before_request
def require_worker_token():
    """Every worker route needs the worker token; nothing else gets past this."""
    expected = services().settings.worker_token
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
        fail(401, "unauthorized", "a worker token is required", extra_headers={"WWW-Authenticate": "Bearer"})


@bp.errorhandler(jobs.Fenced)
@bp.errorhandler(registry.Fenced)
def fenced(exc: Exception):
    """Any write from an attempt that is no longer the job's live one: refused, whichever route it came by."""
    return jsonify({"error": "fenced", "message": str(exc)}), 409


def lease() -> timedelta:
    return timedelta(seconds=services().settings.lease_seconds)


def live(attempt_id: str):
    token = request.headers.get("X-Trainq-Attempt-Token", "")
    try:
        return jobs.live_attempt(db(), attempt_id, token)
    except LookupError:
        fail(404, "not_found", f"no attempt {attempt_id} with that token")


@bp.post("/jobs/<hexid:job_id>/claim")
def claim(job_id: str):
    body = read_body()
    worker = str(body.get("worker", "unknown"))[:255] if isinstance(body, dict) else "unknown"
    kind = body.get("kind") if isinstance(body, dict) else None
    gpus = body.get("gpus") if isinstance(body, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else None
    status, answer = claim_jobs([job_id], worker, kind, gpus, layers)[0]
    if status != 200:
        fail(status, answer["error"], answer["message"])
    return jsonify(answer)


@bp.post("/claims")
def claim_many():
    """Claim several jobs for one worker (a pack's members), each with its own attempt, token and lease: one
    request instead of one per member. Each answer is what the single claim answers, or its error."""
    body = read_body()
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or len(ids) > 256 or not all(
            isinstance(i, str) and len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids):
        fail(400, "bad_request", "job_ids: a list of 1 to 256 job ids", errors=[{"path": "job_ids",
                                                                               "message": "1 to 256 job ids"}])
    worker = str(body.get("worker", "unknown"))[:255]
    answers = [answer if status == 200 else {"job_id": job_id, **answer}
               for job_id, (status, answer) in zip(ids, claim_jobs(ids, worker, body.get("kind"), body.get("gpus"),
                                                                    body.get("layers")))]
    return jsonify({"claims": answers})


def claim_jobs(job_ids: list[str], worker: str, kind, gpus, layers=None) -> list[tuple[int, dict]]:
    """Claim jobs in one transaction: per job (200, what the worker needs to run it) or (4xx, {error, message}).
    `layers` are the worker's installed layer types ({type: {package, version}}): a job planned with one the worker
    lacks, or has in another version, stays queued for a worker that has it."""
    session = db()
    refused: dict[str, tuple[int, dict]] = {}
    rows = session.execute(select(Job.id, Job.device, Job.spec, Job.plugins).where(Job.id.in_(set(job_ids))))
    for job_id, wanted, spec, plugins in rows:
        needs = int(spec.get("resources", {}).get("gpus", 1))
        missing = workers.missing_layers(plugins, layers)
        if missing:
            refused[job_id] = 409, {"error": "missing_layer", "message": f"job {job_id} needs {missing}; {worker} "
                                                                          "does not have it"}
            continue
        if kind in workers.KINDS and wanted in workers.KINDS and wanted != kind:
            refused[job_id] = 409, {"error": "wrong_device", "message": f"job {job_id} needs a {wanted.upper()} "
                                                                        f"worker; {worker} is a {kind.upper()} worker"}
        elif isinstance(gpus, int) and needs > 1 and gpus < needs:
            refused[job_id] = 409, {"error": "wrong_device",
                                    "message": f"job {job_id} needs {needs} GPUs; {worker} has {gpus}"}
    claimed = jobs.claim(session, [i for i in job_ids if i not in refused], worker, lease())
    session.commit()
    answers, seen = [], set()
    for job_id in job_ids:
        c = claimed.get(job_id)
        if job_id in seen:  # one claim a job: the same id again is refused, as a second request would be
            answers.append((409, {"error": "not_claimable", "message": f"job {job_id} is named twice in this claim"}))
            continue
        seen.add(job_id)
        if job_id in refused:
            answers.append(refused[job_id])
        elif isinstance(c, LookupError):
            answers.append((404, {"error": "not_found", "message": f"no job {job_id}"}))
        elif isinstance(c, jobs.Conflict):
            answers.append((409, {"error": "not_claimable", "message": str(c)}))
        else:
            answers.append((200, claim_answer(c)))
    return answers


def claim_answer(c: jobs.Claim) -> dict:
    """What a worker needs to run a job it claimed."""
    settings = services().settings
    store = services().store
    resume = None
    if c.resume is not None:  # from the object store itself when there is one, else through the service
        resume = {"checkpoint_id": c.resume.id, "epoch": c.resume.epoch,
                  "url": store.presign_get(checkpoint_key(c.job.id, c.resume.id))
                  or url_for("worker_api.resume_checkpoint", attempt_id=c.attempt.id)}
    dataset = None
    if c.job.dataset_id is not None:
        d = db().get(Dataset, c.job.dataset_id)
        dataset = {**claim_json(d), "url": store.presign_get(d.key)
                   or url_for("worker_api.attempt_dataset", attempt_id=c.attempt.id)}
    prune = None
    if c.job.sweep_id is not None:
        sweep = db().get(Sweep, c.job.sweep_id)
        if sweep is not None and sweep.spec.get("pruner", {}).get("type", "none") != "none":
            prune = {"metric": sweep.spec.get("metric", "val_loss"), "url": url_for("worker_api.prune_check",
                                                                                   attempt_id=c.attempt.id),
                     "epochs": sweeps.decision_epochs(sweep)}
    return {"job_id": c.job.id, "attempt_id": c.attempt.id, "attempt": c.attempt.number, "token": c.token,
            "spec": c.job.spec, "lease_seconds": settings.lease_seconds,
            "heartbeat_seconds": settings.heartbeat_seconds, "resume": resume, "dataset": dataset,
            "prune": prune, "direct_checkpoints": store.direct}


@bp.post("/attempts/<hexid:attempt_id>/heartbeat")
def heartbeat(attempt_id: str):
    body = read_body() if request.content_length else {}
    epoch = beat_epoch(body)
    beats = services().beats
    if beats is not None:  # PostgreSQL: one statement; only an attempt that is not live takes the ORM path
        with beats.connect() as conn:
            cancel = jobs.quick_heartbeat(conn, attempt_id, request.headers.get("X-Trainq-Attempt-Token", ""),
                                          lease(), epoch)
        if cancel is not None:
            return jsonify({"cancel": cancel})
    attempt, _ = live(attempt_id)
    session = db()
    cancel = jobs.heartbeat(session, attempt, lease(), epoch)
    session.commit()
    return jsonify({"cancel": cancel})


@bp.post("/attempts/<hexid:attempt_id>/metrics")
def metrics(attempt_id: str):
    body = read_body()
    attempt, job = live(attempt_id)
    points = metric_points(body.get("points") if isinstance(body, dict) else None, "points")
    session = db()
    stored = jobs.record_metrics(session, job.id, points)
    session.commit()
    return jsonify({"received": stored})


def metric_points(raw, path: str) -> list[tuple[str, int, int, float]]:
    """Metric points as [name, step, epoch, value] rows, checked; a non-finite value is dropped (JSON cannot carry
    NaN portably, and a non-finite metric is simply not stored)."""
    points = []
    try:
        for name, step, epoch, value in raw:
            if not isinstance(name, str) or len(name) > 64:
                raise ValueError("name")
            value = float(value)
            if math.isfinite(value):
                points.append((name, int(step), int(epoch), value))
    except (KeyError, TypeError, ValueError):
        fail(400, "bad_request", f"{path} must be a list of [name, step, epoch, value]",
             errors=[{"path": path, "message": "a list of [name, step, epoch, value]"}])
    return points


def event_rows(raw) -> list[tuple[str, str]]:
    out = []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, dict):
            level = entry.get("level") if entry.get("level") in ("info", "warning", "error") else "info"
            out.append((str(entry.get("message", ""))[:20_000], level))
    return out


@bp.post("/attempts/<hexid:attempt_id>/events")
def events(attempt_id: str):
    body = read_body()
    _, job = live(attempt_id)
    session = db()
    for message, level in event_rows(body.get("events") if isinstance(body, dict) else None):
        jobs.add_event(session, job.id, message, source="worker", level=level)
    session.commit()
    return jsonify({"ok": True})


@bp.post("/attempts/<hexid:attempt_id>/checkpoints")
def upload_checkpoint(attempt_id: str):
    blob = body_bytes()
    attempt, job = live(attempt_id)
    try:
        meta = read_meta(blob)  # a safetensors header with trainq metadata, or refused: nothing is unpickled
    except ValueError as exc:
        fail(400, "bad_checkpoint", str(exc))
    info = {"epoch": meta["epoch"], "step": meta["step"], "is_best": request.args.get("is_best") == "1",
            "metric_name": request.args.get("metric_name")}
    try:
        info["metric"] = float(request.args["metric"]) if request.args.get("metric") else None
    except ValueError:
        fail(400, "bad_request", "metric must be a number")
    keep = int(job.spec.get("training", {}).get("keep_checkpoints", 2))
    session = db()
    try:
        ckpt = jobs.store_checkpoint(session, attempt, job, blob, info, services().store, keep)
    except StoreError as exc:
        session.rollback()
        fail(503, "store_unavailable", f"{exc}; send it again later")
    session.commit()
    return jsonify({"id": ckpt.id}), 201


@bp.post("/attempts/<hexid:attempt_id>/checkpoints/presign")
def presign_checkpoint(attempt_id: str):
    """Where to PUT a checkpoint straight into the object store: a new checkpoint id and a presigned URL for its key
    (404 when the service keeps files itself: upload through POST .../checkpoints instead)."""
    _, job = live(attempt_id)
    store = services().store
    if not store.direct:
        fail(404, "not_found", "this service stores files itself: POST the checkpoint to .../checkpoints")
    checkpoint_id = new_id()
    return jsonify({"id": checkpoint_id, "url": store.presign_put(checkpoint_key(job.id, checkpoint_id))}), 201


@bp.post("/attempts/<hexid:attempt_id>/checkpoints/record")
def record_checkpoint(attempt_id: str):
    """Record a checkpoint the worker PUT into the object store: read back, it must have the size and sha256 the
    worker says and a trainq checkpoint's header, or nothing is recorded (an upload that failed or was cut off)."""
    body = read_body()
    attempt, job = live(attempt_id)
    if not isinstance(body, dict) or not re.fullmatch(r"[0-9a-f]{32}", str(body.get("id", ""))):
        fail(400, "bad_request", "id: the checkpoint id that .../checkpoints/presign gave")
    store, key = services().store, checkpoint_key(job.id, body["id"])
    try:
        blob = store.get(key)
    except StoreError as exc:
        fail(422, "not_stored", f"checkpoint {body['id']} is not in the store ({exc}): upload it again")
    digest = sha256(blob)
    if len(blob) != body.get("size") or digest != body.get("sha256"):
        store.delete(key)
        fail(422, "not_stored", f"checkpoint {body['id']} in the store has {len(blob)} bytes and another sha256 than "
                                "the worker sent: upload it again")
    try:
        meta = read_meta(blob)
    except ValueError as exc:
        store.delete(key)
        fail(400, "bad_checkpoint", str(exc))
    metric = body.get("metric")
    info = {"epoch": meta["epoch"], "step": meta["step"], "is_best": bool(body.get("is_best")),
            "metric_name": body.get("metric_name") if isinstance(body.get("metric_name"), str) else None,
            "metric": float(metric) if isinstance(metric, (int, float)) and not isinstance(metric, bool) else None}
    keep = int(job.spec.get("training", {}).get("keep_checkpoints", 2))
    session = db()
    ckpt = jobs.record_checkpoint(session, jobs.new_checkpoint(attempt, job, info, len(blob), digest, body["id"]),
                                  store, keep)
    session.commit()
    return jsonify({"id": ckpt.id}), 201


@bp.get("/attempts/<hexid:attempt_id>/resume")
def resume_checkpoint(attempt_id: str):
    _, job = live(attempt_id)
    ckpt = jobs.latest_checkpoint(db(), job.id)
    if ckpt is None:
        fail(404, "not_found", "the job has no checkpoint")
    return send_checkpoint(ckpt)


@bp.get("/attempts/<hexid:attempt_id>/dataset")
def attempt_dataset(attempt_id: str):
    _, job = live(attempt_id)
    if not job.dataset_id:
        fail(404, "not_found", "the job uses no uploaded dataset")
    d = db().get(Dataset, job.dataset_id)
    return send_object(services().store, d.key, d.key.rsplit("/", 1)[-1], missing="the job's uploaded dataset is gone")


@bp.post("/attempts/<hexid:attempt_id>/release")
def release(attempt_id: str):
    body = read_body() if request.content_length else {}
    attempt, job = live(attempt_id)
    reason = str(body.get("reason", "worker shutting down")) if isinstance(body, dict) else "worker shutting down"
    session = db()
    job = jobs.release(session, attempt, job, reason)
    if job.pack_id is not None and job.status == "queued":
        # A pack's members are released one by one: the reconciler sends them back together, as one pack
        session.execute(update(Job).where(Job.id == job.id).values(enqueued_at=None))
        session.commit()
        return jsonify({"status": job.status})
    session.commit()
    if not jobs.mark_enqueued(session, job, services().enqueue):
        session.commit()
    return jsonify({"status": job.status})


@bp.post("/attempts/<hexid:attempt_id>/finish")
def finish(attempt_id: str):
    body = read_body()
    attempt, job = live(attempt_id)
    if not isinstance(body, dict) or body.get("status") not in FINISHED:
        fail(400, "bad_request", f"status must be one of {list(FINISHED)}")
    session = db()
    job = jobs.finish(session, attempt, job, body)
    registry.register_finished(session, job)
    session.commit()
    registry.send_exports(session, services().export)
    if job.sweep_id is not None:  # the sweep goes on at once: tell Optuna, launch the next trial
        created = sweeps.settle(session, services().settings, job.sweep_id)
        session.commit()
        registry.send_exports(session, services().export)  # its best trial's model, when the sweep has ended
        jobs.enqueue_all(session, created, services().enqueue)
    return jsonify({"status": job.status})


@bp.post("/attempts/<hexid:attempt_id>/prune")
def prune_check(attempt_id: str):
    """A sweep trial reports its metric at the end of an epoch; the answer says whether its pruner stops it."""
    body = read_body()
    _, job = live(attempt_id)
    try:
        epoch, value = int(body["epoch"]), float(body["value"])
    except (KeyError, TypeError, ValueError):
        fail(400, "bad_request", "epoch (an integer) and value (a number) are required")
    if job.sweep_id is None or not math.isfinite(value):
        return jsonify({"prune": False})
    session, studies = db(), {}
    prune = sweeps.should_prune(session, services().settings, job, epoch, value, studies)
    sweeps.flush(studies)  # its reported value and rung mark in one transaction
    if prune:
        jobs.add_event(session, job.id, f"pruned at epoch {epoch} ({value:.4g}): the sweep's pruner stops it")
        session.commit()
    return jsonify({"prune": prune})


@bp.post("/batch")
def batch():
    """Many attempts' reports in one request (a pack's members, from one worker): each entry names an attempt and
    its token, and carries any of heartbeat {epoch}, points, events, prune {epoch, value} and finish {outcome}. One
    transaction for all; an entry whose attempt is no longer live answers fenced and changes nothing. Finishing
    trials settles their sweep once, not once per trial. A report round (beats, points and events only, the
    common case) is stored in a few statements for all its entries (jobs.report_many)."""
    body = read_body()
    entries = body.get("attempts") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries or len(entries) > 256:
        fail(400, "bad_request", "attempts: a list of 1 to 256 entries",
             errors=[{"path": "attempts", "message": "a list of 1 to 256 entries"}])
    session, settings = db(), services().settings
    checked = []  # every entry checked before any is stored: a malformed one is a 400 that changes nothing
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("attempt_id"), str) \
                or not isinstance(entry.get("token"), str):
            fail(400, "bad_request", f"attempts[{i}]: attempt_id and token are required",
                 errors=[{"path": f"attempts[{i}]", "message": "attempt_id and token are required"}])
        points = metric_points(entry.get("points", []), f"attempts[{i}].points")
        finish = entry.get("finish")
        if finish is not None and (not isinstance(finish, dict) or finish.get("status") not in FINISHED):
            fail(400, "bad_request", f"attempts[{i}].finish.status must be one of {list(FINISHED)}",
                 errors=[{"path": f"attempts[{i}].finish.status", "message": f"one of {list(FINISHED)}"}])
        checked.append((entry, points, finish))
    if all(finish is None and "prune" not in entry for entry, _, finish in checked):  # a report round
        reports = [jobs.Report(entry["attempt_id"], entry["token"], isinstance(entry.get("heartbeat"), dict),
                               beat_epoch(entry.get("heartbeat")), points, event_rows(entry.get("events")))
                   for entry, points, _ in checked]
        answers = [{"attempt_id": entry["attempt_id"], **answer}
                   for (entry, _, _), answer in zip(checked, jobs.report_many(session, reports, lease()))]
        session.commit()
        return jsonify({"attempts": answers})
    answers, settled, studies = [], set(), {}
    held = jobs.load_attempts(session, [entry["attempt_id"] for entry, _, _ in checked])  # noqa: F841 - kept mapped
    for entry, points, finish in checked:
        answer: dict = {"attempt_id": entry["attempt_id"]}
        answers.append(answer)
        try:
            with session.begin_nested():
                attempt, job = jobs.live_attempt(session, entry["attempt_id"], entry["token"])
                beat = entry.get("heartbeat")
                if isinstance(beat, dict):
                    answer["cancel"] = jobs.heartbeat(session, attempt, lease(), beat_epoch(beat))
                if points:
                    jobs.record_metrics(session, job.id, points)
                for message, level in event_rows(entry.get("events")):
                    jobs.add_event(session, job.id, message, source="worker", level=level)
                prune = entry.get("prune")
                if isinstance(prune, dict) and job.sweep_id is not None:
                    epoch, value = prune.get("epoch"), prune.get("value")
                    if isinstance(epoch, int) and isinstance(value, (int, float)) and math.isfinite(value):
                        answer["prune"] = sweeps.should_prune(session, settings, job, epoch, float(value), studies)
                        if answer["prune"]:
                            jobs.add_event(session, job.id, f"pruned at epoch {epoch} ({value:.4g}): the sweep's "
                                                            "pruner stops it")
                if finish is not None:
                    job = jobs.finish(session, attempt, job, finish)
                    registry.register_finished(session, job)
                    answer["status"] = job.status
                    if job.sweep_id is not None:
                        settled.add(job.sweep_id)
        except LookupError:
            answer["error"] = "not_found"
        except (jobs.Fenced, registry.Fenced):
            answer["fenced"] = True
    sweeps.flush(studies)
    session.commit()
    if settled:
        registry.send_exports(session, services().export)
        for sweep_id in settled:  # the sweep goes on at once: tell Optuna, launch the next trials
            created = sweeps.settle(session, settings, sweep_id)
            session.commit()
            registry.send_exports(session, services().export)
            jobs.enqueue_all(session, created, services().enqueue)
    return jsonify({"attempts": answers})


def beat_epoch(beat) -> int | None:
    """The epoch a heartbeat reports, when it is one an epoch column holds; else none (the beat still counts)."""
    epoch = beat.get("epoch") if isinstance(beat, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch < 2**31 else None


def worker_info(body) -> dict:
    """What a worker says of itself, checked: a bad field is a 400 naming it, never a 500."""
    if not isinstance(body, dict):
        fail(400, "bad_request", "the body must be a JSON object")
    checks = {"pool": lambda v: isinstance(v, str) and 0 < len(v) <= 63,
              "kind": lambda v: v in workers.KINDS,
              "device": lambda v: isinstance(v, str) and len(v) <= 255,
              "host": lambda v: isinstance(v, str) and len(v) <= 255,
              "pid": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "concurrency": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1024,
              "gpus": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64,
              "layers": workers.valid_layers}
    body = {"gpus": 0, "layers": {}, **body}
    for field, ok in checks.items():
        if not ok(body.get(field)):
            fail(400, "bad_request", f"{field}: missing or not valid", errors=[{"path": field, "message": "not valid"}])
    return {field: body[field] for field in checks}


@bp.post("/workers/<name>/heartbeat")
def worker_heartbeat(name: str):
    """A worker's main process says it is alive; the answer tells it whether to drain."""
    info = worker_info(read_body())
    beats = services().beats
    if beats is not None:  # PostgreSQL: one statement for a worker already registered under this pid
        with beats.connect() as conn:
            drain = workers.quick_heartbeat(conn, name[:255], info["pid"])
        if drain is not None:
            return jsonify({"drain": drain})
    session = db()
    drain = workers.heartbeat(session, name[:255], info)
    session.commit()
    return jsonify({"drain": drain})


@bp.post("/workers/<name>/stopped")
def worker_stopped(name: str):
    session = db()
    workers.stopped(session, name)
    session.commit()
    return jsonify({"ok": True})


# ---------------------------------------------------------------------------------------------------------------------
# Exports of registered model versions: claim, read the checkpoint and data, upload the bundle's files, finish
# ---------------------------------------------------------------------------------------------------------------------


def live_export(version_id: str) -> ModelVersion:
    try:
        return registry.live_export(db(), version_id, request.headers.get("X-Trainq-Attempt-Token", ""))
    except LookupError:
        fail(404, "not_found", f"no model version {version_id}")


def dataset_for(version: ModelVersion) -> Dataset | None:
    return db().get(Dataset, version.dataset_id) if version.dataset_id else None


@bp.post("/exports/<hexid:version_id>/claim")
def claim_export(version_id: str):
    session = db()
    try:
        version, token = registry.claim_export(session, version_id)
    except LookupError:
        fail(404, "not_found", f"no model version {version_id}")
    checkpoint = session.get(Checkpoint, version.checkpoint_id)
    if checkpoint is None:
        version.state, version.error = VersionState.failed.value, "its job's checkpoint is gone"
        session.commit()
        fail(409, "gone", "the version's checkpoint is gone")
    d = dataset_for(version)
    session.commit()
    store = services().store
    dataset = None if d is None else {
        **claim_json(d), "url": store.presign_get(d.key) or url_for("worker_api.export_dataset", version_id=version.id)}
    # With an object store the worker moves the bytes itself: the checkpoint from a presigned GET, the bundle's files
    # by presigned PUTs into this claim's staging place (moved into the bundle at the finish, which is fenced).
    files = {name: store.presign_put(staging_key("exports", version.id, token, name))
             for name in registry.FILES} if store.direct else None
    return jsonify({"version_id": version.id, "version": version.version, "token": token, "spec": version.spec,
                    "checkpoint_url": store.presign_get(checkpoint_key(checkpoint.job_id, checkpoint.id))
                    or url_for("worker_api.export_checkpoint", version_id=version.id),
                    "dataset": dataset, "files": files})


@bp.get("/exports/<hexid:version_id>/checkpoint")
def export_checkpoint(version_id: str):
    version = live_export(version_id)
    checkpoint = db().get(Checkpoint, version.checkpoint_id)
    if checkpoint is None:
        fail(404, "not_found", "the version's checkpoint is gone")
    return send_checkpoint(checkpoint)


@bp.get("/exports/<hexid:version_id>/dataset")
def export_dataset(version_id: str):
    d = dataset_for(live_export(version_id))
    if d is None:
        fail(404, "not_found", "the version's job used no uploaded dataset, or it is gone")
    return send_object(services().store, d.key, d.key.rsplit("/", 1)[-1], missing="the version's dataset is gone")


@bp.post("/exports/<hexid:version_id>/verifying")
def export_verifying(version_id: str):
    session = db()
    version = live_export(version_id)
    version.state = VersionState.verifying.value
    session.commit()
    return jsonify({"state": version.state})


@bp.put("/exports/<hexid:version_id>/files/<name>")
def export_file(version_id: str, name: str):
    blob = body_bytes()
    version = live_export(version_id)
    try:
        stored = registry.store_file(services().store, version, name, blob)
    except registry.RegistryError as exc:
        fail(exc.status, exc.code, str(exc))
    return jsonify(stored), 201


@bp.post("/exports/<hexid:version_id>/finish")
def export_finish(version_id: str):
    body = read_body()
    session = db()
    version = live_export(version_id)
    if not isinstance(body, dict) or body.get("state") not in (VersionState.ready.value, VersionState.failed.value):
        fail(400, "bad_request", "state must be ready or failed")
    store = services().store
    try:
        if store.direct and body.get("state") == VersionState.ready.value:  # files PUT into this claim's staging
            token = request.headers.get("X-Trainq-Attempt-Token", "")
            for name in registry.FILES:
                store.move(staging_key("exports", version.id, token, name), model_key(version.id, name))
        version = registry.finish_export(session, store, version, body)
    except StoreError as exc:
        fail(503, "store_unavailable", f"{exc}; finish again later")
    except registry.RegistryError as exc:
        fail(exc.status, exc.code, str(exc))
    session.commit()
    return jsonify({"state": version.state})


# ---------------------------------------------------------------------------------------------------------------------
# Batch scoring: claim, read the model and the input, report progress, upload the output, finish
# ---------------------------------------------------------------------------------------------------------------------


def live_batch(batch_id: str) -> BatchJob:
    try:
        return scoring.live(db(), batch_id, request.headers.get("X-Trainq-Attempt-Token", ""))
    except LookupError:
        fail(404, "not_found", f"no batch {batch_id}")


@bp.post("/batches/<hexid:batch_id>/claim")
def claim_batch(batch_id: str):
    session = db()
    try:
        batch, token = scoring.claim(session, batch_id)
    except LookupError:
        fail(404, "not_found", f"no batch {batch_id}")
    version = session.get(ModelVersion, batch.version_id)
    dataset = session.get(Dataset, batch.dataset_id) if batch.dataset_id else None
    if batch.source == "dataset" and dataset is None:
        batch.status, batch.error, batch.token_hash = "failed", "its dataset was deleted", None
        session.commit()
        fail(409, "gone", "the batch's dataset is gone")
    session.commit()
    store = services().store
    source = dataset.key if batch.source == "dataset" else batch_key(batch.id, f"input.{batch.source}")
    return jsonify({"batch_id": batch.id, "token": token, "source": batch.source, "signature": version.signature,
                    "columns": dataset.columns if dataset else None,
                    "dataset": claim_json(dataset) if batch.source == "dataset" else None,
                    "model_url": store.presign_get(model_key(batch.version_id, "model.onnx"))
                    or url_for("worker_api.batch_model", batch_id=batch.id),
                    "input_url": store.presign_get(source) or url_for("worker_api.batch_input", batch_id=batch.id),
                    "output_url": store.presign_put(staging_key("batches", batch.id, token, "output.csv"))
                    if store.direct else None})


@bp.get("/batches/<hexid:batch_id>/model")
def batch_model(batch_id: str):
    batch = live_batch(batch_id)
    return send_object(services().store, model_key(batch.version_id, "model.onnx"), "model.onnx",
                       missing="the batch's model file is gone")


@bp.get("/batches/<hexid:batch_id>/input")
def batch_input(batch_id: str):
    batch = live_batch(batch_id)
    key = (db().get(Dataset, batch.dataset_id).key if batch.source == "dataset"
           else batch_key(batch.id, f"input.{batch.source}"))
    return send_object(services().store, key, key.rsplit("/", 1)[-1], missing="the batch's input is gone")


@bp.post("/batches/<hexid:batch_id>/progress")
def batch_progress(batch_id: str):
    body = read_body()
    session = db()
    batch = live_batch(batch_id)
    try:
        scoring.progress(batch, body if isinstance(body, dict) else {})
    except registry.RegistryError as exc:
        fail(exc.status, exc.code, str(exc))
    session.commit()
    return jsonify({"ok": True})


@bp.put("/batches/<hexid:batch_id>/output")
def batch_upload(batch_id: str):
    blob = body_bytes()
    return jsonify(scoring.store_output(services().store, live_batch(batch_id), blob)), 201


@bp.post("/batches/<hexid:batch_id>/finish")
def batch_finish(batch_id: str):
    body = read_body()
    session = db()
    batch = live_batch(batch_id)
    if not isinstance(body, dict) or body.get("status") not in ("succeeded", "failed"):
        fail(400, "bad_request", "status must be succeeded or failed")
    store = services().store
    try:
        if store.direct and body.get("status") == "succeeded":  # the output PUT into this claim's staging place
            store.move(staging_key("batches", batch.id, request.headers.get("X-Trainq-Attempt-Token", ""),
                                   "output.csv"), batch_key(batch.id, "output.csv"))
        batch = scoring.finish(session, store, batch, body)
    except StoreError as exc:
        fail(503, "store_unavailable", f"{exc}; finish again later")
    except registry.RegistryError as exc:
        fail(exc.status, exc.code, str(exc))
    session.commit()
    return jsonify({"status": batch.status})
