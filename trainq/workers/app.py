"""The Celery app of a worker: one queue per pool, a thin task that runs one job."""

from __future__ import annotations

import os
import socket

from celery import Celery

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


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings, "trainq-worker")
    preload()

    @app.task(name=TRAIN_TASK, bind=True)
    def train(self, job_id: str) -> str:
        from trainq.workers.runner import run_job

        return run_job(job_id, Settings(), worker=self.request.hostname or socket.gethostname())

    return app


def default_name(pool: str) -> str:
    return f"{pool}@{socket.gethostname()}-{os.getpid()}"
