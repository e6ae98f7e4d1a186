"""The Celery app of a worker: one queue per pool, a thin task that runs one job."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from celery import Celery, signals

from trainq.broker import TRAIN_TASK, make_celery
from trainq.settings import Settings


def preload() -> None:
    """Import the training stack once in the worker's parent process: each job runs in a fresh child forked
    from it, which then starts without paying seconds of imports. Importing torch initializes no CUDA."""
    import kornia.augmentation  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torchmetrics.functional  # noqa: F401

    import trainq.models.engine  # noqa: F401
    import trainq.workers.runner  # noqa: F401


def drain_flag(worker_pid: int) -> Path:
    """The file that tells a worker's job processes to hand their job back: the worker is shutting down."""
    return Path(tempfile.gettempdir()) / f"trainq-drain-{worker_pid}"


def draining() -> bool:
    """Whether this job process's worker is shutting down (SIGTERM: a drain or a preemption)."""
    return drain_flag(os.getppid()).exists()


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings, "trainq-worker")
    preload()
    drain_flag(os.getpid()).unlink(missing_ok=True)  # a restarted container may reuse the pid of the last worker

    @signals.worker_shutting_down.connect(weak=False)
    def _drain(**_):
        # Celery's warm shutdown waits for the running job to finish, which may take hours. Tell the job process
        # instead: it stops within one batch, keeps its last finished epoch's checkpoint and hands the job back.
        drain_flag(os.getpid()).touch()

    @app.task(name=TRAIN_TASK, bind=True)
    def train(self, job_id: str) -> str:
        from trainq.workers.runner import run_job

        return run_job(job_id, Settings(), worker=self.request.hostname or socket.gethostname())

    return app


def default_name(pool: str) -> str:
    return f"{pool}@{socket.gethostname()}-{os.getpid()}"
