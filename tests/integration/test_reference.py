"""Reference results on real workers, checked against scikit-learn run here on the same split."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import yaml

from trainq.models.datasets import load
from trainq.models.spec import DatasetSpec

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def sklearn_score(dataset: str, estimator) -> float:
    """Fit a scikit-learn estimator (default settings) on trainq's own split and scaling; score on its test split."""
    data = load(DatasetSpec(name=dataset, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP* warn that 200 iterations did not converge: that is their default
        model = estimator(random_state=0).fit(data.train.x.numpy(), data.train.y.numpy().ravel())
    return model.score(data.test.x.numpy(), data.test.y.numpy().ravel())


def mlp(dataset: str, outputs: int, **changes) -> dict:
    spec = {"name": f"{dataset}-reference", "dataset": {"name": dataset, "seed": 0},
            "model": {"init": "he", "layers": [{"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"},
                                               {"type": "dense", "units": outputs}]},
            "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001},
            "regularization": {"l2": 1e-4},
            "training": {"epochs": 200, "batch_size": 32, "seed": 0, "early_stopping": {"patience": 20}}}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("dataset, classes", [("breast_cancer", 2), ("wine", 3)])
def test_mlp_is_at_least_as_accurate_as_sklearn(stack, dataset, classes):
    from sklearn.neural_network import MLPClassifier

    job = stack.wait(stack.submit(mlp(dataset, classes)))
    reference = sklearn_score(dataset, MLPClassifier)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= reference - 1e-6, (job["metrics"], reference)
    matrix = job["metrics"]["test_confusion_matrix"]
    assert len(matrix) == classes and sum(map(sum, matrix)) == round(len(load(DatasetSpec(name=dataset)).test))


def test_regression_r2_is_at_least_sklearns(stack):
    from sklearn.neural_network import MLPRegressor

    job = stack.wait(stack.submit(example("diabetes-regression")))
    reference = sklearn_score("diabetes", MLPRegressor)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_r2"] >= reference, (job["metrics"]["test_r2"], reference)


def test_cnn_with_augmentation_on_digits(stack):
    job = stack.wait(stack.submit(example("digits-cnn")), timeout=300)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= 0.98


def test_perceptron_learns_or_and_fails_xor_while_an_mlp_learns_xor(stack):
    perceptron = example("perceptron-or")
    xor_perceptron = {**perceptron, "name": "perceptron-xor", "dataset": {**perceptron["dataset"], "name": "xor"}}
    ids = [stack.submit(spec) for spec in (perceptron, xor_perceptron, example("xor-mlp"))]
    learned_or, failed_xor, mlp_xor = (stack.wait(i) for i in ids)
    assert learned_or["metrics"]["test_accuracy"] == 1.0
    assert failed_xor["metrics"]["test_accuracy"] < 1.0
    assert mlp_xor["metrics"]["test_accuracy"] == 1.0


def test_mdn_beats_a_single_gaussian_on_the_inverse_sine(stack):
    mdn = example("inverse-sine-mdn")
    gaussian = {**mdn, "name": "inverse-sine-gaussian", "loss": {"type": "mse"},
                "model": {**mdn["model"], "layers": mdn["model"]["layers"][:-1] + [{"type": "dense", "units": 1}]}}
    mixture, single = (stack.wait(i) for i in [stack.submit(mdn), stack.submit(gaussian)])
    assert mixture["status"] == single["status"] == "succeeded", stack.logs()
    # Both in standardized target units: the Gaussian's NLL at its own best variance, sigma^2 = MSE.
    y_std = load(DatasetSpec(**mdn["dataset"])).y_std
    mse = single["metrics"]["test_mse"] / y_std ** 2
    gaussian_nll = 0.5 * math.log(2 * math.pi * mse) + 0.5
    assert mixture["metrics"]["test_loss"] < gaussian_nll - 0.5, (mixture["metrics"]["test_loss"], gaussian_nll)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_accepted_by_the_service(stack, path):
    spec = yaml.safe_load(path.read_text())
    if spec["dataset"]["name"] == "upload":  # an example on a team's table: its file is beside it, uploaded first
        name = spec["dataset"]["upload"]
        uploaded = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": name,
                                                                           "target": spec["dataset"]["target"]},
                                   data=(EXAMPLES / f"{name}.csv").read_bytes(), timeout=30)
        assert uploaded.status_code in (200, 201), uploaded.text
    answer = stack.http.post(f"{stack.url}/api/v1/jobs:validate", json=spec, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["plan"]["params"] > 0


def test_skip_connections_cure_the_vanishing_gradient_of_twenty_sigmoid_layers(stack):
    residual = example("deep-sigmoid-residual")
    plain = copy.deepcopy(residual)
    plain["name"], plain["model"]["blocks"]["pair"] = "deep-sigmoid-plain", residual["model"]["blocks"]["pair"][:-1]
    with_skips, without = (stack.wait(stack.submit(spec)) for spec in (residual, plain))
    assert with_skips["status"] == without["status"] == "succeeded", stack.logs()
    assert without["metrics"]["test_accuracy"] < 0.2  # ten classes: chance is 0.1
    assert with_skips["metrics"]["test_accuracy"] >= 0.9


def test_resnet8_example_classifies_the_shapes(stack):
    job = stack.wait(stack.submit(example("resnet8")), timeout=300)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= 0.95


@pytest.mark.parametrize("name", ["adding-lstm", "adding-transformer"])
def test_the_adding_problem_is_learned_by_a_recurrent_and_an_attention_model(stack, name):
    spec = example(name)
    spec["training"]["epochs"] = 10  # both are far below the bar by then (the mean's MSE is about 0.17)
    job = stack.wait(stack.submit(spec), timeout=300)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_mse"] <= 0.02
