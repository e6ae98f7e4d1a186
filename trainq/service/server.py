"""Serve the app with gunicorn (threads per process), each process running the reconciler."""

from __future__ import annotations

import gc

from gunicorn.app.base import BaseApplication

from trainq.settings import Settings


class Server(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self.settings, self.options = settings, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from trainq.service.app import create_app
        from trainq.service.reconciler import start

        app = create_app(self.settings)
        start(app)
        # What the process holds from here on (the libraries, the app) is never garbage: kept out of the
        # collector's full passes, each of which otherwise walked all of it (0.17 s here, in the middle of a
        # sweep's submit or a pack's prune asks, every few hundred requests).
        gc.freeze()
        return app


def options(host: str, port: int, processes: int, threads: int) -> dict:
    return {"bind": f"{host}:{port}", "workers": processes, "threads": threads,
            "worker_class": "gthread", "timeout": 120, "graceful_timeout": 30,
            # Dashboards poll every 1-2 s: a keep-alive above that keeps their connection open, instead of
            # gunicorn's 2 s default closing it just as the next poll is sent on it.
            "keepalive": 5,
            "accesslog": None, "loglevel": "warning", "child_exit": _child_exit}


def _child_exit(server, worker) -> None:
    from trainq.service.telemetry import process_gone

    process_gone(worker.pid)


def run(settings: Settings, host: str, port: int, processes: int, threads: int) -> None:
    Server(settings, options(host, port, processes, threads)).run()
