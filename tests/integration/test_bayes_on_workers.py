"""A Bayesian network trained on a worker through the service: its predictive metrics arrive with the job, the run
page draws its reliability diagram, and it registers and answers like any model."""

from __future__ import annotations

import re

import pytest

from tests.models.test_bayes import bnn
from tests.specs import with_

pytestmark = pytest.mark.integration


def test_a_variational_network_trains_on_a_worker_with_its_calibration_measured(stack):
    spec = with_(bnn(hidden=(64,)), **{"training.epochs": 8, "training.batch_size": 32, "optimizer.lr": 0.003,
                                       "register_as": "bayes-digits"})
    job = stack.wait(stack.submit(spec), timeout=180)
    assert job["status"] == "succeeded", stack.logs()
    m = job["metrics"]
    assert m["test_accuracy"] > 0.85 and 0 <= m["test_ece"] < 0.2 and m["test_nll"] > 0
    assert [b["count"] for b in m["test_reliability"]] and sum(b["count"] for b in m["test_reliability"]) == 270
    series = stack.get(f"/api/v1/jobs/{job['id']}/metrics?names=val_nll,val_ece,train_kl")["series"]
    assert len(series["val_nll"]["value"]) == len(series["train_kl"]["value"]) == 8
    assert all(v > 0 for v in series["train_kl"]["value"])
    page = stack.http.get(f"{stack.url}/jobs/{job['id']}", timeout=10).text
    bins = re.findall(r'<rect class="bin" data-count="(\d+)"', page)
    assert sum(map(int, bins)) == 270  # the diagram's bars hold every test row

    from tests.integration.test_models import wait_ready

    version = wait_ready(stack, "bayes-digits/versions/1")
    assert version["state"] == "ready", version
    assert version["uncertainty"] == {"method": "variational", "samples": 50}
    assert [o["name"] for o in version["outputs"]] == ["label", "probabilities", "entropy", "mutual_information"]
    answer = stack.http.post(f"{stack.url}/api/v1/models/bayes-digits/predict", timeout=10,
                             json={"inputs": [[0.0] * 64, [16.0] * 64]}).json()
    blank = answer["predictions"][0]
    assert len(answer["predictions"]) == 2
    assert sum(blank["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert blank["entropy"] >= blank["mutual_information"] >= 0  # total = aleatoric + epistemic
    v2 = stack.http.post(f"{stack.url}/v2/models/bayes-digits/infer", timeout=10, json={
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [16.0] * 64}],
        "outputs": [{"name": "entropy"}, {"name": "mutual_information"}]}).json()
    assert [o["name"] for o in v2["outputs"]] == ["entropy", "mutual_information"] and v2["outputs"][0]["data"][0] > 0
    # more samples per request: whole runs of the graph's 50 draws, pooled
    rows = [[float(v % 17) for v in range(i, i + 64)] for i in range(20)]
    few, many = (stack.http.post(f"{stack.url}/api/v1/models/bayes-digits/predict", timeout=10, json={
        "inputs": rows, "parameters": {"samples": t}}).json() for t in (50, 1000))
    assert few["samples"] == 50 and many["samples"] == 1000
    wobble = [abs(a["entropy"] - b["entropy"]) for a, b in zip(few["predictions"], many["predictions"])]
    assert 0 < max(wobble) < 0.5  # other draws, the same posterior
    refused = stack.http.post(f"{stack.url}/v2/models/bayes-digits/infer", timeout=10, json={
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [16.0] * 64}],
        "parameters": {"samples": 70}})
    assert refused.status_code == 400 and "multiple of 50" in refused.text  # v2 answers every input error 400
    pooled = stack.http.post(f"{stack.url}/v2/models/bayes-digits/infer", timeout=10, json={
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [16.0] * 64}],
        "parameters": {"samples": 150}}).json()
    assert pooled["parameters"] == {"samples": 150} and len(pooled["outputs"]) == 4


def test_a_deep_ensemble_trains_on_a_worker_and_answers_its_members_spread(stack):
    """An ensemble of five on gap_sine, trained as one job: the job's metrics are the mixture's, its registered model
    answers the members' spread, wider far from the training data than inside it."""
    layers = [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
              {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 1}]
    spec = {"name": "gap-ensemble", "dataset": {"name": "gap_sine", "n_samples": 400, "noise": 0.1, "seed": 0},
            "model": {"layers": layers}, "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 40, "batch_size": 32, "seed": 0}, "register_as": "gap-ensemble",
            "inference": {"method": "ensemble", "members": 5}}
    job = stack.wait(stack.submit(spec), timeout=180)
    assert job["status"] == "succeeded", stack.logs()
    m = job["metrics"]
    assert m["test_std_far"] > 3 * m["test_std_in"] and 0.8 <= m["test_coverage95_in"] <= 1.0, m
    assert len(m["test_predictive_curve"]["x"]) == 200

    from tests.integration.test_models import wait_ready

    version = wait_ready(stack, "gap-ensemble/versions/1")
    assert version["state"] == "ready", version
    assert version["uncertainty"] == {"method": "ensemble", "samples": 5}
    answer = stack.http.post(f"{stack.url}/api/v1/models/gap-ensemble/predict", timeout=10,
                             json={"inputs": [[0.7], [2.5]]}).json()
    near, far = answer["predictions"]
    assert far["epistemic_std"] > 3 * near["epistemic_std"] and near["std"] >= near["epistemic_std"], answer
    again = stack.http.post(f"{stack.url}/api/v1/models/gap-ensemble/predict", timeout=10,
                            json={"inputs": [[0.7], [2.5]]}).json()
    assert again["predictions"] == answer["predictions"]  # no draws: an ensemble answers the same twice
    refused = stack.http.post(f"{stack.url}/api/v1/models/gap-ensemble/predict", timeout=10,
                              json={"inputs": [[0.7]], "parameters": {"samples": 10}})
    assert refused.status_code == 400 and "5 members" in refused.text
