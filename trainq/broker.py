"""Celery configuration shared by the service (which only sends) and the workers (which consume).

The broker only delivers job ids; SQL decides what runs. The settings suit hour-long tasks: late
acknowledgement, re-delivery when a worker is lost, one message prefetched, a visibility timeout far
above the lease, so Redis does not hand a long job to a second worker while the first still trains it.
"""

from __future__ import annotations

from celery import Celery

from trainq.settings import Settings

TRAIN_TASK = "trainq.train"


def celery_config(settings: Settings) -> dict:
    url = settings.resolved_broker_url
    conf = {
        "broker_url": url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # outcomes go to the service over HTTP, not to a result backend
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
    }
    if url.startswith("filesystem"):
        queue = settings.broker_dir / "queue"
        processed = settings.broker_dir / "processed"
        queue.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            "polling_interval": 0.05,  # seconds; the filesystem transport polls its folder
        }
    elif url.startswith(("redis", "rediss")):
        conf["broker_transport_options"] = {"visibility_timeout": 7 * 24 * 3600}  # seconds
    return conf


def make_celery(settings: Settings, name: str = "trainq") -> Celery:
    app = Celery(name)
    app.config_from_object(celery_config(settings))
    return app
