"""Celery configuration shared by the service (which only sends) and the workers (which consume).

The broker only delivers job ids; SQL decides what runs. The settings suit hour-long tasks: late
acknowledgement, re-delivery when a worker is lost, one message prefetched, a visibility timeout far
above the lease, so Redis does not hand a long job to a second worker while the first still trains it.
"""

from __future__ import annotations

from celery import Celery

from trainq.settings import Settings

TRAIN_TASK = "trainq.train"
EXPORT_TASK = "trainq.export"  # a registered model version: ONNX, verified, uploaded
SCORE_TASK = "trainq.score"  # a batch of rows scored with a model version
PRIORITY_STEPS = range(10)


def broker_priority(priority: int) -> int:
    """Map a job's priority (-100..100, higher first) to a Redis priority step (0..9, 0 served first)."""
    return 9 - round((max(-100, min(100, priority)) + 100) * 9 / 200)


def queue_name(pool: str, device: str = "any", gpus: int = 1) -> str:
    """The broker queue of a pool's jobs that ask for a device kind, or for several GPUs at once (data-parallel).
    Pool names hold no dot, so no clash."""
    if gpus > 1:
        return f"{pool}.gpu{gpus}"
    return pool if device == "any" else f"{pool}.{device}"


def worker_queues(pool: str, kind: str, gpus: int = 1) -> list[str]:
    """The queues a worker consumes: the pool's, its device kind's, and on a worker with several GPUs the queues
    of data-parallel jobs that fit on them."""
    return [pool, queue_name(pool, kind)] + ([queue_name(pool, "gpu", n) for n in range(2, gpus + 1)]
                                            if kind == "gpu" else [])


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
        # Each worker's share of Redis: its remote-control mailbox (a pub/sub connection and a broadcast to every
        # worker per command) and its events cost connections and traffic that grow with the fleet; trainq's own
        # heartbeats go to the service over HTTP. TRAINQ_CELERY_EVENTS=1 brings them back, for Flower.
        "worker_enable_remote_control": settings.celery_events,
        "worker_send_task_events": settings.celery_events,
        "task_send_sent_event": settings.celery_events,
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
            "control_folder": str(settings.broker_dir / "control"),  # kombu's default is ./control, wherever we run
            "store_processed": False,
            "polling_interval": 0.05,  # seconds; the filesystem transport polls its folder
        }
    elif url.startswith(("redis", "rediss")):
        conf["broker_transport_options"] = {
            # Far above any lease: the lease decides, not Redis. A re-delivery while the job still runs is harmless
            # (the claim refuses it), and a short timeout sweeps for unacknowledged messages as often.
            "visibility_timeout": settings.broker_visibility_seconds,
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_seconds // 2)),
            "unacked_restore_throttle": 1 if settings.broker_visibility_seconds < 600 else 10,
            "queue_order_strategy": "priority",
            "priority_steps": list(PRIORITY_STEPS),  # one Redis list per step; step 0 is served first
            "sep": ":",
        }
    return conf


def make_celery(settings: Settings, name: str = "trainq") -> Celery:
    app = Celery(name)
    app.config_from_object(celery_config(settings))
    return app


def _job_ids(message: bytes | str) -> list[str]:
    """The job ids a Celery message carries (protocol 2: body is base64 JSON [args, kwargs, embed]): its job, and a
    pack's member jobs when it sends a pack."""
    import base64
    import json

    try:
        envelope = json.loads(message)
        if envelope.get("headers", {}).get("task") != TRAIN_TASK:
            return []
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        members = args[1] if len(args) > 1 and isinstance(args[1], list) else []
        return [str(args[0]), *(str(m) for m in members)]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def job_ids_in_broker(settings: Settings, queues: set[str]) -> set[str] | None:
    """Job ids the broker holds in these queues, waiting or delivered but not yet acknowledged; None if this kind of
    broker cannot be looked into (then the reconciler falls back to re-sending jobs queued too long)."""
    import json

    url = settings.resolved_broker_url
    found: set[str] = set()
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5)
        for queue in queues:
            for key in [queue] + [f"{queue}:{step}" for step in PRIORITY_STEPS if step]:
                for raw in client.lrange(key, 0, -1):
                    found.update(_job_ids(raw))
        for raw in client.hvals("unacked"):  # kombu keeps delivered, unacknowledged messages here
            try:
                found.update(_job_ids(json.dumps(json.loads(raw)[0])))
            except (ValueError, IndexError, TypeError):
                continue
    elif url.startswith("filesystem"):
        folder = settings.broker_dir / "queue"
        for path in folder.glob("*.msg") if folder.is_dir() else ():
            if path.name[:-len(".msg")].split("_", 1)[-1] in queues:
                try:
                    found.update(_job_ids(path.read_bytes()))
                except OSError:  # taken by a worker while we looked
                    continue
    else:
        return None
    return found
