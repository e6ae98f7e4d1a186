"""ONNX export: the file carries the preprocessing fitted on the training split, so raw rows go in; onnxruntime's
answers on the test split reproduce the run's own test metrics exactly; the export checks itself against torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.specs import mlp, with_
from trainq.cli import main
from trainq.models.datasets import raw, split_indices
from trainq.models.engine import build, fit
from trainq.models.export import export_onnx, raw_rows
from trainq.models.spec import parse_spec

CNN = {"dataset.as_images": True,
       "model.layers": [{"type": "conv2d", "out_channels": 4, "kernel": 3}, {"type": "activation", "fn": "relu"},
                        {"type": "flatten"}, {"type": "dense", "units": 10}]}


def trained(spec: dict):
    """A run trained to the end, and its state rebuilt from its last checkpoint, as `trainq export` rebuilds it."""
    parsed, blobs = parse_spec(spec), []
    result = fit(parsed, checkpoint_sink=lambda blob, info: blobs.append(blob))
    return result, build(parsed, device="cpu", resume=blobs[-1])


def targets_of(state) -> np.ndarray:
    ds = state.spec.dataset
    _, y = raw(ds)
    return y[split_indices(len(y), ds.val_fraction, ds.test_fraction, ds.seed)[2]]


@pytest.mark.parametrize("name, spec", [
    ("mlp", mlp(epochs=3)),
    ("one-hot and min-max", with_(mlp("wine", outputs=3, epochs=3),
                                   **{"dataset.preprocess": {"scale": "minmax", "one_hot": [12]}})),
    ("cnn on 8-bit images", with_(mlp(epochs=2), **CNN)),
])
def test_the_file_reproduces_the_runs_test_accuracy_from_raw_rows(tmp_path, name, spec):
    result, state = trained(spec)
    done = export_onnx(state, tmp_path / "model.onnx")
    assert done.outputs == ["label", "probabilities"] and set(done.checked) == {1, 7, 256}
    assert max(done.checked.values()) < 1e-5
    session = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"x": raw_rows(state, "test")})
    accuracy = float((label == targets_of(state)).mean())
    assert accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)  # the same rows, the same answers
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_regression_file_answers_in_the_targets_units(tmp_path):
    result, state = trained(with_(mlp("diabetes", outputs=1, epochs=4), **{"loss": {"type": "mse"}}))
    done = export_onnx(state, tmp_path / "model.onnx")
    assert done.outputs == ["value"]
    session = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    (value,) = session.run(None, {"x": raw_rows(state, "test")})
    mae = float(np.abs(value.ravel() - targets_of(state)).mean())
    assert mae == pytest.approx(result.metrics["test_mae"], rel=1e-4)  # diabetes' own units (tens), not z-scores
    assert 30 < mae < 200


def test_the_file_carries_its_spec_preprocessing_and_a_dynamic_batch(tmp_path):
    _, state = trained(mlp(epochs=1))
    done = export_onnx(state, tmp_path / "model.onnx")
    model = onnx.load(str(done.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["trainq_spec"])["name"] == state.spec.name
    prep = json.loads(meta["trainq_preprocessing"])
    assert len(prep["shift"]) == 64 and prep["image"] is False
    assert prep["shift"] == pytest.approx(state.data.preprocessing.shift)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 64  # any batch, 64 raw pixel values


def test_trainq_export_from_a_checkpoint_file_offline(tmp_path):
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(with_(mlp(epochs=3), **{"training.early_stopping": {"monitor": "val_loss"}})))
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(spec), "--out", str(tmp_path / "run")]).exit_code == 0
    answer = runner.invoke(main, ["export", str(tmp_path / "run" / "best.safetensors"), "--onnx",
                                  str(tmp_path / "best.onnx")])
    assert answer.exit_code == 0, answer.output
    assert "outputs label, probabilities" in answer.output and "batch 256: max |diff|" in answer.output
    assert (tmp_path / "best.onnx").stat().st_size > 10_000
    (tmp_path / "not.safetensors").write_bytes(b"hello")
    bad = runner.invoke(main, ["export", str(tmp_path / "not.safetensors"), "--onnx", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 1 and "not a safetensors file" in bad.output and not (tmp_path / "x.onnx").exists()


def test_the_graphs_preprocessing_is_the_engines_bit_for_bit():
    """Raw test rows through the exported module's preprocessing equal the engine's own preprocessed test split
    exactly: 8-bit pixels scaled by the reciprocal as the engine decodes them, everything else divided."""
    import torch

    from trainq.models.export import Predictor
    from trainq.models.spec import Uploaded

    rng = np.random.default_rng(0)
    floats = (rng.normal(3.0, 2.0, (300, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 300))
    cases = [(mlp(epochs=1), None), (with_(mlp(epochs=1), **CNN), None),
             (with_(mlp("wine", outputs=3, epochs=1), **{"dataset.preprocess": {"one_hot": [12]}}), None),
             (with_(mlp(outputs=3, epochs=1), **{**CNN, "dataset": {"name": "upload", "upload": "imgs"},
                                               "model.layers": CNN["model.layers"][:-1] + [{"type": "dense",
                                                                                            "units": 3}]}), floats)]
    for spec, arrays in cases:
        parsed = parse_spec(spec, uploads=lambda name: Uploaded("imgs", 1, "arrays", 300, 3, shape=(1, 8, 8)))
        state = build(parsed, device="cpu", arrays=arrays)
        predictor = Predictor(state.model, state.data.preprocessing, state)
        got = predictor.features(torch.from_numpy(raw_rows(state, "test", arrays)))
        assert torch.equal(got, state.data.test.features()), spec["name"]


def test_a_mixture_density_file_gives_the_mixture_and_its_analytic_moments(tmp_path):
    """An MDN's file: pi sums to 1, sigma > 0, value is sum pi mu and variance sum pi (sigma^2 + mu^2) - mean^2, in
    the target's units; its value reproduces the run's test MAE, and the signature says so."""
    from trainq.models.export import signature

    spec = {"name": "mdn", "dataset": {"name": "inverse_sine", "n_samples": 600, "seed": 0},
            "model": {"layers": [{"type": "dense", "units": 16}, {"type": "activation", "fn": "tanh"},
                                 {"type": "mdn", "components": 3}]},
            "loss": {"type": "mdn_nll"}, "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 5, "batch_size": 64, "seed": 0}}
    result, state = trained(spec)
    done = export_onnx(state, tmp_path / "mdn.onnx")
    assert done.outputs == ["value", "variance", "pi", "mu", "sigma"]
    session = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    value, variance, pi, mu, sigma = session.run(None, {"x": raw_rows(state, "test")})
    assert pi.shape == mu.shape == sigma.shape == (len(value), 3)
    assert np.allclose(pi.sum(axis=1), 1, atol=1e-5) and (sigma > 0).all()
    assert np.allclose(value[:, 0], (pi * mu).sum(axis=1), rtol=1e-4, atol=1e-5)
    second = (pi * (sigma ** 2 + mu ** 2)).sum(axis=1) - value[:, 0] ** 2
    assert np.allclose(variance[:, 0], np.maximum(second, 0), rtol=1e-3, atol=1e-5)
    mae = float(np.abs(value.ravel() - targets_of(state)).mean())
    assert mae == pytest.approx(result.metrics["test_mae"], rel=1e-4)
    sig = signature(state)
    assert sig["task"] == "mixture" and sig["class_names"] is None
    assert [o["name"] for o in sig["outputs"]] == done.outputs and sig["outputs"][2]["shape"] == [-1, 3]


def test_a_signature_names_the_features_with_their_training_ranges_and_the_classes():
    from trainq.models.export import signature

    state = build(parse_spec(mlp("iris", outputs=3, epochs=1)), device="cpu")
    sig = signature(state, columns=["sl", "sw", "pl", "pw"])
    assert sig["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert sig["features"] == ["sl", "sw", "pl", "pw"] and sig["class_names"] == ["setosa", "versicolor", "virginica"]
    train = raw_rows(state, "train")
    assert sig["ranges"]["pl"] == [pytest.approx(train[:, 2].min()), pytest.approx(train[:, 2].max())]
    assert sig["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]},
                              {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert signature(state)["features"][:2] == ["sepal length (cm)", "sepal width (cm)"]  # scikit-learn's names
    images = signature(build(parse_spec(with_(mlp(epochs=1), **CNN)), device="cpu"))
    assert images["inputs"][0]["shape"] == [-1, 1, 8, 8] and images["features"] == []
    assert images["ranges"] == {"channel0": [0.0, 16.0]} and images["class_names"] == [str(i) for i in range(10)]
