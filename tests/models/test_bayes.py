"""Approximate Bayesian training: the KL's scale, the layers' sampling, the measures of a predictive distribution,
and the worked checks of calibration, coverage and distance awareness (a few seeds each, on CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.specs import with_
from trainq.models.bayes import (BayesConv2d, BayesLinear, BayesModule, auroc, classification_measures,
                                 kl_divergence, regression_measures, reliability)
from trainq.models.engine import build, fit, train_one_epoch, training_loss
from trainq.models.spec import SpecError, parse_spec


def bnn(dataset: str = "digits", hidden=(128, 128), outputs: int = 10, **extra) -> dict:
    layers = []
    for units in hidden:
        layers += [{"type": "dense_bayes", "units": units}, {"type": "activation", "fn": "relu"}]
    layers.append({"type": "dense_bayes", "units": outputs})
    spec = {"name": "bnn", "dataset": {"name": dataset, "seed": 0}, "model": {"layers": layers},
            "loss": {"type": "cross_entropy" if outputs > 1 else "mse"}, "optimizer": {"type": "adam", "lr": 0.003},
            "training": {"epochs": 1, "batch_size": 64, "seed": 0}, "inference": {"method": "variational"}}
    return with_(spec, **extra)


@pytest.mark.parametrize("batch_size", [7, 64, "full"])
def test_the_epoch_loss_is_mean_nll_plus_beta_kl_over_the_training_rows_whatever_the_batch(batch_size):
    """With the posterior means all but fixed (lr 1e-12, no sampling), an epoch's loss per row is the mean NLL of the
    training rows plus beta * KL / N_train, the same for every batch size. Dividing the KL by the batch instead would
    make it grow as the batches shrink."""
    spec = parse_spec(bnn(**{"training.batch_size": batch_size, "optimizer.lr": 1e-12, "inference.kl_weight": 0.5}))
    state = build(spec, device="cpu")
    for m in state.model.modules():
        if isinstance(m, BayesModule):
            m.sample = False
    train_one_epoch(state)
    with torch.no_grad():
        nll = state.objective.loss(state.model(state.data.train.features()), state.data.train.y)
        kl = kl_divergence(state.model)
    rows = len(state.data.train)
    assert kl > 1000  # the KL of 19,000 weights near their init against N(0, 1): far from nothing
    assert state.metrics["train_loss"] == pytest.approx(float(nll) + 0.5 * float(kl) / rows, rel=1e-5)
    assert state.metrics["train_kl"] == pytest.approx(float(kl) / rows, rel=1e-6)
    # the data term alone, on val_loss's scale (the page charts it there; train_loss with the KL was 50 to 90 times it)
    assert state.metrics["train_nll"] == pytest.approx(float(nll), rel=1e-5)
    loss = training_loss(state)
    out, y = state.model(state.data.train.features()[:5]), state.data.train.y[:5]
    assert float(loss(out, y) - state.objective.loss(out, y)) == pytest.approx(0.5 * float(kl) / rows, rel=1e-5)


def test_the_kl_is_zero_when_the_posterior_is_the_prior_and_matches_the_closed_form():
    layer = BayesLinear(3, 2, True, prior_sigma=0.5, rho_init=-5.0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.fill_(0.0 if name.endswith("_mu") else math.log(math.expm1(0.5)))  # softplus(rho) = 0.5
    assert abs(float(layer.kl())) < 1e-5
    with torch.no_grad():
        layer.weight_mu[0, 0] = 0.3
        layer.weight_rho[0, 0] = math.log(math.expm1(0.2))
    q, p = torch.distributions.Normal(0.3, 0.2), torch.distributions.Normal(0.0, 0.5)
    assert float(layer.kl()) == pytest.approx(float(torch.distributions.kl_divergence(q, p)), rel=1e-4)


def test_the_layers_sample_around_their_means_with_the_posteriors_spread():
    torch.manual_seed(0)
    dense = BayesLinear(4, 3, True, 1.0, math.log(math.expm1(0.1)))  # every sigma 0.1
    x = torch.randn(1, 4).repeat(20_000, 1)
    out = dense(x)
    expected_var = (x[0] ** 2).sum() * 0.01 + 0.01  # local reparameterization: x^2 sigma^2 + bias sigma^2
    assert torch.allclose(out.mean(0), dense.weight_mu @ x[0] + dense.bias_mu, atol=0.01)
    assert torch.allclose(out.var(0), expected_var.expand(3), rtol=0.05)
    conv = BayesConv2d(2, 3, 3, 1, 1, True, 1.0, math.log(math.expm1(0.1)))
    image = torch.randn(1, 2, 5, 5).repeat(4000, 1, 1, 1)
    samples = conv(image)
    mean = torch.nn.functional.conv2d(image[:1], conv.weight_mu, conv.bias_mu, 1, 1)
    assert torch.allclose(samples.mean(0, keepdim=True), mean, atol=0.02)  # Flipout: unbiased around the mean
    assert samples.std(0).mean() > 0.05  # and spread per example
    conv.sample = dense.sample = False
    assert torch.equal(dense(x[:2])[0], dense(x[:2])[1])


def test_measures_of_a_predictive_distribution():
    probs = torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]])
    y = torch.tensor([0, 1, 1, 0])
    out = classification_measures(probs, y, "test", final=True)
    assert out["test_nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.5])), rel=1e-6)
    assert out["test_brier"] == pytest.approx(np.mean([0.02, 0.72, 0.08, 0.5]), rel=1e-6)
    # confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.5 (right): |0.9-1| + |0.6-0| + |0.8-1| + |0.5-1|, over 4
    assert out["test_ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.5) / 4, rel=1e-5)
    assert out["test_mutual_information"] == pytest.approx(0.0, abs=1e-6)  # one sample: no disagreement
    assert sum(b["count"] for b in out["test_reliability"]) == 4
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, True, False, True])) == 1.0
    ece, _ = reliability(torch.tensor([[0.7, 0.3]] * 10), torch.tensor([0] * 7 + [1] * 3))
    assert float(ece) == pytest.approx(0.0, abs=1e-6)  # 70% confident, 70% right
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.normal(0, 2.0, 100_000))
    got = regression_measures(torch.zeros_like(y), torch.zeros_like(y), 4.0, y, "test")
    assert got["test_coverage95"] == pytest.approx(0.95, abs=0.005)
    assert got["test_coverage68"] == pytest.approx(0.6827, abs=0.005)
    assert got["test_crps"] == pytest.approx(2.0 / math.sqrt(math.pi), rel=0.02)  # calibrated N(0, s^2): s / sqrt(pi)
    assert got["test_nll"] == pytest.approx(0.5 * math.log(2 * math.pi * 4.0) + 0.5, rel=0.01)


@pytest.mark.parametrize("change, path", [
    ({"inference": None}, "model.layers[0].type"),
    ({"model.layers": [{"type": "dense", "units": 10}]}, "inference.method"),
    ({"optimizer": {"type": "lbfgs"}}, "optimizer.type"),
    ({"inference": {"method": "mc_dropout"}}, "inference.method"),
    ({"loss": {"type": "hinge"}}, "loss.type"),
    ({"inference.noise": "fixed"}, "inference.noise_sigma"),
])
def test_what_a_method_needs_is_checked_with_the_field(change, path):
    with pytest.raises(SpecError) as caught:
        parse_spec(with_(bnn(), **change))
    assert path in [e.path for e in caught.value.errors]


def test_the_dry_run_counts_a_bayesian_layer_twice():
    from trainq.models.spec import plan

    point = plan(parse_spec(with_(bnn(), **{"model.layers": [{"type": "dense", "units": 10}], "inference": None})))
    bayes = plan(parse_spec(with_(bnn(), **{"model.layers": [{"type": "dense_bayes", "units": 10}]})))
    assert bayes.params == 2 * point.params == 2 * 650 and bayes.memory_bytes > point.memory_bytes


def test_gap_sine_has_its_probes_in_the_test_split_labelled_by_region():
    spec = parse_spec({"name": "g", "dataset": {"name": "gap_sine", "n_samples": 300, "noise": 0.1},
                       "model": {"layers": [{"type": "dense", "units": 1}]}, "loss": {"type": "mse"},
                       "optimizer": {"type": "adam"}})
    state = build(spec, device="cpu")
    from trainq.models.export import raw_rows

    train, test = raw_rows(state, "train")[:, 0], raw_rows(state, "test")[:, 0]
    regions = state.data.regions.numpy()
    assert ((np.abs(train) >= 0.35) & (np.abs(train) <= 1)).all()
    assert (np.abs(test[regions == 1]) < 0.15).all() and (regions == 1).sum() == 100
    assert ((np.abs(test[regions == 2]) >= 2) & (np.abs(test[regions == 2]) <= 3)).all()
    assert ((np.abs(test[regions == 3]) >= 4) & (np.abs(test[regions == 3]) <= 6)).all()
    assert ((np.abs(test[regions == 0]) >= 0.35)).all() and (regions == 0).sum() == len(test) - 300


# ---------------------------------------------------------------------------------------------------------------------
# The worked checks: calibration with the KL scaled right, MC dropout, distance awareness, coverage
# ---------------------------------------------------------------------------------------------------------------------

DIGITS_BNN = with_(bnn(), **{"training.epochs": 80, "training.batch_size": 32, "optimizer.lr": 0.002,
                             "training.early_stopping": {"monitor": "val_nll", "patience": 10},
                             "inference.samples": 50, "inference.val_samples": 10})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_variational_digits_network_is_accurate_and_calibrated(seed):
    m = fit(parse_spec(with_(DIGITS_BNN, **{"dataset.seed": seed, "training.seed": seed}))).metrics
    assert m["test_ece"] <= 0.04 and m["test_nll"] <= 0.15 and m["test_accuracy"] >= 0.96, m
    assert len(m["test_reliability"]) == 15 and m["test_entropy_auroc"] > 0.8  # the wrong rows are the unsure ones
    assert m["test_mutual_information"] > 0


def mc_dropout_mlp(p: float, seed: int, dataset: str = "digits", outputs: int = 10, epochs: int = 150,
                   units: int = 128) -> dict:
    layers = []
    for _ in range(2):
        layers += [{"type": "dense", "units": units}, {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": p}]
    spec = {"name": "mc", "dataset": {"name": dataset, "seed": seed}, "model": {"layers": layers + [
        {"type": "dense", "units": outputs}]}, "loss": {"type": "cross_entropy" if outputs > 1 else "mse"},
            "optimizer": {"type": "adam", "lr": 0.001}, "training": {"epochs": epochs, "batch_size": 64, "seed": seed}}
    return with_(spec, inference={"method": "mc_dropout", "samples": 50, "val_samples": 5}) if p else spec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mc_dropout_beats_the_same_network_without_dropout_on_test_nll(seed):
    sampled = fit(parse_spec(mc_dropout_mlp(0.25, seed))).metrics
    plain = fit(parse_spec(mc_dropout_mlp(0.0, seed))).metrics
    assert sampled["test_nll"] < plain["test_loss"], (sampled["test_nll"], plain["test_loss"])  # cross-entropy: NLL


def gap_sine(method: str, seed: int) -> dict:
    if method == "variational":
        layers = [{"type": "dense_bayes", "units": 50}, {"type": "activation", "fn": "relu"},
                  {"type": "dense_bayes", "units": 50}, {"type": "activation", "fn": "relu"},
                  {"type": "dense_bayes", "units": 1}]
        inference = {"method": "variational", "kl_weight": 0.1, "samples": 100}
    else:
        layers = [{"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": 0.1},
                  {"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": 0.1},
                  {"type": "dense", "units": 1}]
        inference = {"method": "mc_dropout", "samples": 100} if method == "mc_dropout" else None
    spec = {"name": "gap", "dataset": {"name": "gap_sine", "n_samples": 1000, "noise": 0.1, "seed": seed},
            "model": {"layers": layers}, "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 100, "batch_size": 32, "seed": seed}, "inference": inference}
    return fit(parse_spec(spec)).metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_on_gap_sine_uncertainty_grows_away_from_the_data_and_covers_it(seed):
    variational, dropout = gap_sine("variational", seed), gap_sine("mc_dropout", seed)
    assert variational["test_std_far"] >= 4 * variational["test_std_in"], variational
    assert dropout["test_std_farther"] >= 1.8 * dropout["test_std_in"], dropout
    for m in (variational, dropout):  # the test rows where the training data is: the noise is 0.1
        assert 0.90 <= m["test_coverage95_in"] <= 0.99, m
        assert m["test_std_aleatoric"] == pytest.approx(0.1, rel=0.25)
    point = gap_sine("point", seed)
    assert not any(k.startswith("test_std") for k in point)  # a point estimate claims no spread


def test_on_diabetes_the_95_percent_interval_covers_about_95_percent():
    inside = total = 0
    for seed in range(5):
        m = fit(parse_spec(mc_dropout_mlp(0.1, seed, "diabetes", outputs=1, epochs=60, units=64))).metrics
        rows = round(442 * 0.15)
        inside += m["test_coverage95"] * rows
        total += rows
    assert 0.88 <= inside / total <= 0.99


def test_a_one_dimensional_regression_carries_its_predictive_curve_in_raw_units():
    spec = with_(mc_dropout_mlp(0.1, 0, "gap_sine", outputs=1, epochs=30, units=32),
                 **{"dataset.n_samples": 300})
    curve = fit(parse_spec(spec)).metrics["test_predictive_curve"]
    assert len(curve["x"]) == 200 and curve["x"][0] < -5.5 and curve["x"][-1] > 5.5  # the probes' range, raw x
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))
    assert len(curve["train_x"]) >= 150 and all(0.35 <= abs(x) <= 1.0001 for x in curve["train_x"])
    from trainq.service.dashboard import curve_svg

    drawn = curve_svg(curve)
    assert len(drawn["points"]) == len(curve["train_x"]) and len(drawn["mean"].split()) == 200


def test_an_exported_bayesian_model_samples_inside_the_graph_and_answers_its_uncertainty(tmp_path):
    """The file draws its own posterior samples: two runs differ; its mean agrees with torch's; a classifier answers
    entropy and mutual information, a regression its predictive and epistemic std, wider far from the data."""
    import onnxruntime as ort

    from trainq.models.export import export_onnx, raw_rows, signature

    parsed, blobs = parse_spec(with_(bnn(hidden=(32,)), **{"training.epochs": 3, "inference.samples": 30})), []
    fit(parsed, checkpoint_sink=lambda blob, info: blobs.append(blob))
    state = build(parsed, device="cpu", resume=blobs[-1])
    done = export_onnx(state, tmp_path / "bnn.onnx")
    assert done.outputs == ["label", "probabilities", "entropy", "mutual_information"]
    assert done.checked[256] < 0.05
    session = ort.InferenceSession(str(tmp_path / "bnn.onnx"), providers=["CPUExecutionProvider"])
    rows = raw_rows(state, "test")
    first, second = session.run(None, {"x": rows}), session.run(None, {"x": rows})
    assert not np.array_equal(first[1], second[1])  # sampled in the graph
    assert np.allclose(first[1].sum(1), 1, atol=1e-5) and (first[3] >= 0).all() and (first[2] >= first[3]).all()
    assert [o["name"] for o in signature(state)["outputs"]] == done.outputs
    assert signature(state)["uncertainty"] == {"method": "variational", "samples": 30}

    spec = parse_spec({"name": "g", "dataset": {"name": "gap_sine", "n_samples": 300, "seed": 0},
                       "model": {"layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                                            {"type": "dropout", "p": 0.1}, {"type": "dense", "units": 1}]},
                       "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01},
                       "training": {"epochs": 30, "batch_size": 32}, "inference": {"method": "mc_dropout"}})
    blobs.clear()
    fit(spec, checkpoint_sink=lambda blob, info: blobs.append(blob))
    state = build(spec, device="cpu", resume=blobs[-1])
    assert export_onnx(state, tmp_path / "mc.onnx").outputs == ["value", "std", "epistemic_std"]
    value, std, epistemic = ort.InferenceSession(str(tmp_path / "mc.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([[0.7], [5.0]], dtype=np.float32)})
    assert (std >= epistemic).all() and epistemic[1, 0] > epistemic[0, 0]  # more spread far from the data
