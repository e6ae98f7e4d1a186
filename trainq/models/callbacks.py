"""Callbacks: pieces of the loop that watch it and decide things, each with a state that survives a resume."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from trainq.models.checkpoint import dump
from trainq.models.state import Callback, State


class EarlyStopping(Callback):
    """Track the best epoch by a monitored metric; stop after `patience` epochs without improvement.

    With patience=None it never stops and only tracks the best epoch (for best checkpoints).
    """

    def __init__(self, monitor: str, mode: str, patience: int | None, min_delta: float = 0.0,
                 restore_best: bool = False):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = min_delta, restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.improved = False  # whether the last epoch was a new best

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, state: State) -> None:
        value = state.metrics.get(self.monitor)
        if value is None:
            return
        self.improved = self.is_better(value)
        if self.improved:
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self.best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        else:
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                state.should_stop = True
                state.stop_reason = "early_stopped"
        state.best_epoch, state.best_score = self.best_epoch, self.best

    def on_train_end(self, state: State) -> None:
        if self.restore_best and self.best_weights is not None and state.stop_reason != "cancelled":
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


class Checkpointer(Callback):
    """Hand a complete checkpoint to `sink(blob, info)` on a clock (`every_seconds` since the last; 0: every epoch),
    on a new best when the last best one is older than that, after the last epoch or an early stop, and where the run
    was interrupted, mid-epoch if it was (resumed exactly there). `info` says whether it holds the best epoch.

    Short epochs made a checkpoint per epoch cost more than training: a 600-epoch digits MLP spent a quarter of its
    time through the service serializing and uploading them."""

    def __init__(self, sink, tracker: EarlyStopping, every_seconds: float = 0.0):
        self.sink, self.tracker, self.every = sink, tracker, every_seconds
        self.last = self.last_best = -math.inf  # monotonic times of the last checkpoint, and of the last best one
        self.saved_step: int | None = None

    def on_train_start(self, state: State) -> None:
        self.last = self.last_best = time.monotonic()  # a resumed run's checkpoint is where it starts
        self.saved_step = state.step

    def on_epoch_end(self, state: State) -> None:
        if state.stop_reason == "cancelled":
            return
        now = time.monotonic()
        final = state.epoch >= state.spec.training.epochs or state.should_stop
        best = self.tracker.improved and now - self.last_best >= self.every
        if final or best or now - self.last >= self.every:
            self._write(state, self.tracker.improved)

    def on_batch_end(self, state: State) -> None:
        """A streamed epoch can take long: a checkpoint on the clock part-way through it too."""
        if self.every and time.monotonic() - self.last >= self.every:
            self._write(state, False)

    def on_train_end(self, state: State) -> None:
        if state.stop_reason == "cancelled" and state.step != self.saved_step:  # what the interrupted run did since
            self._write(state, self.tracker.improved and not state.batch_in_epoch)

    def _write(self, state: State, is_best: bool) -> None:
        blob = dump(state)
        self.sink(blob, {"epoch": state.epoch, "step": state.step, "is_best": is_best,
                         "metric_name": self.tracker.monitor, "metric": state.metrics.get(self.tracker.monitor)})
        self.last = time.monotonic()
        if is_best:
            self.last_best = self.last
        self.saved_step = state.step
