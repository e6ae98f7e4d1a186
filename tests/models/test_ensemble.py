"""Deep ensembles (`inference.method: ensemble`): M networks from seeds seed..seed+M-1, stacked in one module and
trained together, each exactly as it would train alone; measured, checkpointed and exported as their mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.specs import mlp, with_
from trainq.models.engine import build, fit
from trainq.models.packing import unpackable
from trainq.models.spec import SpecError, parse_spec, plan, spec_rows
from trainq.models.state import Callback


def ensemble(members: int = 3, **changes) -> dict:
    return with_(mlp(hidden=(32,)), inference={"method": "ensemble", "members": members}, **changes)


@pytest.mark.parametrize("change, path", [
    ({"optimizer": {"type": "lbfgs"}}, "optimizer.type"),
    ({"schedule": {"type": "one_cycle", "max_lr": 0.01}}, "schedule.type"),
    ({"training.accumulate_steps": 2}, "training.accumulate_steps"),
    ({"inference.members": 1}, "inference.members"),
    ({"inference.members": 65}, "inference.members"),
    ({"model.layers": [{"type": "dense_bayes", "units": 10}]}, "model.layers[0].type"),
])
def test_what_an_ensemble_cannot_do_is_refused_with_the_field(change, path):
    with pytest.raises(SpecError) as caught:
        parse_spec(ensemble(**change))
    assert path in [e.path for e in caught.value.errors], caught.value.errors


def test_image_augmentation_is_refused_and_the_message_says_what_to_do():
    spec = with_(ensemble(), **{"dataset.as_images": True, "augmentation": [{"type": "hflip"}],
                                "model.layers": [{"type": "conv2d", "out_channels": 4, "kernel": 3},
                                                 {"type": "flatten"}, {"type": "dense", "units": 10}]})
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    [error] = [e for e in caught.value.errors if e.path == "augmentation"]
    assert "stacked" in error.message and "mc_dropout" in error.message


def test_the_dry_run_counts_every_member_and_the_spec_shows_members_not_samples():
    one = plan(parse_spec(with_(ensemble(), inference=None)))
    four = plan(parse_spec(ensemble(4)))
    assert four.params == 4 * one.params == 4 * (64 * 32 + 32 + 32 * 10 + 10)
    assert four.flops_per_example == 4 * one.flops_per_example and four.memory_bytes > one.memory_bytes
    rows = {path for path, _, _ in spec_rows(parse_spec(ensemble(4)))}
    assert "inference.members" in rows and "inference.samples" not in rows and "inference.val_samples" not in rows
    assert "ensemble" in unpackable(parse_spec(ensemble()))  # a sweep never packs an ensemble with other trials
    assert four.as_dict()["members"] == 4 and one.as_dict()["members"] == 0


def test_each_member_trains_as_the_network_alone_with_its_seed_and_the_ensemble_answers_their_mixture():
    """Full batches make the order of rows irrelevant, so member m's run is exactly the spec without an inference
    block and with training.seed + m: its init, its Adam steps, its own gradient-norm clip. The ensemble's train
    loss is the members' mean, its validation NLL that of their averaged probabilities."""
    spec = ensemble(3, **{"training.batch_size": "full", "training.epochs": 4, "optimizer.lr": 0.01,
                          "regularization.max_grad_norm": 0.5, "training.seed": 7})
    together = fit(parse_spec(spec), device="cpu")
    alone, probs = [], []
    for m in range(3):
        member = parse_spec(with_(spec, inference=None, **{"training.seed": 7 + m}))
        states = []
        result = fit(member, device="cpu", callbacks=[Keep(states)])
        alone.append(result)
        with torch.no_grad():
            state = states[0]
            state.model.eval()
            probs.append(torch.softmax(state.model(state.data.val.features()), dim=1))
    for epoch in range(4):
        mean = np.mean([r.history[epoch]["train_loss"] for r in alone])
        assert together.history[epoch]["train_loss"] == pytest.approx(mean, abs=1e-5)
    y = states[0].data.val.y
    mixture_nll = float(-torch.log(torch.stack(probs).mean(0).gather(1, y.view(-1, 1))).mean())
    assert together.history[-1]["val_nll"] == pytest.approx(mixture_nll, abs=1e-5)
    assert together.history[-1]["val_nll"] < min(r.history[-1]["val_loss"] for r in alone)


class Keep(Callback):
    """Keeps the run's state, to read its model afterwards."""

    def __init__(self, into: list):
        self.into = into

    def on_train_start(self, state):
        self.into.append(state)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_digits_an_ensemble_beats_one_network_on_test_nll_and_calibration(seed):
    spec = with_(mlp(hidden=(64,)), **{"training.epochs": 30, "optimizer.lr": 0.003, "training.seed": seed,
                                       "dataset.seed": seed})
    single = fit(parse_spec(spec), device="cpu").metrics
    mixture = fit(parse_spec(with_(spec, inference={"method": "ensemble", "members": 5})), device="cpu").metrics
    # measured on seeds 0-4: 0.081/0.153, 0.134/0.148, 0.086/0.145, 0.086/0.098, 0.093/0.122
    assert mixture["test_nll"] < single["test_loss"], (mixture["test_nll"], single["test_loss"])
    assert mixture["test_ece"] <= 0.04 and mixture["test_accuracy"] >= single["test_accuracy"] - 0.01
    assert mixture["test_mutual_information"] > 0 and len(mixture["test_reliability"]) == 15


@pytest.mark.parametrize("seed", [0, 1])
def test_on_gap_sine_the_members_disagree_away_from_the_data(seed):
    layers = [{"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"},
              {"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 1}]
    spec = {"name": "gap", "dataset": {"name": "gap_sine", "n_samples": 1000, "noise": 0.1, "seed": seed},
            "model": {"layers": layers}, "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 100, "batch_size": 32, "seed": seed},
            "inference": {"method": "ensemble", "members": 5}}
    m = fit(parse_spec(spec), device="cpu").metrics
    assert m["test_std_far"] >= 4 * m["test_std_in"], m
    assert m["test_std_farther"] >= m["test_std_far"], m
    assert 0.90 <= m["test_coverage95_in"] <= 0.99, m
    assert m["test_std_aleatoric"] == pytest.approx(0.1, rel=0.25)


def test_a_resumed_ensemble_ends_exactly_as_an_uninterrupted_one():
    """Dropout draws from the ensemble's own generator, which the checkpoint carries, as it carries the members'
    permutations' generator: resuming from epoch 2 of 4 gives the same run."""
    spec = parse_spec(ensemble(3, **{"model.layers": [
        {"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": 0.2},
        {"type": "dense", "units": 10}], "training.epochs": 4, "training.checkpoint_every_seconds": 0}))
    blobs = []
    whole = fit(spec, device="cpu", checkpoint_sink=lambda blob, info: blobs.append(blob))
    resumed = fit(spec, device="cpu", resume=blobs[1])
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in whole.history],
                                                                       abs=1e-6)
    assert resumed.metrics["test_nll"] == pytest.approx(whole.metrics["test_nll"], abs=1e-6)


def test_an_exported_ensemble_answers_the_mixture_exactly(tmp_path):
    import onnxruntime as ort

    from trainq.models.export import export_onnx, raw_rows, signature

    spec, blobs = parse_spec(ensemble(4, **{"training.epochs": 3})), []
    fit(spec, device="cpu", checkpoint_sink=lambda blob, info: blobs.append(blob))
    state = build(spec, device="cpu", resume=blobs[-1])
    done = export_onnx(state, tmp_path / "ensemble.onnx")
    assert done.outputs == ["label", "probabilities", "entropy", "mutual_information"]
    assert max(done.checked.values()) < 1e-4  # no draws: the file and torch agree exactly
    assert signature(state)["uncertainty"] == {"method": "ensemble", "samples": 4}
    rows = raw_rows(state, "test")
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    label, probs, total, mutual = session.run(None, {"x": rows})
    with torch.no_grad():
        state.model.eval()
        members = torch.softmax(state.model(state.data.test.features()), dim=-1)  # (M, N, K)
    assert members.shape[0] == 4 and np.allclose(probs, members.mean(0).numpy(), atol=1e-5)
    assert (mutual > 0).mean() > 0.9 and (total >= mutual - 1e-6).all()
    assert np.array_equal(label, probs.argmax(1))


# ---------------------------------------------------------------------------------------------------------------------
# Learned (heteroscedastic) noise: loss gaussian_nll, inference.noise: learned
# ---------------------------------------------------------------------------------------------------------------------


def test_the_gaussian_nll_is_the_normal_log_density():
    from trainq.models.losses import gaussian_nll

    out = torch.tensor([[0.5, 0.3], [-1.0, -2.0]])
    y = torch.tensor([[0.2], [0.0]])
    var = torch.nn.functional.softplus(out[:, 1]) + 1e-6
    expected = -torch.distributions.Normal(out[:, 0], var.sqrt()).log_prob(y[:, 0])
    assert torch.allclose(gaussian_nll(out, y), expected, atol=1e-6)


@pytest.mark.parametrize("change, path", [
    ({"inference": None}, "loss.type"),  # a point estimate: the mdn head (components: 1) learns a spread
    ({"inference.noise": "validation"}, "inference.noise"),
    ({"loss": {"type": "mse"}}, "inference.noise"),
    ({"model.layers": [{"type": "dense", "units": 1}]}, "model.layers[0]"),
    ({"dataset": {"name": "digits"}}, "loss.type"),
])
def test_learned_noise_needs_its_loss_and_two_outputs(change, path):
    spec = {"name": "h", "dataset": {"name": "gap_sine", "n_samples": 300}, "model": {"layers": [
        {"type": "dense", "units": 16}, {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 2}]},
        "loss": {"type": "gaussian_nll"}, "optimizer": {"type": "adam"},
        "inference": {"method": "ensemble", "members": 3, "noise": "learned"}}
    parse_spec(spec)
    with pytest.raises(SpecError) as caught:
        parse_spec(with_(spec, **change))
    assert path in [e.path for e in caught.value.errors], caught.value.errors


@pytest.mark.parametrize("method", ["ensemble", "mc_dropout"])
def test_learned_noise_follows_the_data_and_the_exported_model_answers_it(tmp_path, method):
    """y = x + N(0, (0.05 + 0.3 |x|)^2) on x in [-1, 1]: the noise the model learned (the exported file's std² minus
    its epistemic std²) is near 0.05 at x = 0 (MC dropout overestimates it a little) and 0.32 at |x| = 0.9; the test
    rows are covered as they should be."""
    import onnxruntime as ort

    from trainq.models.export import export_onnx
    from trainq.models.spec import Uploaded

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2000, 1)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1, 2000) * (0.05 + 0.3 * np.abs(x[:, 0]))).astype(np.float32)
    dropout = [{"type": "dropout", "p": 0.1}] if method == "mc_dropout" else []
    spec = {"name": "hetero", "dataset": {"name": "upload", "upload": "hetero"}, "model": {"layers": [
        {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"}, *dropout,
        {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"}, *dropout, {"type": "dense", "units": 2}]},
        "loss": {"type": "gaussian_nll"}, "optimizer": {"type": "adam", "lr": 0.003},
        "training": {"epochs": 60, "batch_size": 64, "seed": 0},
        "inference": {"method": method, "members": 3, "samples": 30, "noise": "learned"}}
    parsed = parse_spec(spec, uploads=lambda name: Uploaded("hetero", 1, "arrays", 2000, None, shape=(1,)))
    blobs = []
    m = fit(parsed, device="cpu", arrays=(x, y), checkpoint_sink=lambda blob, info: blobs.append(blob)).metrics
    assert 0.90 <= m["test_coverage95"] <= 0.99 and 0.6 <= m["test_coverage68"] <= 0.76, m
    state = build(parsed, device="cpu", resume=blobs[-1], arrays=(x, y))
    export_onnx(state, tmp_path / "h.onnx", arrays=(x, y))
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    value, std, epistemic = session.run(None, {"x": np.array([[0.0], [0.9], [-0.9]], dtype=np.float32)})
    noise = np.sqrt(np.maximum(std[:, 0] ** 2 - epistemic[:, 0] ** 2, 0))
    # measured: ensemble 0.06 / 0.38 / 0.36; MC dropout 0.07-0.09 / 0.33-0.37 (its samples differ per call)
    assert 0.02 <= noise[0] <= 0.11 and noise[1:] == pytest.approx([0.32, 0.32], rel=0.3), noise
    assert min(noise[1:]) > 3 * noise[0]  # it learned where the data is noisier
    assert value[:, 0] == pytest.approx([0.0, 0.9, -0.9], abs=0.1)


def test_a_convolutional_ensemble_trains_on_images_and_exports():
    """Stacked convolutions (one grouped convolution per layer), batch norm per member, NHWC inputs: an ensemble of
    small CNNs on digits as images learns, beats chance by far, and its file answers as torch does."""
    import tempfile
    from pathlib import Path

    from trainq.models.export import export_onnx

    spec = parse_spec(with_(mlp(epochs=6), **{"optimizer.lr": 0.003,
        "dataset.as_images": True, "inference": {"method": "ensemble", "members": 3},
        "training.checkpoint_every_seconds": 0,
        "model.layers": [{"type": "conv2d", "out_channels": 8, "kernel": 3, "padding": "same"},
                         {"type": "batchnorm"}, {"type": "activation", "fn": "relu"}, {"type": "pool"},
                         {"type": "flatten"}, {"type": "dropout", "p": 0.2}, {"type": "dense", "units": 10}]}))
    blobs = []
    result = fit(spec, device="cpu", checkpoint_sink=lambda blob, info: blobs.append(blob))
    assert result.metrics["test_accuracy"] > 0.85 and result.metrics["test_mutual_information"] > 0
    state = build(spec, device="cpu", resume=blobs[-1])
    assert state.channels_last and next(state.model.parameters()).dim() == 5  # (members, out, in, k, k)
    with tempfile.TemporaryDirectory() as folder:
        done = export_onnx(state, Path(folder) / "cnn.onnx")
    assert max(done.checked.values()) < 1e-4
