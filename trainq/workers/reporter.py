"""The reporter: a background thread that carries an attempt's metrics, events, checkpoints and heartbeats.

Training never waits on the network. Points are batched every flush interval; heartbeats extend the lease
and bring back the cancel flag. If the service is unreachable the reporter keeps everything and sends it
when the service is back; if the service says the attempt is fenced, it stops the training.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from trainq.models.state import Callback
from trainq.workers.client import Fenced, ServiceClient
from trainq.workers.shutdown import draining

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, client: ServiceClient, attempt_id: str, token: str, *, heartbeat_seconds: float,
                 flush_seconds: float):
        self.client, self.attempt_id, self.token = client, attempt_id, token
        self.heartbeat_seconds, self.flush_seconds = heartbeat_seconds, flush_seconds
        self.interrupt = threading.Event()  # set on cancel or fencing: the engine stops within one batch
        self.cancelled = False
        self.fenced = False
        self.draining = False  # the worker is shutting down: stop and hand the job back
        self.prune: dict | None = None  # a sweep trial with a pruner: {"metric": name, "url": where to ask}
        self.pruned = False
        self.epoch = 0
        self._lock = threading.Lock()
        self._points: list[list[Any]] = []
        self._events: list[dict[str, str]] = []
        self._checkpoints: list[tuple[bytes, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reporter-{attempt_id[:8]}", daemon=True)

    # -- called from the training thread --------------------------------------------------------------------------

    def metric(self, name: str, step: int, epoch: int, value: float) -> None:
        with self._lock:
            self._points.append([name, step, epoch, value])

    def event(self, message: str, level: str = "info") -> None:
        with self._lock:
            self._events.append({"message": message, "level": level})

    def checkpoint(self, blob: bytes, info: dict) -> None:
        """Queue a checkpoint for upload."""
        with self._lock:
            self._queue_checkpoint((blob, info))

    def _queue_checkpoint(self, item: tuple[bytes, dict]) -> None:
        # A newer checkpoint replaces pending ones it supersedes (all of them if it is the best, else those
        # that are not the best), so an unreachable service costs at most two checkpoints of memory.
        if item[1].get("is_best"):
            self._checkpoints = [item]
        else:
            self._checkpoints = [c for c in self._checkpoints if c[1].get("is_best")] + [item]

    # -- the thread -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 300.0) -> None:
        """Stop the thread and deliver everything still pending (retrying while the service is away)."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout
        while not self.fenced and self._pending() and time.monotonic() < deadline:
            self._flush(retry_for=max(1.0, deadline - time.monotonic()))

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._points or self._events or self._checkpoints)

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self.flush_seconds):
            if not self.draining and draining():
                self.draining = True
                self.interrupt.set()
            if time.monotonic() - last_beat >= self.heartbeat_seconds:
                self._heartbeat()
                last_beat = time.monotonic()
            self._flush(retry_for=0)

    def _heartbeat(self) -> None:
        try:
            answer = self.client.call("POST", f"/api/v1/worker/attempts/{self.attempt_id}/heartbeat",
                                      json={"epoch": self.epoch}, attempt_token=self.token, retry_for=0).json()
            if answer.get("cancel") and not self.cancelled:
                self.cancelled = True
                self.interrupt.set()
        except Fenced:
            self._fence()
        except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease allows for it
            log.warning("heartbeat failed: %s", exc)

    def _fence(self) -> None:
        log.warning("attempt %s was fenced; stopping without further writes", self.attempt_id)
        self.fenced = True
        self.interrupt.set()

    def _flush(self, retry_for: float) -> None:
        """Send what is pending in order: metrics, events, then checkpoints. Keep whatever fails."""
        base = f"/api/v1/worker/attempts/{self.attempt_id}"
        with self._lock:
            points, self._points = self._points, []
            events, self._events = self._events, []
            checkpoints, self._checkpoints = self._checkpoints, []
        try:
            if points:
                self.client.call("POST", f"{base}/metrics", json={"points": points}, attempt_token=self.token,
                                 retry_for=retry_for)
                points = []
            if events:
                self.client.call("POST", f"{base}/events", json={"events": events}, attempt_token=self.token,
                                 retry_for=retry_for)
                events = []
            while checkpoints:
                blob, info = checkpoints[0]
                params = {"is_best": "1" if info.get("is_best") else "0", "metric_name": info.get("metric_name") or ""}
                if info.get("metric") is not None:
                    params["metric"] = repr(float(info["metric"]))
                self.client.call("POST", f"{base}/checkpoints", data=blob, params=params, attempt_token=self.token,
                                 retry_for=retry_for, headers={"Content-Type": "application/octet-stream"})
                checkpoints.pop(0)
        except Fenced:
            self._fence()
        except Exception as exc:  # noqa: BLE001 - keep the data; the next flush sends it
            log.warning("report failed, keeping %d points for later: %s", len(points), exc)
            with self._lock:
                self._points[:0] = points
                self._events[:0] = events
                newer, self._checkpoints = self._checkpoints, []
                for item in checkpoints + newer:
                    self._queue_checkpoint(item)


    def should_prune(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Ask the sweep's pruner, at the end of an epoch, whether this trial stops here. Synchronous on purpose:
        small trials run many epochs a second, and a decision taken later would let them run on. Any failure to
        ask means no: pruning only saves time, it must never fail a trial."""
        if self.prune is None or self.prune["metric"] not in metrics:
            return False
        try:
            answer = self.client.call("POST", self.prune["url"], json={"epoch": epoch,
                                                                       "value": metrics[self.prune["metric"]]},
                                      attempt_token=self.token, retry_for=2).json()
        except Fenced:
            self._fence()
            return False
        except Exception as exc:  # noqa: BLE001
            # Asking again every epoch would stall each one: this trial runs on unpruned.
            log.warning("could not ask the pruner, not asking again for this trial: %s", exc)
            self.event(f"the sweep's pruner did not answer ({exc}); this trial runs on without pruning", "warning")
            self.prune = None
            return False
        if answer.get("prune"):
            self.pruned = True
            self.interrupt.set()
        return self.pruned


class ReportingCallback(Callback):
    """Feed the engine's progress to the reporter."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def on_log(self, state, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.reporter.metric(name, state.step, state.epoch + 1, value)

    def on_epoch_end(self, state) -> None:
        for name, value in state.metrics.items():
            if name != "epoch":
                self.reporter.metric(name, state.step, state.epoch, value)
        self.reporter.epoch = state.epoch
        summary = " ".join(f"{k}={v:.4g}" for k, v in state.metrics.items() if k != "epoch")
        self.reporter.event(f"epoch {state.epoch}/{state.spec.training.epochs}: {summary}")
        if state.epoch < state.spec.training.epochs:  # a trial at its last epoch has nothing left to save
            self.reporter.should_prune(state.epoch, state.metrics)
