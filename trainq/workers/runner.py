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


def run_job(job_id: str, settings: Settings, worker: str, device: str | None = None, kind: str | None = None) -> str:
    """Claim and train a job; return what happened (skipped, succeeded, failed, cancelled, fenced)."""
    client = ServiceClient(settings.service_url, settings.worker_token)
    try:
        claim = client.claim(job_id, worker, kind)
    except Refused as exc:  # another attempt holds it, or it finished or was cancelled: nothing to do
        log.info("job %s not claimed: %s", job_id, exc)
        return "skipped"

    attempt_id, token = claim["attempt_id"], claim["token"]
    reporter = Reporter(client, attempt_id, token, heartbeat_seconds=claim["heartbeat_seconds"],
                        flush_seconds=settings.metrics_flush_seconds)
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
        result = fit(spec, device=dev, callbacks=[ReportingCallback(reporter)], checkpoint_sink=reporter.checkpoint,
                     resume=resume, interrupt=reporter.interrupt, arrays=arrays)
        status = "cancelled" if result.stop_reason == "cancelled" else "succeeded"
        outcome = {"status": status, "stop_reason": result.stop_reason, "epoch": result.epochs,
                   "best_epoch": result.best_epoch, "metrics": result.metrics}
        reporter.event(f"finished: {result.stop_reason} after {result.epochs} epochs "
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
