"""Checkpoints: safetensors plus JSON, a round trip gives identical outputs, a resume continues exactly."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from safetensors.torch import load

from tests.specs import mlp, with_
from trainq.models.checkpoint import dump, load_weights, read_meta, restore
from trainq.models.engine import build, fit, predict
from trainq.models.spec import parse_spec
from trainq.models.state import Callback


def run_with_checkpoints(spec):
    """Fit with a checkpoint after every epoch (checkpoint_every_seconds 0), to resume from any of them."""
    blobs = []
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"checkpoint_every_seconds": 0})})
    result = fit(spec, checkpoint_sink=lambda blob, info: blobs.append((blob, info)))
    return result, blobs


def test_round_trip_gives_identical_outputs():
    spec = parse_spec(mlp(epochs=3))
    state = build(spec)
    _, blobs = run_with_checkpoints(spec)
    blob, info = blobs[-1]
    assert info["epoch"] == 3
    state.model.load_state_dict(load_weights(blob))
    # a second model built from the same blob answers the same on every input
    other = build(spec)
    other.model.load_state_dict(load_weights(blob))
    x = state.data.test.x
    assert torch.equal(predict(state, x), predict(other, x))


def test_checkpoint_is_safetensors_with_json_metadata():
    spec = parse_spec(with_(mlp(epochs=2), **{"training.early_stopping": {"patience": 3}}))
    _, blobs = run_with_checkpoints(spec)
    blob = blobs[-1][0]
    tensors = load(blob)
    meta = read_meta(blob)
    assert meta["epoch"] == 2 and meta["spec"]["name"] == "digits-mlp"
    assert "model.0.weight" in tensors and "rng.torch" in tensors
    assert any(k.startswith("optimizer.") for k in tensors)  # Adam moments travel as tensors
    assert any(k.startswith("best.") for k in tensors)  # restore_best needs the best weights on resume
    assert meta["callbacks"]["EarlyStopping"]["best_epoch"] in (1, 2)


def test_resume_continues_as_if_uninterrupted():
    spec = parse_spec(with_(mlp(epochs=6, batch_size=32),
                            **{"training.early_stopping": {"patience": 10}, "regularization": {"l2": 1e-4}},
                            model={"init": "he", "layers": [{"type": "dense", "units": 32},
                                                            {"type": "activation", "fn": "relu"},
                                                            {"type": "dropout", "p": 0.2},
                                                            {"type": "dense", "units": 10}]},
                            schedule={"type": "cosine"}))
    full, blobs = run_with_checkpoints(spec)
    at_three = next(blob for blob, info in blobs if info["epoch"] == 3)
    resumed = fit(spec, resume=at_three)
    assert resumed.history == full.history  # dropout, shuffling and the schedule replay exactly
    assert resumed.metrics == full.metrics
    assert resumed.best_epoch == full.best_epoch


def test_a_gpu_run_carries_its_own_generator_through_a_resume(monkeypatch):
    # No GPU here: the state is told it trains on one, and CUDA's two generator calls are stood in for.
    spec = parse_spec(mlp(epochs=1))
    state = build(spec, device="cpu")
    assert "rng.cuda" not in load(dump(state))
    gpu, drawn = torch.device("cuda", 0), torch.arange(16, dtype=torch.uint8)
    asked, set_to = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or drawn)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new_state, device: set_to.append((new_state, device)))
    state.device = gpu
    blob = dump(state)
    assert asked == [gpu] and torch.equal(load(blob)["rng.cuda"], drawn)
    other = build(spec, device="cpu")
    restore(other, blob)
    assert set_to == []  # resumed on a CPU: its generator is not CUDA's
    other.device = gpu
    restore(other, blob)
    assert len(set_to) == 1 and torch.equal(set_to[0][0], drawn) and set_to[0][1] == gpu


@pytest.mark.parametrize("payload", [
    pickle.dumps({"weights": [1, 2, 3]}),
    b"\x80\x04\x95" + b"\x00" * 100,
    b"",
    b"\xff" * 8 + b"{}",
])
def test_anything_but_a_trainq_safetensors_file_is_refused(payload):
    with pytest.raises(ValueError):
        read_meta(payload)


def test_a_torch_save_file_is_refused_without_unpickling():
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buffer)
    with pytest.raises(ValueError):
        read_meta(buffer.getvalue())


def test_a_truncated_checkpoint_is_refused():
    spec = parse_spec(mlp(epochs=1))
    _, blobs = run_with_checkpoints(spec)
    blob = blobs[0][0]
    assert read_meta(blob)["epoch"] == 1
    with pytest.raises(ValueError, match="truncated"):
        read_meta(blob[:-100])


@pytest.mark.parametrize("optimizer", [
    {"type": "sgd", "lr": 0.05, "momentum": 0.9}, {"type": "nesterov"}, {"type": "adagrad"}, {"type": "rmsprop"},
    {"type": "adamw"}, {"type": "lbfgs", "lr": 0.5},
])
def test_every_optimizers_state_survives_a_resume(optimizer):
    batch = "full" if optimizer["type"] == "lbfgs" else 64
    spec = parse_spec(with_(mlp(epochs=4, batch_size=batch), optimizer=optimizer,
                            schedule={"type": "reduce_on_plateau", "patience": 1}))
    full, blobs = run_with_checkpoints(spec)
    resumed = fit(spec, resume=next(blob for blob, info in blobs if info["epoch"] == 2))
    assert resumed.history == full.history and resumed.metrics == full.metrics


def checkpoints_of(spec_dict: dict, **fit_args) -> tuple:
    blobs = []
    result = fit(parse_spec(spec_dict), checkpoint_sink=lambda blob, info: blobs.append((blob, info)), **fit_args)
    return result, blobs


def test_checkpoints_come_on_a_clock_and_after_the_last_epoch():
    """A run shorter than checkpoint_every_seconds checkpoints once, after its last epoch (or its early stop); with 0,
    after every epoch."""
    _, blobs = checkpoints_of(with_(mlp(epochs=5), **{"training.checkpoint_every_seconds": 600}))
    assert [info["epoch"] for _, info in blobs] == [5]
    result, blobs = checkpoints_of(with_(mlp(epochs=60), **{"training.checkpoint_every_seconds": 600,
                                                             "training.early_stopping": {"patience": 1}}))
    assert result.stop_reason == "early_stopped" and [info["epoch"] for _, info in blobs] == [result.epochs]
    _, blobs = checkpoints_of(with_(mlp(epochs=4), **{"training.checkpoint_every_seconds": 0}))
    assert [info["epoch"] for _, info in blobs] == [1, 2, 3, 4]


def test_a_clock_checkpoint_comes_once_its_seconds_have_passed(monkeypatch):
    import trainq.models.callbacks as callbacks

    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])

    class Tick(Callback):  # every epoch takes 4 "seconds"
        def on_epoch_end(self, state):
            now[0] += 4.0

    _, blobs = checkpoints_of(with_(mlp(epochs=7), **{"training.checkpoint_every_seconds": 10}),
                              callbacks=[Tick()])
    # the clock is read after Tick's epoch end of the epoch before: 4 s per epoch, due at >= 10 s since the last
    assert [info["epoch"] for _, info in blobs] == [4, 7]


class StopAtStep(Callback):
    """Sets the run's interrupt once it has taken `step` optimizer steps: a drain arriving mid-epoch."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, state, metrics):
        if state.step >= self.step:
            state.interrupt.set()


@pytest.mark.parametrize("stop_at", [7, 40, 118])
def test_a_run_interrupted_mid_epoch_checkpoints_there_and_resumes_exactly(stop_at):
    """Interrupted at a batch inside an epoch (step 7 of 40 a epoch, 40: an epoch's last batch, 118), the run
    checkpoints where it stopped; resumed from there it continues at the next batch and ends as an uninterrupted run:
    every epoch's loss (the interrupted epoch's from both halves), dropout draws, the schedule's steps."""
    spec = with_(mlp(epochs=4, batch_size=32, log_every_steps=1), **{
        "model": {"init": "he", "layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                                           {"type": "dropout", "p": 0.2}, {"type": "dense", "units": 10}]},
        "schedule": {"type": "one_cycle", "max_lr": 0.01}, "training.checkpoint_every_seconds": 600})
    whole = fit(parse_spec(spec))
    cut, blobs = checkpoints_of(spec, callbacks=[StopAtStep(stop_at)])
    assert cut.stop_reason == "cancelled"
    blob, info = blobs[-1]
    meta = read_meta(blob)
    assert info["step"] == stop_at and meta["epoch"] == (stop_at - 1) // 40
    assert meta["batch_in_epoch"] == stop_at - 40 * meta["epoch"] and "rng.epoch" in load(blob)
    resumed = fit(parse_spec(spec), resume=blob)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in whole.history],
                                                                       abs=1e-6)
    assert resumed.metrics["test_loss"] == pytest.approx(whole.metrics["test_loss"], abs=1e-6)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in whole.history],
                                                                     abs=1e-6)
