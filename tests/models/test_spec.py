"""The spec: every error names its field's path; shapes, parameter counts and memory are arithmetic."""

from __future__ import annotations

import sys

import pytest

from tests.specs import mlp, with_, xor
from trainq.models import layers, losses, optimizers
from trainq.models.spec import (LAYER_TYPES, LOSS_TYPES, OPTIMIZER_TYPES, SCHEDULE_TYPES, SpecError, parse_spec,
                                plan)


def errors_of(data) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return {e.path: e.message for e in info.value.errors}


def test_spec_module_does_not_import_torch():
    import subprocess

    code = "import sys, trainq.models.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_service_loads_no_torch():
    import subprocess

    code = ("import sys; from trainq.service.app import create_app; import trainq.service.api, "
            "trainq.service.worker_api, trainq.service.datasets_api, trainq.service.dashboard; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_registries_match_the_spec_names():
    assert set(layers.LAYERS) == LAYER_TYPES
    assert set(losses.LOSSES) == LOSS_TYPES
    assert set(optimizers.OPTIMIZERS) == OPTIMIZER_TYPES
    assert set(optimizers.SCHEDULES) == SCHEDULE_TYPES


def test_plan_counts_parameters_and_shapes():
    p = plan(parse_spec(mlp(hidden=(64, 32))))
    assert [layer.output_shape for layer in p.layers] == [[64], [64], [32], [32], [10]]
    assert [layer.params for layer in p.layers] == [64 * 64 + 64, 0, 64 * 32 + 32, 0, 32 * 10 + 10]
    assert p.params == 4160 + 2080 + 330
    assert p.input_shape == [64] and p.output_shape == [10] and p.task == "classification"


def test_memory_estimate_grows_with_batch_and_optimizer_state():
    small = plan(parse_spec(mlp(batch_size=16))).memory_bytes
    big = plan(parse_spec(mlp(batch_size=512))).memory_bytes
    sgd = plan(parse_spec(with_(mlp(batch_size=16), optimizer={"type": "sgd", "lr": 0.1}))).memory_bytes
    assert big > small > sgd
    # adam keeps two moments per parameter, plain sgd none: the difference is 2 * 4 bytes * params
    assert small - sgd == 2 * 4 * plan(parse_spec(mlp())).params


@pytest.mark.parametrize("change, path, fragment", [
    ({"optimizer.lr": -0.1}, "optimizer.lr", "greater than 0"),
    ({"optimizer.lr": float("nan")}, "optimizer.lr", "finite"),
    ({"optimizer.lr": float("inf")}, "optimizer.lr", "finite"),
    ({"training.epochs": 0}, "training.epochs", "greater than 0"),
    ({"training.batch_size": "many"}, "training.batch_size", "integer"),
    ({"dataset.name": "imagenet"}, "dataset.name", "digits"),
    ({"resources.pool": "../etc"}, "resources.pool", "pattern"),
    ({"name": "a\x00b"}, "name", "pattern"),
    ({"name": "x" * 201}, "name", "at most 200"),
    ({"training.surprise": 1}, "training.surprise", "unknown field 'surprise'; the fields here are "),
])
def test_field_errors_name_the_path(change, path, fragment):
    errors = errors_of(with_(mlp(), **change))
    assert path in errors, errors
    assert fragment in errors[path]


@pytest.mark.parametrize("change, path, message", [
    ({"training.epoch": 3}, "training.epoch", "unknown field 'epoch'; did you mean 'epochs'?"),
    ({"trainig": {}}, "trainig", "unknown field 'trainig'; did you mean 'training'?"),
    ({"optimizer.learning_rate": 0.1}, "optimizer.learning_rate",
     "unknown field 'learning_rate'; did you mean 'lr'?"),
    ({"model.layers": [{"type": "dense", "unit": 10}]}, "model.layers[0].unit",
     "unknown field 'unit'; did you mean 'units'?"),
    ({"model.layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}]}, "model.layers[0].kernel_size",
     "unknown field 'kernel_size'; did you mean 'kernel'?"),
    ({"training.early_stopping": {"patiense": 3}}, "training.early_stopping.patiense",
     "unknown field 'patiense'; did you mean 'patience'?"),
    ({"optimizer.zzz": 1}, "optimizer.zzz", "unknown field 'zzz'; the fields here are betas, eps, lr, type"),
])
def test_an_unknown_field_suggests_the_one_meant(change, path, message):
    assert errors_of(with_(mlp(), **change))[path] == message


def test_conv2d_on_tabular_digits_points_at_its_image_form():
    spec = with_(mlp(), **{"model.layers": [{"type": "conv2d", "out_channels": 4, "kernel": 3}, {"type": "flatten"},
                                            {"type": "dense", "units": 10}]})
    assert errors_of(spec)["model.layers[0]"].endswith("set dataset.as_images: true")
    assert plan(parse_spec(with_(spec, **{"dataset.as_images": True}))).output_shape == [10]
    assert "as_images" not in errors_of(with_(spec, **{"dataset.name": "wine"}))["model.layers[0]"]


def test_lbfgs_on_mini_batches_is_warned_about_in_the_dry_run():
    full = with_(mlp(), **{"optimizer": {"type": "lbfgs"}, "training.batch_size": "full"})
    assert plan(parse_spec(full)).warnings == []
    [warning] = plan(parse_spec(with_(full, **{"training.batch_size": 64}))).warnings
    assert warning["path"] == "training.batch_size" and "NaN" in warning["message"]
    assert plan(parse_spec(mlp())).as_dict()["warnings"] == []


def test_layer_errors_name_the_layer_without_the_union_tag():
    spec = mlp()
    spec["model"]["layers"][2] = {"type": "dense", "units": 0}
    spec["model"]["layers"][1] = {"type": "activation", "fn": "swish"}
    errors = errors_of(spec)
    assert set(errors) == {"model.layers[2].units", "model.layers[1].fn"}


def test_unknown_layer_type_names_the_layer():
    spec = mlp()
    spec["model"]["layers"][0] = {"type": "transformer"}
    assert "model.layers[0]" in errors_of(spec)


def test_every_error_is_reported_at_once():
    errors = errors_of(with_(mlp(), **{"optimizer.lr": -1, "training.epochs": -1, "dataset.seed": -1}))
    assert {"optimizer.lr", "training.epochs", "dataset.seed"} <= set(errors)


@pytest.mark.parametrize("spec, path, fragment", [
    (mlp(outputs=7), "model.layers[2]", "needs 10 output units, got 7"),
    (with_(xor(), **{"model.layers": [{"type": "dense", "units": 2}]}), "model.layers[0]", "bce needs 1 output"),
    (with_(mlp(), **{"loss": {"type": "bce"}}), "loss.type", "bce is for two classes"),
    (with_(mlp("diabetes", outputs=1)), "loss.type", "needs a classification dataset"),
    (with_(mlp(), **{"training.early_stopping": {"monitor": "val_r2"}}), "training.early_stopping.monitor",
     "unknown metric"),
    (with_(mlp(), **{"dataset.val_fraction": 0.5, "dataset.test_fraction": 0.45}), "dataset.val_fraction", "10%"),
    (with_(mlp(), **{"optimizer": {"type": "sgd", "nesterov": True}}), "optimizer", "nesterov needs momentum"),
])
def test_specs_that_cannot_run_are_refused(spec, path, fragment):
    errors = errors_of(spec)
    assert path in errors, errors
    assert fragment in errors[path]


def test_defaults_fill_the_optional_sections():
    spec = parse_spec(mlp())
    assert spec.schedule.type == "none"
    assert spec.regularization.l2 == 0
    assert spec.resources.pool == "cpu"
    assert spec.training.keep_checkpoints == 2


def test_early_stopping_mode_follows_the_metric():
    loss = parse_spec(with_(mlp(), **{"training.early_stopping": {"monitor": "val_loss"}}))
    acc = parse_spec(with_(mlp(), **{"training.early_stopping": {"monitor": "val_accuracy"}}))
    assert loss.training.early_stopping.resolved_mode == "min"
    assert acc.training.early_stopping.resolved_mode == "max"


def test_memory_counts_8_bit_images_at_one_byte_a_pixel():
    from tests.models.test_fast_paths import CNN

    spec = parse_spec(CNN)  # 600 shapes of 3x12x12, stored as uint8, int64 labels
    assert spec.dataset.stored_bytes() == 3 * 12 * 12 + 8
    from trainq.models.engine import build

    data = build(spec, device="cpu").data
    stored = sum(t.nbytes for split in (data.train, data.val, data.test) for t in (split.x, split.y))
    assert stored == spec.dataset.size() * spec.dataset.stored_bytes()
    table = parse_spec(mlp())  # digits as 64 float32 features
    assert table.dataset.stored_bytes() == 64 * 4 + 8


def test_spec_rows_show_what_applies_to_the_dataset_and_each_layer_and_mark_defaults():
    from trainq.models.spec import JobSpec, spec_rows

    stored = parse_spec(with_(mlp(), **{"model.layers": [{"type": "dense", "units": 32},
                                                          {"type": "activation", "fn": "elu", "alpha": 0.5},
                                                          {"type": "activation", "fn": "relu"},
                                                          {"type": "dense", "units": 10}]})).model_dump(mode="json")
    rows = {path: (value, default) for path, value, default in spec_rows(JobSpec.model_validate(stored))}
    assert not {"dataset.classes", "dataset.features", "dataset.image_size", "dataset.n_samples"} & set(rows)
    assert rows["dataset.as_images"] == (False, True)  # digits' own option, at its default
    assert rows["model.layers[1].alpha"] == (0.5, False) and "model.layers[1].slope" not in rows
    assert not {"model.layers[2].alpha", "model.layers[2].slope", "model.layers[2].negative_slope"} & set(rows)
    assert rows["model.layers[0].units"] == (32, False) and rows["optimizer.lr"] == (0.001, True)
    blobs = spec_rows(JobSpec.model_validate(with_(mlp("blobs", outputs=3), **{"dataset.features": 5})))
    assert ("dataset.features", 5, False) in blobs and any(path == "dataset.classes" for path, _, _ in blobs)


def test_every_error_is_listed_at_once_the_dry_runs_too():
    spec = with_(mlp(outputs=7), **{"training.epoch": 3})
    del spec["optimizer"]
    assert errors_of(spec) == {
        "optimizer": "required: add it, for example optimizer: {type: adam, lr: 0.001}",
        "training.epoch": "unknown field 'epoch'; did you mean 'epochs'?",
        "model.layers[2]": "cross_entropy on digits needs 10 output units, got 7"}  # found despite the two above
    broken_model = with_(mlp(outputs=7), **{"model.layers[0].units": -1})
    assert set(errors_of(broken_model)) == {"model.layers[0]"}  # the plan needs a valid model: not planned
