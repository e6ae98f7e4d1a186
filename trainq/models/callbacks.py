"""Callbacks: pieces of the loop that watch it and decide things, each with a state that survives a resume."""

from __future__ import annotations

import math
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
    """Hand a complete checkpoint to `sink(blob, info)` after every epoch; `info` says whether it is the best."""

    def __init__(self, sink, tracker: EarlyStopping):
        self.sink, self.tracker = sink, tracker

    def on_epoch_end(self, state: State) -> None:
        if state.stop_reason == "cancelled":
            return
        blob = dump(state)
        self.sink(blob, {"epoch": state.epoch, "step": state.step, "is_best": self.tracker.improved,
                         "metric_name": self.tracker.monitor, "metric": state.metrics.get(self.tracker.monitor)})
