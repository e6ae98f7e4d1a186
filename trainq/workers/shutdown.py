"""A worker's shutdown flag: on SIGTERM the worker process touches a file, and the job processes it forked read it to
hand their job back. The Celery app sets it and the reporter reads it, without either importing the other."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def drain_flag(worker_pid: int) -> Path:
    """The file that tells a worker's job processes to hand their job back: the worker is shutting down."""
    return Path(tempfile.gettempdir()) / f"trainq-drain-{worker_pid}"


def draining() -> bool:
    """Whether this job process's worker is shutting down (SIGTERM: a drain or a preemption)."""
    return drain_flag(os.getppid()).exists()
