"""Every registered name: a spec using it validates, trains a few epochs, and lowers the training loss."""

from __future__ import annotations

import pytest
import torch

from trainq.models import augment, layers, losses, optimizers
from trainq.models.engine import build, train_one_epoch
from trainq.models.spec import (ACTIVATIONS, AUGMENTATION_TYPES, INIT_TYPES, LAYER_TYPES, LOSS_TYPES,
                                OPTIMIZER_TYPES, SCHEDULE_TYPES, parse_spec)


def test_every_registry_matches_the_spec_names():
    assert set(layers.LAYERS) == LAYER_TYPES
    assert set(layers.ACTIVATIONS) == set(ACTIVATIONS)
    assert set(layers.INITS) == INIT_TYPES
    assert set(losses.LOSSES) == LOSS_TYPES
    assert set(optimizers.OPTIMIZERS) == OPTIMIZER_TYPES
    assert set(optimizers.SCHEDULES) == SCHEDULE_TYPES
    assert set(augment.AUGMENTATIONS) == AUGMENTATION_TYPES


def case(data: dict, layers: list[dict], loss: str, overrides: dict, init: str = "he") -> dict:
    """A small spec to train a few epochs (Adam, 8 epochs of batch 32), any top-level section replaced."""
    spec = {"name": "v", "dataset": data, "model": {"init": init, "layers": layers}, "loss": {"type": loss},
            "optimizer": {"type": "adam", "lr": 0.01}, "training": {"epochs": 8, "batch_size": 32, "seed": 0}}
    spec.update(overrides)
    return spec


def tabular(**overrides) -> dict:
    return case({"name": "blobs", "n_samples": 300, "classes": 3, "noise": 1.0},
                [{"type": "dense", "units": 16}, {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 3}],
                "cross_entropy", overrides)


def image(**overrides) -> dict:
    return case({"name": "shapes", "n_samples": 300, "image_size": 12, "classes": 3, "noise": 0.2},
                [{"type": "conv2d", "out_channels": 6, "padding": "same"}, {"type": "activation", "fn": "relu"},
                 {"type": "pool", "kind": "max"}, {"type": "flatten"}, {"type": "dense", "units": 3}],
                "cross_entropy", overrides)


def regression(**overrides) -> dict:
    return case({"name": "inverse_sine", "n_samples": 400},
                [{"type": "dense", "units": 16}, {"type": "activation", "fn": "tanh"}, {"type": "dense", "units": 1}],
                "mse", overrides, init="xavier")


def with_layers(spec: dict, hidden: list[dict]) -> dict:
    spec = dict(spec)
    spec["model"] = {**spec["model"], "layers": hidden}
    return spec


def dense_stack(*middle: dict, out: int = 3) -> list[dict]:
    return [{"type": "dense", "units": 16}, *middle, {"type": "dense", "units": out}]


CASES = {
    **{f"activation:{fn}": tabular(model={"init": "xavier", "layers": dense_stack({"type": "activation", "fn": fn})})
       for fn in ACTIVATIONS},
    "layer:dropout": with_layers(tabular(), dense_stack({"type": "activation", "fn": "relu"},
                                                        {"type": "dropout", "p": 0.2})),
    "layer:noise": with_layers(tabular(), dense_stack({"type": "noise", "std": 0.1}, {"type": "activation",
                                                                                      "fn": "relu"})),
    "layer:batchnorm1d": with_layers(tabular(), dense_stack({"type": "batchnorm"}, {"type": "activation",
                                                                                    "fn": "relu"})),
    "layer:conv2d+pool:max": image(),
    "layer:pool:avg": with_layers(image(), [{"type": "conv2d", "out_channels": 6, "kernel": 3},
                                            {"type": "activation", "fn": "relu"}, {"type": "pool", "kind": "avg"},
                                            {"type": "flatten"}, {"type": "dense", "units": 3}]),
    "layer:pool:stochastic": with_layers(image(), [{"type": "conv2d", "out_channels": 6, "kernel": 3},
                                                   {"type": "activation", "fn": "relu"},
                                                   {"type": "pool", "kind": "stochastic"},
                                                   {"type": "flatten"}, {"type": "dense", "units": 3}]),
    "layer:pad+batchnorm2d": with_layers(image(), [{"type": "pad", "size": 1},
                                                   {"type": "conv2d", "out_channels": 6, "kernel": 3, "stride": 2},
                                                   {"type": "batchnorm"}, {"type": "activation", "fn": "relu"},
                                                   {"type": "flatten"}, {"type": "dense", "units": 3}]),
    "layer:mdn+loss:mdn_nll": regression(loss={"type": "mdn_nll"}, model={"init": "xavier", "layers": [
        {"type": "dense", "units": 16}, {"type": "activation", "fn": "tanh"}, {"type": "mdn", "components": 3}]}),
    **{f"init:{name}": tabular(model={"init": name, "layers": dense_stack({"type": "activation", "fn": "tanh"})})
       for name in INIT_TYPES if name != "zeros"},
    "init:zeros": tabular(model={"init": "zeros", "layers": [{"type": "dense", "units": 3}]}),  # no hidden layer
    "loss:mse": regression(), "loss:mae": regression(loss={"type": "mae"}),
    "loss:huber": regression(loss={"type": "huber", "delta": 0.5}),
    "loss:bce": tabular(dataset={"name": "moons", "n_samples": 300}, loss={"type": "bce", "pos_weight": 2.0},
                        model={"init": "he", "layers": dense_stack({"type": "activation", "fn": "relu"}, out=1)}),
    "loss:cross_entropy": tabular(loss={"type": "cross_entropy", "class_weights": [1.0, 2.0, 1.0],
                                        "label_smoothing": 0.1}),
    "loss:nll": tabular(loss={"type": "nll"}, model={"init": "he", "layers": dense_stack(
        {"type": "activation", "fn": "relu"}) + [{"type": "activation", "fn": "softmax"}]}),
    "loss:hinge": tabular(loss={"type": "hinge"}),
    # the perceptron criterion scales with the weights: start from weights large enough to be wrong by a margin
    "loss:perceptron": tabular(dataset={"name": "moons", "n_samples": 300}, loss={"type": "perceptron"},
                               optimizer={"type": "sgd", "lr": 0.1},
                               model={"init": {"type": "normal", "std": 1.0}, "layers": [{"type": "dense",
                                                                                          "units": 1}]}),
    **{f"optimizer:{name}": tabular(optimizer={"type": name, "lr": 0.05}) for name in OPTIMIZER_TYPES
       if name != "lbfgs"},
    # quasi-Newton is a full-batch method: on mini-batches of 32 its curvature estimate is noise and it diverges
    "optimizer:lbfgs": tabular(optimizer={"type": "lbfgs", "lr": 1.0},
                               training={"epochs": 4, "batch_size": "full", "seed": 0}),
    "schedule:step": tabular(schedule={"type": "step", "step_size": 2, "gamma": 0.5}),
    "schedule:exponential": tabular(schedule={"type": "exponential", "gamma": 0.9}),
    "schedule:cosine": tabular(schedule={"type": "cosine"}),
    "schedule:one_cycle": tabular(schedule={"type": "one_cycle", "max_lr": 0.05}),
    "schedule:reduce_on_plateau": tabular(schedule={"type": "reduce_on_plateau", "patience": 1}),
    "schedule:warmup": tabular(schedule={"type": "warmup", "epochs": 3}),
    "schedule:none": tabular(schedule={"type": "none"}),
    "regularization:all": tabular(regularization={"l2": 1e-3, "l1": 1e-4, "weight_decay": 1e-3,
                                                  "max_grad_norm": 1.0, "input_noise": 0.05}),
    **{f"augmentation:{name}": image(augmentation=[{"type": name}]) for name in AUGMENTATION_TYPES},
    "augmentation:all+tta": image(augmentation=[{"type": "affine", "degrees": 10, "translate": 0.1,
                                                 "scale": [0.9, 1.1], "shear": 5}, {"type": "hflip"},
                                                {"type": "vflip"}, {"type": "invert", "p": 0.1}, {"type": "crop"},
                                                {"type": "gaussian_noise", "std": 0.05}, {"type": "pca_color"}],
                                  test_time_augmentation={"flips": True, "crops": 1},
                                  **{"dataset": {"name": "shapes", "n_samples": 300, "image_size": 12,
                                                 "classes": 3, "noise": 0.2, "channels": 3}}),
}


@torch.inference_mode()
def training_loss(state) -> float:
    state.model.eval()
    train = state.data.train
    return state.objective.loss(state.model(train.features()), train.y).item()


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_entry_trains_and_lowers_the_loss(case):
    spec = parse_spec(CASES[case])
    state = build(spec)
    before = training_loss(state)
    for _ in range(spec.training.epochs):
        train_one_epoch(state)
    after = training_loss(state)
    assert after < before, (case, before, after)


def test_test_time_augmentation_changes_the_evaluation():
    from trainq.models.engine import evaluate

    spec = parse_spec(CASES["augmentation:all+tta"])
    state = build(spec)
    for _ in range(3):
        train_one_epoch(state)
    plain = evaluate(state, state.data.test, "test")
    averaged = evaluate(state, state.data.test, "test", tta=True, confusion=True)
    assert averaged["test_loss"] != plain["test_loss"]
    matrix = averaged["test_confusion_matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == len(state.data.test)
