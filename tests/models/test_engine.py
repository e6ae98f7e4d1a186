"""The training loop: learning, determinism, early stopping, L2 as the course writes it, cancel, NaN."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.specs import mlp, with_, xor
from trainq.models.callbacks import EarlyStopping
from trainq.models.engine import NonFiniteLoss, build, evaluate, fit
from trainq.models.spec import parse_spec
from trainq.models.state import Callback


def test_xor_mlp_reaches_full_accuracy():
    result = fit(parse_spec(xor()))
    assert result.metrics["test_accuracy"] == 1.0
    assert result.stop_reason == "completed" and result.epochs == 300


def test_xor_without_a_hidden_layer_cannot():
    spec = with_(xor(), **{"model.layers": [{"type": "dense", "units": 1}]})
    assert fit(parse_spec(spec)).metrics["test_accuracy"] <= 0.75


def test_digits_mlp_learns():
    result = fit(parse_spec(mlp(hidden=(128,), epochs=30)))
    assert result.metrics["test_accuracy"] >= 0.95


def test_same_seed_same_metrics_and_another_seed_differs():
    spec = parse_spec(mlp(epochs=3))
    a, b = fit(spec), fit(spec)
    c = fit(parse_spec(with_(mlp(epochs=3), **{"training.seed": 1})))
    assert a.history == b.history and a.metrics == b.metrics
    assert a.history != c.history


def test_regression_metrics_are_in_target_units():
    spec = parse_spec(with_(mlp("diabetes", outputs=1, epochs=40), loss={"type": "mse"}))
    r = fit(spec)
    assert r.metrics["test_rmse"] == pytest.approx(r.metrics["test_mse"] ** 0.5, rel=1e-5)
    assert 20 < r.metrics["test_rmse"] < 80  # diabetes targets range 25..346: errors are in those units
    assert r.metrics["test_r2"] > 0.3


def test_early_stopping_stops_an_overfitting_run_and_restores_the_best_weights():
    # A wide net with no regularization on a small split overfits: validation loss turns up early.
    spec = parse_spec(with_(mlp("wine", hidden=(256, 256), outputs=3, epochs=300, batch_size=8),
                            **{"optimizer.lr": 0.01, "training.early_stopping": {"patience": 5}}))
    seen = []

    class Watch(Callback):
        def on_train_end(self, state):
            seen.append(evaluate(state, state.data.val, "val")["val_loss"])

    result = fit(spec, callbacks=[Watch()])
    assert result.stop_reason == "early_stopped"
    assert result.epochs < 300
    assert result.epochs == result.best_epoch + 5  # patience counted in epochs after the best
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best
    assert seen[0] == pytest.approx(best, rel=1e-6)  # the restored weights give the best validation loss
    assert result.history[-1]["val_loss"] > best


def test_patience_ignores_a_temporary_wobble():
    stopper = EarlyStopping("val_loss", "min", patience=3)

    class S:
        should_stop = False
        stop_reason = "completed"
        metrics: dict = {}
        model = None

    state = S()
    for epoch, value in enumerate([1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86, 0.87], start=1):
        state.epoch, state.metrics = epoch, {"val_loss": value}
        stopper.on_epoch_end(state)
        if state.should_stop:
            break
    assert stopper.best == 0.8 and stopper.best_epoch == 5
    assert state.should_stop and state.epoch == 8


def test_min_delta_counts_small_gains_as_none():
    stopper = EarlyStopping("val_loss", "min", patience=None, min_delta=0.1)
    stopper.best = 1.0
    assert not stopper.is_better(0.95)
    assert stopper.is_better(0.85)


def test_l2_is_the_coupled_update_of_the_course():
    # theta <- theta - lr * (grad + l2 * theta) == theta * (1 - lr * l2) - lr * grad
    spec = parse_spec(with_(xor(), optimizer={"type": "sgd", "lr": 0.1}, regularization={"l2": 0.5},
                            **{"training.epochs": 1}))
    state = build(spec)
    before = [p.detach().clone() for p in state.model.parameters()]
    x, y = state.data.train.x, state.data.train.y
    loss = state.objective.loss(state.model(x), y)
    grads = torch.autograd.grad(loss, list(state.model.parameters()))
    loss = state.objective.loss(state.model(x), y)
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    for p, theta, g in zip(state.model.parameters(), before, grads):
        assert torch.allclose(p.detach(), theta * (1 - 0.1 * 0.5) - 0.1 * g, atol=1e-6)


def test_an_interrupt_stops_within_one_batch():
    interrupt = threading.Event()
    steps = []

    class StopAfterThree(Callback):
        def on_log(self, state, metrics):
            steps.append(state.step)
            if state.step == 3:
                interrupt.set()

    spec = parse_spec(mlp(epochs=50, batch_size=16, log_every_steps=1))
    result = fit(spec, callbacks=[StopAfterThree()], interrupt=interrupt)
    assert result.stop_reason == "cancelled"
    assert steps == [1, 2, 3]
    assert result.epochs == 0 and result.metrics == {}


def test_a_diverging_run_raises_with_the_step():
    spec = parse_spec(with_(mlp("diabetes", outputs=1, epochs=5), loss={"type": "mse"},
                            optimizer={"type": "sgd", "lr": 100.0}, **{"training.log_every_steps": 1}))
    with pytest.raises(NonFiniteLoss, match="at step"):
        fit(spec)


def test_a_scheduled_run_reports_its_learning_rate_each_epoch_and_a_plain_run_does_not():
    cosine = fit(parse_spec(with_(mlp(epochs=4), **{"optimizer.lr": 0.01, "schedule": {"type": "cosine"}})))
    import math

    # the rate each epoch trained at: cosine annealing over 4 epochs, from 0.01
    assert [h["lr"] for h in cosine.history] == pytest.approx([0.01 * (1 + math.cos(math.pi * k / 4)) / 2
                                                               for k in range(4)], rel=1e-6)
    assert "lr" not in fit(parse_spec(mlp(epochs=1))).history[0]
