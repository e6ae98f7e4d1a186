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
        self.direct = False  # checkpoints go straight into the service's object store (presigned PUT), then recorded
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
        points, events, checkpoints = self.take()
        try:
            if points:
                self.client.call("POST", f"{base}/metrics", json={"points": points}, attempt_token=self.token,
                                 retry_for=retry_for)
                points = []
            if events:
                self.client.call("POST", f"{base}/events", json={"events": events}, attempt_token=self.token,
                                 retry_for=retry_for)
                events = []
        except Fenced:
            self._fence()
            return
        except Exception as exc:  # noqa: BLE001 - keep the data; the next flush sends it
            log.warning("report failed, keeping %d points for later: %s", len(points), exc)
            self.give_back(points, events, checkpoints)
            return
        self.send_checkpoints(checkpoints, retry_for)

    def take(self) -> tuple[list, list, list]:
        """What is pending, handed over for sending in one snapshot: a checkpoint goes up only after the points of
        the epochs it holds (a resume from it must not skip an epoch whose metrics were never sent)."""
        with self._lock:
            points, self._points = self._points, []
            events, self._events = self._events, []
            checkpoints, self._checkpoints = self._checkpoints, []
        return points, events, checkpoints

    def give_back(self, points: list, events: list, checkpoints: list) -> None:
        """Return what could not be sent, ahead of what came since (a newer checkpoint still supersedes)."""
        with self._lock:
            self._points[:0] = points
            self._events[:0] = events
            newer, self._checkpoints = self._checkpoints, []
            for item in checkpoints + newer:
                self._queue_checkpoint(item)

    def send_checkpoints(self, checkpoints: list, retry_for: float) -> None:
        """Upload these checkpoints in order; give back whatever fails."""
        base = f"/api/v1/worker/attempts/{self.attempt_id}"
        try:
            while checkpoints:
                blob, info = checkpoints[0]
                if self.direct:
                    self._put_and_record(base, blob, info, retry_for)
                else:
                    params = {"is_best": "1" if info.get("is_best") else "0",
                              "metric_name": info.get("metric_name") or ""}
                    if info.get("metric") is not None:
                        params["metric"] = repr(float(info["metric"]))
                    self.client.call("POST", f"{base}/checkpoints", data=blob, params=params,
                                     attempt_token=self.token, retry_for=retry_for,
                                     headers={"Content-Type": "application/octet-stream"})
                checkpoints.pop(0)
        except Fenced:
            self._fence()
        except Exception as exc:  # noqa: BLE001 - keep it; the next flush sends it
            log.warning("checkpoint upload failed, keeping it for later: %s", exc)
            self.give_back([], [], checkpoints)

    def _put_and_record(self, base: str, blob: bytes, info: dict, retry_for: float) -> None:
        """PUT a checkpoint into the object store at a presigned URL the service hands out, then have the service
        record it (it reads it back and checks size and sha256: a cut-off upload is never recorded)."""
        import hashlib

        target = self.client.call("POST", f"{base}/checkpoints/presign", attempt_token=self.token,
                                  retry_for=retry_for).json()
        self.client.call("PUT", target["url"], data=blob, retry_for=retry_for)
        metric = info.get("metric")
        self.client.call("POST", f"{base}/checkpoints/record", attempt_token=self.token, retry_for=retry_for, json={
            "id": target["id"], "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "is_best": bool(info.get("is_best")), "metric_name": info.get("metric_name"),
            "metric": float(metric) if metric is not None else None})

    def should_prune(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Ask the sweep's pruner, at the end of an epoch, whether this trial stops here. Synchronous on purpose:
        small trials run many epochs a second, and a decision taken later would let them run on. Any failure to
        ask means no: pruning only saves time, it must never fail a trial."""
        if self.prune is None or self.prune["metric"] not in metrics:
            return False
        if self.prune.get("epochs") is not None and epoch not in self.prune["epochs"]:
            return False  # its pruner decides at other epochs only
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


class PackReporter:
    """One thread and one request per interval for all the attempts a worker runs together (a pack's members):
    every member's heartbeat (its lease), metric points and events travel in one POST /api/v1/worker/batch, and its
    answer brings back each member's cancel or fence. Checkpoints go up one by one (they are bytes), after the
    points that lead to them. A member that ended is finished in a later batch, once everything it had pending is
    delivered; members finishing together take one request, and their sweep is settled once."""

    def __init__(self, client: ServiceClient, members: list[Reporter], *, heartbeat_seconds: float,
                 flush_seconds: float):
        self.client, self.members = client, members
        self.heartbeat_seconds, self.flush_seconds = heartbeat_seconds, flush_seconds
        self._lock = threading.Lock()
        self._ending: dict[int, dict | None] = {}  # member -> its outcome (None: hand the job back)
        self.ended: dict[int, str] = {}  # member -> its job's status as the service answered, or fenced, released
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pack-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def end(self, i: int, outcome: dict | None) -> None:
        """Member i is done: finish its attempt with this outcome (None: release it to the queue)."""
        with self._lock:
            self._ending[i] = outcome

    def close(self, timeout: float = 300.0) -> dict[int, str]:
        """Deliver everything and every end still pending; return each member's ending."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout
        while len(self.ended) < len(self._ending) and time.monotonic() < deadline:
            self._round(beat=False, retry_for=max(1.0, deadline - time.monotonic()))
        return dict(self.ended)

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self.flush_seconds):
            if draining():
                for m in self.members:
                    if not m.draining:
                        m.draining = True
                        m.interrupt.set()
            beat = time.monotonic() - last_beat >= self.heartbeat_seconds
            if self._round(beat=beat, retry_for=0) and beat:
                last_beat = time.monotonic()

    def _open(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if not m.fenced and i not in self.ended]

    def _round(self, beat: bool, retry_for: float) -> bool:
        """One batch of reports (and heartbeats), the checkpoints, then the ends that are ready. False if the
        service could not be reached (everything stays pending)."""
        entries, taken = [], []
        for i in self._open():
            m = self.members[i]
            points, events, checkpoints = m.take()
            entry: dict[str, Any] = {"attempt_id": m.attempt_id, "token": m.token}
            if points:
                entry["points"] = points
            if events:
                entry["events"] = events
            if beat:
                entry["heartbeat"] = {"epoch": m.epoch}
            taken.append((i, points, events, checkpoints))
            if len(entry) > 2:
                entries.append((i, entry))
        if entries and not self._send(entries, retry_for):
            for i, points, events, checkpoints in taken:
                self.members[i].give_back(points, events, checkpoints)
            return False
        for i, _, _, checkpoints in taken:
            if checkpoints and not self.members[i].fenced:
                self.members[i].send_checkpoints(checkpoints, retry_for)
        with self._lock:
            ready = [(i, outcome) for i, outcome in self._ending.items()
                     if i not in self.ended and not self.members[i]._pending()]
        finishing = []
        for i, outcome in ready:
            m = self.members[i]
            if m.fenced:
                self.ended[i] = "fenced"
            elif outcome is None:
                self.ended[i] = self._release(m)
            else:
                finishing.append((i, {"attempt_id": m.attempt_id, "token": m.token, "finish": outcome}))
        if finishing:
            self._send(finishing, retry_for, ending=True)
        return True

    def _send(self, entries: list[tuple[int, dict]], retry_for: float, ending: bool = False) -> bool:
        """POST a batch of (member, entry); apply each answer (fence, cancel, ended status). False if it failed."""
        try:
            answers = self.client.call("POST", "/api/v1/worker/batch", json={"attempts": [e for _, e in entries]},
                                       retry_for=retry_for).json()["attempts"]
        except Exception as exc:  # noqa: BLE001 - the caller keeps the data; the next round sends it
            log.warning("pack report failed, keeping it for later: %s", exc)
            return False
        for (i, _), answer in zip(entries, answers):
            m = self.members[i]
            if answer.get("fenced") or answer.get("error"):
                m._fence()
                if ending:
                    self.ended[i] = "fenced"
            elif answer.get("cancel") and not m.cancelled:
                m.cancelled = True
                m.interrupt.set()
            if "status" in answer:
                self.ended[i] = answer["status"]
        return True

    def _release(self, m: Reporter) -> str:
        try:
            self.client.call("POST", f"/api/v1/worker/attempts/{m.attempt_id}/release",
                             json={"reason": "worker shutting down"}, attempt_token=m.token, retry_for=20)
        except Fenced:
            return "fenced"
        return "released"

    def prune(self, client: ServiceClient, asks: list[tuple[int, int, float]]) -> bool:
        """Ask the sweep's pruner about several members at once (member, epoch, value), from the training thread
        (its own client): a member it stops is interrupted before its next batch. False if it could not ask: that
        means no (pruning only saves time, it must never fail a trial), and the caller stops asking."""
        entries = [{"attempt_id": self.members[i].attempt_id, "token": self.members[i].token,
                    "prune": {"epoch": epoch, "value": value}} for i, epoch, value in asks]
        started = time.monotonic()
        try:
            answers = client.call("POST", "/api/v1/worker/batch", json={"attempts": entries}, retry_for=2).json()
            log.debug("asked the pruner about %d members in %.3fs", len(entries), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001
            for i, _, _ in asks:
                self.members[i].event(f"the sweep's pruner did not answer ({exc}); this trial runs on without "
                                      "pruning", "warning")
            return False
        for (i, _, _), answer in zip(asks, answers["attempts"]):
            m = self.members[i]
            if answer.get("fenced"):
                m._fence()
            elif answer.get("prune"):
                m.pruned = True
                m.interrupt.set()
        return True


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
