"""The training engine: build a run from a spec and train it, in mini-batches, with early stopping.

Read `fit` top to bottom. The dataset lives as tensors on the device; batches are a seeded permutation
and indexing (no DataLoader); losses accumulate on the device and are read once per reporting interval,
so no step waits on the host.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from trainq.models.callbacks import Callback, Checkpointer, EarlyStopping
from trainq.models.checkpoint import restore
from trainq.models.datasets import Data, Split, load
from trainq.models.layers import build_model
from trainq.models.losses import Objective, build_objective
from trainq.models.optimizers import build_optimizer, build_schedule
from trainq.models.spec import JobSpec, plan

EVAL_BATCH = 8192  # rows per evaluation batch; evaluation keeps no graph, so this can be large


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run cannot recover, so it fails with the step it happened at."""


@dataclass
class State:
    """Everything the loop works on; a checkpoint is this, serialized."""

    spec: JobSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Objective
    data: Data
    device: torch.device
    generator: torch.Generator  # shuffles the training split, seeded by training.seed
    tracker: EarlyStopping
    callbacks: list[Callback] = field(default_factory=list)
    interrupt: threading.Event = field(default_factory=threading.Event)  # set from outside to cancel
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    metrics: dict[str, float] = field(default_factory=dict)  # of the last epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    should_stop: bool = False
    stop_reason: str = "completed"


@dataclass
class Result:
    stop_reason: str  # completed | early_stopped | cancelled
    epochs: int
    best_epoch: int | None
    metrics: dict[str, float]  # the final metrics: test split, best monitored value
    history: list[dict[str, float]]
    setup_seconds: float
    train_seconds: float


# ---------------------------------------------------------------------------------------------------------------------
# Building a run
# ---------------------------------------------------------------------------------------------------------------------


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tracker_for(spec: JobSpec, data: Data) -> EarlyStopping:
    """The early-stopping callback of the spec, or one that only tracks the best epoch."""
    es = spec.training.early_stopping
    if es is not None:
        return EarlyStopping(es.monitor, es.resolved_mode, es.patience, es.min_delta, es.restore_best)
    monitor = "val_loss" if len(data.val) else "train_loss"
    return EarlyStopping(monitor, "min", patience=None)


def build(spec: JobSpec, *, device: str | torch.device | None = None, callbacks: Sequence[Callback] = (),
          checkpoint_sink: Callable[[bytes, dict], None] | None = None, resume: bytes | None = None) -> State:
    """Load the data, build model, loss and optimizer from the spec, and restore a checkpoint if given."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    units = plan(spec).output_shape[0]
    torch.manual_seed(spec.training.seed)  # model init and dropout draw from the global generator
    data = load(spec.dataset).to(device)
    model = build_model(spec).to(device)
    optimizer = build_optimizer(spec, model.parameters())
    generator = torch.Generator().manual_seed(spec.training.seed)
    tracker = tracker_for(spec, data)
    all_callbacks: list[Callback] = [tracker]
    if checkpoint_sink is not None:
        all_callbacks.append(Checkpointer(checkpoint_sink, tracker))
    all_callbacks.extend(callbacks)
    state = State(spec=spec, model=model, optimizer=optimizer, scheduler=build_schedule(spec, optimizer),
                  objective=build_objective(spec, units), data=data, device=device, generator=generator,
                  tracker=tracker, callbacks=all_callbacks)
    if resume is not None:
        restore(state, resume)
    return state


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def fit(spec: JobSpec, *, device: str | torch.device | None = None, callbacks: Sequence[Callback] = (),
        checkpoint_sink: Callable[[bytes, dict], None] | None = None, resume: bytes | None = None,
        interrupt: threading.Event | None = None) -> Result:
    """Train a spec to the end, an early stop, or an interrupt; return the final metrics."""
    started = time.perf_counter()
    state = build(spec, device=device, callbacks=callbacks, checkpoint_sink=checkpoint_sink, resume=resume)
    if interrupt is not None:
        state.interrupt = interrupt
    setup_seconds = time.perf_counter() - started

    for cb in state.callbacks:
        cb.on_train_start(state)
    for _ in range(state.epoch, spec.training.epochs):
        train_one_epoch(state)
        if state.interrupt.is_set():
            state.stop_reason = "cancelled"
            break
        state.epoch += 1
        state.metrics = {"epoch": state.epoch, **state.metrics, **evaluate(state, state.data.val, "val")}
        state.history.append(state.metrics)
        if state.scheduler is not None:
            state.scheduler.step()
        for cb in state.callbacks:
            cb.on_epoch_end(state)
        if state.should_stop:
            break
    for cb in state.callbacks:
        cb.on_train_end(state)

    final: dict[str, float] = {}
    if state.stop_reason != "cancelled":
        final = evaluate(state, state.data.test, "test")
        if state.best_score is not None:
            final[f"best_{state.tracker.monitor}"] = state.best_score
    return Result(state.stop_reason, state.epoch, state.best_epoch, final, state.history, setup_seconds,
                  time.perf_counter() - started - setup_seconds)


def train_one_epoch(state: State) -> None:
    """One pass over the training split in shuffled mini-batches; sets metrics['train_loss']."""
    spec, model, train = state.spec, state.model, state.data.train
    reg = spec.regularization
    params = [p for p in model.parameters() if p.requires_grad]
    n, batch_size, log_every = len(train), spec.training.batch_size, spec.training.log_every_steps
    model.train()
    order = torch.randperm(n, generator=state.generator).to(state.device)
    epoch_sum = torch.zeros((), device=state.device)  # summed on the device: no host sync per step
    window_sum = torch.zeros((), device=state.device)
    window_steps = 0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        loss = state.objective.loss(model(train.x[idx]), train.y[idx])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reg.l1:
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_add_(grads, torch._foreach_sign([p for p in params if p.grad is not None]), alpha=reg.l1)
        if reg.max_grad_norm:
            nn.utils.clip_grad_norm_(params, reg.max_grad_norm, foreach=True)
        state.optimizer.step()
        state.step += 1
        detached = loss.detach()
        epoch_sum += detached * len(idx)
        window_sum += detached
        window_steps += 1
        if state.step % log_every == 0:
            value = (window_sum / window_steps).item()  # the one host sync per reporting interval
            _check_finite(value, state.step)
            for cb in state.callbacks:
                cb.on_log(state, {"train_loss_step": value})
            window_sum.zero_()
            window_steps = 0
        if state.interrupt.is_set():
            return
    train_loss = (epoch_sum / n).item()
    _check_finite(train_loss, state.step)
    state.metrics = {"train_loss": train_loss}


def _check_finite(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the training loss became {value} at step {step}; lower the learning rate "
                            "or clip gradients (regularization.max_grad_norm)")


@torch.inference_mode()
def evaluate(state: State, split: Split, prefix: str) -> dict[str, float]:
    """Loss and metrics on a split: accuracy for classification, MSE/RMSE/MAE/R² in target units for regression."""
    if len(split) == 0:
        return {}
    model = state.model
    model.eval()
    loss_sum = torch.zeros((), device=state.device)
    outputs = []
    for start in range(0, len(split), EVAL_BATCH):
        x, y = split.x[start:start + EVAL_BATCH], split.y[start:start + EVAL_BATCH]
        out = model(x)
        loss_sum += state.objective.loss(out, y) * len(x)
        outputs.append(out)
    out = torch.cat(outputs)
    metrics = {f"{prefix}_loss": loss_sum / len(split)}
    data = state.data
    if state.objective.predict is not None:
        metrics[f"{prefix}_accuracy"] = (state.objective.predict(out) == split.y).float().mean()
    else:
        pred = out * data.y_std + data.y_mean
        target = split.y * data.y_std + data.y_mean
        err = pred - target
        mse = (err ** 2).mean()
        metrics[f"{prefix}_mse"] = mse
        metrics[f"{prefix}_rmse"] = mse.sqrt()
        metrics[f"{prefix}_mae"] = err.abs().mean()
        metrics[f"{prefix}_r2"] = 1 - (err ** 2).sum() / ((target - target.mean()) ** 2).sum().clamp_min(1e-12)
    values = torch.stack(list(metrics.values())).tolist()  # one host sync for all metrics
    return dict(zip(metrics, values))


def predict(state: State, x: torch.Tensor) -> torch.Tensor:
    """Return the model's raw outputs for inputs x, in evaluation mode."""
    with torch.inference_mode():
        state.model.eval()
        return state.model(x.to(state.device))
