"""A worker's presence: its main process tells the service every few seconds that it is alive, and learns
whether it is asked to drain (finish the job it runs, take no new one, then stop)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from urllib.parse import quote

from trainq.workers.client import Refused, ServiceClient

log = logging.getLogger(__name__)


class Presence(threading.Thread):
    def __init__(self, client: ServiceClient, name: str, info: dict, every: float, on_drain):
        super().__init__(name="trainq-presence", daemon=True)
        self.client, self.name_, self.every, self.on_drain = client, name, every, on_drain
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), **info}
        self.stopping = threading.Event()
        self.drained = False

    @property
    def path(self) -> str:
        return f"/api/v1/worker/workers/{quote(self.name_, safe='@')}"

    def run(self) -> None:
        while True:
            try:
                answer = self.client.call("POST", self.path + "/heartbeat", json=self.info, retry_for=0).json()
                if answer.get("drain") and not self.drained:
                    self.drained = True
                    log.warning("worker %s asked to drain: finishing the running job, taking no new one", self.name_)
                    self.on_drain()
            except (ConnectionError, Refused, ValueError) as exc:  # the service is away: try again next beat
                log.info("presence heartbeat failed: %s", exc)
            if self.stopping.wait(self.every):
                return

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.client.call("POST", self.path + "/stopped", retry_for=2)
        except (ConnectionError, Refused) as exc:
            log.info("could not say stopped: %s", exc)


def warm_shutdown() -> None:
    """Celery's warm shutdown: stop consuming, let the running job finish, then exit."""
    os.kill(os.getpid(), signal.SIGTERM)
