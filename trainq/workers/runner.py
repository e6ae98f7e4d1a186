"""Run one job on this worker: claim it, train it while reporting, and report the outcome."""

from __future__ import annotations

import logging
import traceback

from trainq.models.engine import fit, pick_device
from trainq.models.spec import DatasetInfo, JobSpec
from trainq.settings import Settings
from trainq.workers.client import Fenced, Refused, ServiceClient
from trainq.workers.reporter import Reporter, ReportingCallback

log = logging.getLogger(__name__)


def read_arrays(blob: bytes):
    """An uploaded dataset's arrays, from the .npz the service stored; never unpickled."""
    import io

    import numpy as np

    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory error, or the CPU allocator failing to allocate."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def fit_retrying_oom(spec: JobSpec, say, *, fit=fit, resume: bytes | None = None, checkpoint_sink=None, **kwargs):
    """Train; on running out of memory, retry once with micro-batches of half the size and twice the gradient
    accumulation steps (the same effective batch, about half the activation memory), from the last checkpoint
    this attempt made. `say(message, level)` tells the job's event log. A second out-of-memory fails the job."""
    latest = {"blob": resume}

    def sink(blob: bytes, info: dict) -> None:
        latest["blob"] = blob
        if checkpoint_sink is not None:
            checkpoint_sink(blob, info)

    try:
        return fit(spec, resume=resume, checkpoint_sink=sink, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
        if not out_of_memory(exc):
            raise
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        steps = spec.training.accumulate_steps * 2
        from trainq.models.spec import batch_size

        micro = -(-batch_size(spec) // steps)
        say(f"out of memory ({type(exc).__name__}) with micro-batches of {-(-batch_size(spec) // (steps // 2))}: "
            f"retrying once with micro-batches of {micro} and {steps} gradient accumulation steps per optimizer "
            "step (the same effective batch)", "warning")
        retry = spec.model_copy(update={"training": spec.training.model_copy(update={"accumulate_steps": steps})})
        try:
            return fit(retry, resume=latest["blob"], checkpoint_sink=sink, **kwargs)
        except Exception as again:  # noqa: BLE001
            if out_of_memory(again):
                raise MemoryError(f"out of memory again with micro-batches of {micro} ({steps} accumulation "
                                  "steps): make the model or the batch smaller") from again
            raise


def run_job(job_id: str, settings: Settings, worker: str, device: str | None = None, kind: str | None = None,
            gpus: int = 0) -> str:
    """Claim and train a job; return what happened (skipped, succeeded, failed, cancelled, fenced)."""
    client = ServiceClient(settings.service_url, settings.worker_token)
    try:
        claim = client.claim(job_id, worker, kind, gpus)
    except Refused as exc:  # another attempt holds it, or it finished or was cancelled: nothing to do
        log.info("job %s not claimed: %s", job_id, exc)
        return "skipped"

    attempt_id, token = claim["attempt_id"], claim["token"]
    reporter = Reporter(client, attempt_id, token, heartbeat_seconds=claim["heartbeat_seconds"],
                        flush_seconds=settings.metrics_flush_seconds)
    reporter.prune = claim.get("prune")
    reporter.start()
    outcome: dict = {}
    try:
        spec = JobSpec.model_validate(claim["spec"])
        arrays = None
        if claim.get("dataset"):
            info = claim["dataset"]
            spec.dataset._info = DatasetInfo(tuple(info["shape"]), info["classes"], info["rows"])
            arrays = read_arrays(client.download(info["url"], token))
        resume = client.download(claim["resume"]["url"], token) if claim["resume"] else None
        dev = pick_device(device)
        if dev.type == "cpu":
            import os

            import torch

            torch.set_num_threads(settings.cpu_threads or os.cpu_count() or 1)  # the engine picks within this share
        reporter.event(f"training on {dev} (worker {worker}, attempt {claim['attempt']})"
                       + (f", resuming after epoch {claim['resume']['epoch']}" if resume else ""))
        world = spec.resources.gpus if dev.type == "cuda" else 1
        if world > 1:
            reporter.event(f"data-parallel over {world} GPUs (DDP, NCCL); metrics from rank 0")
        result = fit_retrying_oom(spec, reporter.event, device=dev, callbacks=[ReportingCallback(reporter)],
                                  checkpoint_sink=reporter.checkpoint, resume=resume, interrupt=reporter.interrupt,
                                  arrays=arrays, world=world)
        status = "cancelled" if result.stop_reason == "cancelled" else "succeeded"
        stop_reason = result.stop_reason
        if reporter.pruned and not reporter.cancelled and not reporter.draining:
            status = stop_reason = "pruned"
        outcome = {"status": status, "stop_reason": stop_reason, "epoch": result.epochs,
                   "best_epoch": result.best_epoch, "metrics": result.metrics}
        reporter.event(f"finished: {stop_reason} after {result.epochs} epochs "
                       f"(setup {result.setup_seconds:.2f}s, training {result.train_seconds:.2f}s)")
    except Exception as exc:  # noqa: BLE001 - a failing job ends failed; the worker goes on
        log.exception("job %s failed", job_id)
        reporter.event(traceback.format_exc(), level="error")
        outcome = {"status": "failed", "stop_reason": "error", "epoch": reporter.epoch,
                   "error": f"{type(exc).__name__}: {exc}"}
    finally:
        reporter.close()
    if reporter.fenced:
        return "fenced"
    if reporter.draining and outcome.get("status") == "cancelled" and not reporter.cancelled:
        try:
            client.call("POST", f"/api/v1/worker/attempts/{attempt_id}/release",
                        json={"reason": f"worker {worker} shutting down"}, attempt_token=token, retry_for=20)
        except Fenced:
            return "fenced"
        return "released"
    try:
        client.call("POST", f"/api/v1/worker/attempts/{attempt_id}/finish", json=outcome, attempt_token=token)
    except Fenced:
        return "fenced"
    return outcome["status"]


def free_device_memory(device_type: str | None) -> None:
    """A job's GPU memory goes when it ends: the process stays warm for the next job, its CUDA cache must not.
    (On CPU, reference counting frees a finished job's tensors; a full collection would only cost time.)"""
    if device_type == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
