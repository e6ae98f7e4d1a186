"""The engine's switches for speed: bf16 autocast, channels_last, torch.compile, streaming batches from host
memory. Each must leave what the model learns unchanged beyond noise (or exactly, where nothing numeric changes)."""

from __future__ import annotations

import pytest
import torch

from tests.specs import mlp, with_
from trainq.models.engine import autocast_dtype, build, fit
from trainq.models.spec import parse_spec

CNN = {
    "name": "small-cnn",
    "dataset": {"name": "shapes", "n_samples": 600, "image_size": 12, "channels": 3, "classes": 4, "seed": 0},
    "model": {"layers": [{"type": "conv2d", "out_channels": 8, "kernel": 3, "padding": "same"},
                         {"type": "activation", "fn": "relu"}, {"type": "pool", "kind": "max", "size": 2},
                         {"type": "flatten"}, {"type": "dense", "units": 4}]},
    "loss": {"type": "cross_entropy"},
    "optimizer": {"type": "adam", "lr": 0.003},
    "augmentation": [{"type": "hflip"}],
    "training": {"epochs": 3, "batch_size": 32, "seed": 0},
}


def test_auto_choices_on_cpu_are_fp32_eager_on_device():
    state = build(parse_spec(mlp()), device="cpu")
    assert (state.amp, state.channels_last, state.on_host) == (None, False, False)


@pytest.mark.parametrize("capability, expected", [((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_is_bf16_only_on_gpus_that_compute_in_it(monkeypatch, capability, expected):
    # No GPU here: the one call that asks the hardware is stood in for; what the engine makes of its answer is real.
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    gpu = torch.device("cuda", 1)
    assert autocast_dtype(parse_spec(mlp()), gpu) == expected  # a T4 (7.5) only emulates bf16: fp32 there
    assert asked == [gpu]  # the run's GPU, not whichever is current
    assert autocast_dtype(parse_spec(with_(mlp(), **{"training.precision": "fp32"})), gpu) is None
    assert autocast_dtype(parse_spec(with_(mlp(), **{"training.precision": "bf16"})), gpu) == torch.bfloat16
    assert autocast_dtype(parse_spec(mlp()), torch.device("cpu")) is None
    assert asked == [gpu]  # a CPU run never asks


def test_bf16_autocast_trains_in_bf16_and_learns_what_fp32_learns():
    spec = mlp(epochs=8, batch_size=64)
    state = build(parse_spec(with_(spec, **{"training.precision": "bf16"})), device="cpu")
    assert state.amp == torch.bfloat16
    seen = []
    state.model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    from trainq.models.engine import train_one_epoch

    train_one_epoch(state)
    assert seen and set(seen) == {torch.bfloat16}  # the dense layers ran in bf16
    fp32 = fit(parse_spec(spec))
    bf16 = fit(parse_spec(with_(spec, **{"training.precision": "bf16"})))
    assert abs(bf16.metrics["test_accuracy"] - fp32.metrics["test_accuracy"]) <= 0.02


def test_channels_last_keeps_the_cnn_s_results_and_is_chosen_for_images():
    assert build(parse_spec(CNN), device="cpu").channels_last  # auto, for image data
    plain = fit(parse_spec(with_(CNN, **{"training.channels_last": False})))
    state = build(parse_spec(with_(CNN, **{"training.channels_last": True})), device="cpu")
    assert state.channels_last and state.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = fit(parse_spec(with_(CNN, **{"training.channels_last": True})))
    assert [h["val_loss"] for h in nhwc.history] == pytest.approx([h["val_loss"] for h in plain.history], rel=1e-3)


def test_streaming_batches_from_host_memory_learns_exactly_the_same():
    spec = mlp(epochs=3)
    on_device = fit(parse_spec(spec))
    state = build(parse_spec(with_(spec, **{"training.data_placement": "host"})), device="cpu")
    assert state.on_host
    streamed = fit(parse_spec(with_(spec, **{"training.data_placement": "host"})))
    assert streamed.history == on_device.history
    assert streamed.metrics["test_accuracy"] == on_device.metrics["test_accuracy"]


def test_compile_learns_what_eager_learns():
    spec = mlp(hidden=(32,), epochs=2, batch_size=64)
    eager = fit(parse_spec(spec))
    compiled = fit(parse_spec(with_(spec, **{"training.compile": True})))
    assert [h["train_loss"] for h in compiled.history] == pytest.approx([h["train_loss"] for h in eager.history],
                                                                         rel=1e-3)
    assert compiled.metrics["test_accuracy"] == pytest.approx(eager.metrics["test_accuracy"], abs=0.01)


def test_uint8_images_train_as_their_float32_copy_does(monkeypatch):
    stored = build(parse_spec(CNN), device="cpu")
    assert stored.data.train.x.dtype == torch.uint8
    eight_bit = fit(parse_spec(CNN))
    from trainq.models import datasets

    pixels = datasets.raw  # the same pixels, handed over and kept as float32
    monkeypatch.setattr(datasets, "raw", lambda spec, arrays=None: (pixels(spec)[0].astype("float32"), pixels(spec)[1]))
    monkeypatch.setattr(datasets, "whole_bytes", lambda x: False)
    assert build(parse_spec(CNN), device="cpu").data.train.x.dtype == torch.float32
    as_float = fit(parse_spec(CNN))
    assert [h["train_loss"] for h in eight_bit.history] == pytest.approx(
        [h["train_loss"] for h in as_float.history], rel=1e-4)
    assert eight_bit.metrics["test_accuracy"] == pytest.approx(as_float.metrics["test_accuracy"], abs=1e-9)


def test_pca_colour_covariance_summed_in_chunks_is_the_covariance_of_all_pixels():
    from trainq.models.augment import channel_covariance

    train = build(parse_spec(CNN), device="cpu").data.train
    features = train.features()
    pixels = features.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(channel_covariance(train, chunk=7), torch.cov(pixels.double()).float(), atol=1e-5)
