"""The Celery app of a worker: one queue per pool, a thin task that runs one job."""

from __future__ import annotations

import gc
import os
import socket

from celery import Celery, signals

from trainq.broker import EXPORT_TASK, SCORE_TASK, TRAIN_TASK, make_celery
from trainq.models.spec import installed_packages
from trainq.settings import Settings
from trainq.workers.client import ServiceClient
from trainq.workers.presence import Presence, warm_shutdown
from trainq.workers.shutdown import drain_flag


def preload() -> None:
    """Import the training stack once in the worker's parent process: each job runs in a fresh child forked
    from it, which then starts without paying seconds of imports. Importing torch initializes no CUDA."""
    import kornia.augmentation  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torchmetrics.functional  # noqa: F401

    import trainq.models.engine  # noqa: F401
    import trainq.models.packed  # noqa: F401
    import trainq.workers.runner  # noqa: F401

    # All of that lives as long as the process: kept out of the garbage collector's full passes (a pass walked it
    # all, 0.2 s with torch loaded, stalling a job's training), and out of the pages a forked child copies when
    # a pass would touch them (what the gc module's documentation advises before forking).
    gc.freeze()


def create_worker_app(settings: Settings, *, name: str, pool: str, kind: str = "cpu", device: str = "cpu",
                      concurrency: int = 1, gpus: int = 0) -> Celery:
    """The worker's Celery app. `kind` is cpu or gpu; `device` describes it for people (e.g. "cuda:0 NVIDIA H200").
    The main process registers the worker and heartbeats; a drain asked through the API finishes the running job."""
    app = make_celery(settings, "trainq-worker")
    preload()
    drain_flag(os.getpid()).unlink(missing_ok=True)  # a restarted container may reuse the pid of the last worker
    presence = Presence(ServiceClient(settings.service_url, settings.worker_token), name,
                        {"pool": pool, "kind": kind, "device": device, "concurrency": concurrency, "gpus": gpus,
                         "layers": installed_packages()},
                        every=settings.heartbeat_seconds, on_drain=warm_shutdown)

    @signals.worker_ready.connect(weak=False)
    def _online(**_):
        presence.start()

    @signals.worker_shutting_down.connect(weak=False)
    def _drain(**_):
        if presence.drained:
            return  # a drain asked through the API: the running job finishes here, then the worker stops
        # A SIGTERM (preemption, a rolling restart): Celery's warm shutdown would wait for the running job to finish,
        # which may take hours. Tell the job process instead: it stops within one batch, keeps its last finished
        # epoch's checkpoint and hands the job back to the queue.
        drain_flag(os.getpid()).touch()

    @signals.worker_shutdown.connect(weak=False)
    def _gone(**_):
        presence.stop()

    torch_device = "cuda" if kind == "gpu" else "cpu"  # a GPU worker sees one GPU (CUDA_VISIBLE_DEVICES): cuda:0

    @app.task(name=TRAIN_TASK, bind=True)
    def train(self, job_id: str, members: list[str] | None = None) -> str:
        """Train a job, or a pack's member jobs (`members`, the job among them) as one packed model."""
        from trainq.workers.runner import free_device_memory, run_pack

        try:
            return run_pack(members or [job_id], Settings(), worker=self.request.hostname or name,
                            device=torch_device, kind=kind, gpus=gpus)
        finally:  # after the outcome is reported: freeing memory is no part of the job's time
            free_device_memory(torch_device)

    @app.task(name=EXPORT_TASK)
    def export(version_id: str) -> str:
        from trainq.workers.exporter import run_export

        return run_export(version_id, Settings())

    @app.task(name=SCORE_TASK)
    def score(batch_id: str) -> str:
        from trainq.workers.scorer import run_score

        return run_score(batch_id, Settings())

    return app


def default_name(pool: str) -> str:
    return f"{pool}@{socket.gethostname()}-{os.getpid()}"
