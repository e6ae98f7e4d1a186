"""Packed trials: each member of a pack trains exactly as its trial alone (same seeds, per-epoch losses to 1e-4), stops
where it would alone, and fails or is cancelled alone; specs that cannot pack are told why."""

from __future__ import annotations

import math
import pytest
import yaml
from click.testing import CliRunner

from tests.specs import mlp, with_
from trainq.cli import main
from trainq.models.engine import fit
from trainq.models.packed import fit_pack
from trainq.models.packing import PackError, check_pack
from trainq.models.spec import parse_spec

TOLERANCE = 1e-4


def dropout_mlp(optimizer: dict, **training) -> dict:
    layers = [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": 0.2},
              {"type": "dense", "units": 32}, {"type": "activation", "fn": "tanh"}, {"type": "dense", "units": 10}]
    return with_(mlp(**{"epochs": 4, **training}), **{"model.layers": layers, "optimizer": optimizer})


def bn_cnn(optimizer: dict, **training) -> dict:
    # The convolution before batch norm has no bias: batch norm removes it, so its gradient is rounding noise, which
    # Adam scales up to full steps; the noise then differs between any two ways of summing, packed or not.
    layers = [{"type": "conv2d", "out_channels": 6, "padding": "same", "bias": False}, {"type": "batchnorm"},
              {"type": "activation", "fn": "relu"}, {"type": "pool"},
              {"type": "conv2d", "out_channels": 8, "padding": "same"}, {"type": "activation", "fn": "relu"},
              {"type": "pool"}, {"type": "flatten"}, {"type": "dense", "units": 4}]
    return {"name": "shapes-cnn", "dataset": {"name": "shapes", "n_samples": 400, "image_size": 12, "classes": 4,
                                              "noise": 0.2, "seed": 0},
            "model": {"init": "he", "layers": layers}, "loss": {"type": "cross_entropy"}, "optimizer": optimizer,
            "training": {"epochs": 3, "batch_size": 32, "seed": 0, **training}}


def members(base: dict, *changes: dict) -> list:
    return [parse_spec(with_(base, **change)) for change in changes]


def assert_same_training(alone, member) -> None:
    result = member.result
    assert result.stop_reason == alone.stop_reason and result.epochs == alone.epochs
    assert result.best_epoch == alone.best_epoch
    assert len(result.history) == len(alone.history)
    for a, b in zip(alone.history, result.history):
        assert a.keys() == b.keys()
        for key in a:
            assert math.isclose(a[key], b[key], abs_tol=TOLERANCE), (key, a, b)
    for key, value in alone.metrics.items():
        if isinstance(value, float):
            assert math.isclose(value, result.metrics[key], abs_tol=TOLERANCE), key
    assert result.metrics.get("test_confusion_matrix") == alone.metrics.get("test_confusion_matrix")


VARIED = ({"optimizer.lr": 0.01}, {"optimizer.lr": 0.03, "training.seed": 1},
          {"optimizer.lr": 0.02, "training.seed": 2, "regularization": {"l2": 1e-3, "max_grad_norm": 0.5}})


@pytest.mark.parametrize("build, optimizer", [
    (dropout_mlp, {"type": "momentum", "lr": 0.01, "momentum": 0.9}),
    (dropout_mlp, {"type": "adam", "lr": 0.001}),
    (bn_cnn, {"type": "momentum", "lr": 0.01, "momentum": 0.9}),
    (bn_cnn, {"type": "adam", "lr": 0.003}),
], ids=["mlp-dropout-momentum", "mlp-dropout-adam", "cnn-batchnorm-momentum", "cnn-batchnorm-adam"])
def test_each_member_trains_as_its_trial_alone(build, optimizer):
    changes = VARIED if optimizer["type"] == "momentum" else [
        {"optimizer.lr": v["optimizer.lr"] / 10, **{k: x for k, x in v.items() if k != "optimizer.lr"}} for v in VARIED]
    specs = members(build(optimizer), *changes)
    packed = fit_pack(specs)
    for spec, member in zip(specs, packed):
        assert_same_training(fit(spec), member)
    # and they did differ: a pack of copies would pass the comparison above too
    assert len({round(m.result.history[-1]["train_loss"], 4) for m in packed}) == len(specs)


GRAPH = {"name": "graph", "dataset": {"name": "shapes", "n_samples": 300, "image_size": 12, "classes": 4, "noise": 0.2,
                                      "seed": 0},
         "model": {"init": "he", "blocks": {"basic": [
             {"type": "conv2d", "out_channels": "$f", "stride": "$s", "padding": "same", "bias": False},
             {"type": "batchnorm", "id": "main"}, {"type": "add", "from": ["main", "in"]},
             {"type": "activation", "fn": "relu"}]},
             "layers": [
                 {"type": "conv2d", "out_channels": 6, "padding": "same", "id": "stem"},
                 {"use": "basic", "f": 6, "s": 1},
                 {"use": "basic", "f": 8, "s": 2},  # the shortcut projected: a strided 1x1 convolution, batch norm
                 {"type": "depthwise_conv2d", "multiplier": 2, "padding": "same", "id": "dw"},
                 {"type": "separable_conv2d", "out_channels": 8, "padding": "same", "id": "sep"},
                 {"type": "pool", "from": "stem", "size": 2, "id": "pooled"},
                 {"type": "concat", "from": ["sep", "pooled", "dw"]},
                 {"type": "global_avg_pool"},
                 {"type": "dropout", "p": 0.1},
                 {"type": "dense", "units": 16, "id": "h"},
                 {"type": "layernorm"},
                 {"type": "dense", "units": 16, "id": "g"},
                 {"type": "concat", "from": ["g", "h"]},
                 {"type": "dense", "units": 4}]},
         "loss": {"type": "cross_entropy"}, "optimizer": {"type": "momentum", "lr": 0.01, "momentum": 0.9},
         "training": {"epochs": 2, "batch_size": 32, "seed": 0}}


def test_a_graph_packs_and_each_member_trains_as_its_trial_alone():
    """Blocks with projected shortcuts, depthwise and separable convolutions, concat of images and of features,
    global pooling and layer norm: one packed graph of the same layers, each member its trial to 1e-4."""
    specs = members(GRAPH, *VARIED)
    packed = fit_pack(specs)
    for spec, member in zip(specs, packed):
        assert_same_training(fit(spec), member)
    assert len({round(m.result.history[-1]["train_loss"], 4) for m in packed}) == len(specs)


@pytest.mark.parametrize("optimizer", [
    {"type": "sgd", "lr": 0.05}, {"type": "nesterov", "lr": 0.02, "momentum": 0.8},
    {"type": "rmsprop", "lr": 0.0005, "momentum": 0.5}, {"type": "adagrad", "lr": 0.02},
    {"type": "adamw", "lr": 0.002}], ids=lambda o: o["type"])
def test_every_packed_optimizer_follows_torchs_update_rule(optimizer):
    base = with_(mlp(epochs=3), optimizer=optimizer)
    changes = [{"training.seed": 3}, {"optimizer.lr": optimizer["lr"] * 2, "regularization": {"weight_decay": 0.01}},
               {"regularization": {"l1": 1e-4, "input_noise": 0.1}, "loss.label_smoothing": 0.1}]
    specs = members(base, *changes)
    for spec, member in zip(specs, fit_pack(specs)):
        assert_same_training(fit(spec), member)


def test_early_stopping_stops_the_same_members_at_the_same_epochs_and_the_pack_shrinks():
    base = dropout_mlp({"type": "adam", "lr": 0.01}, epochs=40,
                       early_stopping={"monitor": "val_loss", "patience": 3, "restore_best": True})
    changes = [{"optimizer.lr": lr, "training.seed": seed} for lr, seed in
               [(0.01, 0), (0.005, 1), (0.003, 2), (0.001, 3), (0.0003, 4)]]
    specs = members(base, *changes)
    seen = []
    packed = fit_pack(specs, on_epoch=lambda pack: seen.append(len(pack.slots)))
    alone = [fit(spec) for spec in specs]
    for a, member in zip(alone, packed):
        assert_same_training(a, member)
    stops = [a.epochs for a in alone]
    assert len(set(stops)) > 1 and min(stops) < 40, stops  # they stopped at different epochs
    assert seen[-1] < len(specs), seen  # stopped members were compacted away; the rest still matched above


def test_a_cancelled_member_stops_alone():
    specs = members(dropout_mlp({"type": "adam", "lr": 0.001}, epochs=5), {}, {"training.seed": 1},
                    {"training.seed": 2})

    cancelled = []

    def cancel_second(pack):
        if pack.epoch == 2:
            pack.members[1].interrupt.set()
            cancelled.append(pack.epoch)

    packed = fit_pack(specs, on_epoch=cancel_second)
    assert cancelled == [2]
    assert packed[1].result.stop_reason == "cancelled" and packed[1].result.epochs in (2, 3)
    assert packed[1].result.metrics == {}
    for i in (0, 2):
        assert_same_training(fit(specs[i]), packed[i])


def test_a_diverging_member_fails_alone_and_the_others_finish():
    specs = members(mlp(epochs=3, log_every_steps=1), {"optimizer.lr": 0.001},
                    {"optimizer": {"type": "sgd", "lr": 100.0}, "model.init": {"type": "normal", "std": 10}},
                    {"optimizer.lr": 0.002})
    with pytest.raises(PackError, match="member 1 differs from member 0 in model.init"):
        check_pack(specs)
    specs = members(with_(mlp(epochs=3, log_every_steps=1), optimizer={"type": "sgd", "lr": 0.01}),
                    {}, {"optimizer.lr": 90.0}, {"training.seed": 1})
    packed = fit_pack(specs)
    assert packed[1].result.stop_reason == "failed" and "lower the learning rate" in packed[1].failed
    for i in (0, 2):
        assert packed[i].failed is None
        assert_same_training(fit(specs[i]), packed[i])


@pytest.mark.parametrize("change, says", [
    ({"model.layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                       {"type": "dense", "units": 10}]}, "member 1 differs from member 0 in model.layers[0].units"),
    ({"training.batch_size": 32}, "in training.batch_size, which is not packable"),
    ({"optimizer": {"type": "sgd", "lr": 0.1}}, "in optimizer.type"),
])
def test_members_that_differ_in_shape_are_refused_with_the_field(change, says):
    specs = members(mlp(), {}, change)
    with pytest.raises(PackError, match=says.replace("[", r"\[").replace("]", r"\]")):
        fit_pack(specs)


@pytest.mark.parametrize("change, says", [
    ({"optimizer": {"type": "lbfgs"}}, "lbfgs re-evaluates the loss"),
    ({"schedule": {"type": "one_cycle"}}, "schedule.type: one_cycle is not stacked"),
    ({"training.accumulate_steps": 2}, "accumulation is not stacked"),
    ({"dataset": {"name": "adding", "sequence_length": 10, "n_samples": 200}, "loss": {"type": "mse"},
      "model.layers": [{"type": "lstm", "units": 4}, {"type": "dense", "units": 1}]},
     "dataset: sequences \\(steps x features\\) are not stacked yet"),
])
def test_what_never_packs_says_so(change, says):
    with pytest.raises(PackError, match=says):
        check_pack(members(mlp(), change))


def test_trainq_train_pack_prints_one_row_per_member(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(mlp(epochs=3)))
    result = CliRunner().invoke(main, ["train", str(path), "--pack", "optimizer.lr=0.001,0.01",
                                       "--pack", "training.seed=0,1"])
    assert result.exit_code == 0, result.output
    table = result.output.splitlines()[-6:-1]
    assert table[0].split()[:3] == ["member", "optimizer.lr", "training.seed"]
    rows = [line.split() for line in table[1:]]
    assert [(r[1], r[2]) for r in rows] == [("0.001", "0"), ("0.001", "1"), ("0.01", "0"), ("0.01", "1")]
    alone = fit(parse_spec(with_(mlp(epochs=3), **{"optimizer.lr": 0.01, "training.seed": 1})))
    assert float(rows[3][-2]) == pytest.approx(alone.metrics["test_loss"], abs=1e-4)


@pytest.mark.parametrize("option, says", [
    ("optimizer.learning_rate=0.1,0.2", "--pack optimizer.learning_rate: the spec has no such field"),
    ("optimizer.lr", "write FIELD=V1,V2"),
    ("model.layers[0].units=32,64", "differs from member 0 in model.layers[0].units, which is not packable"),
    ("optimizer.lr=0.1,-1", "member 1 (optimizer.lr=-1): optimizer.lr: "),
])
def test_trainq_train_pack_mistakes_get_a_message_not_a_traceback(tmp_path, option, says):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(mlp(epochs=1)))
    result = CliRunner().invoke(main, ["train", str(path), "--pack", option])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert says in result.output


def test_a_members_checkpoint_resumes_in_a_pack_or_alone_and_a_trials_resumes_in_a_pack():
    specs = members(dropout_mlp({"type": "momentum", "lr": 0.02, "momentum": 0.9}, epochs=5), {},
                    {"training.seed": 1, "optimizer.lr": 0.01})
    saved: list[dict[int, bytes]] = [{}, {}]

    def sink(i):
        return lambda blob, info: saved[i].__setitem__(info["epoch"], blob)

    whole = fit_pack(specs, checkpoint_sinks=[sink(0), sink(1)], checkpoint_seconds=0)
    assert sorted(saved[0]) == [1, 2, 3, 4, 5]
    resumed = fit_pack(specs, resumes=[saved[0][2], saved[1][2]])
    for a, b in zip(whole, resumed):
        assert_same_training(a.result, b)  # the history restored up to epoch 2, then the same epochs 3-5
    alone = fit(specs[1], resume=saved[1][3])  # a member's checkpoint is a trial's: the engine resumes it
    assert_same_training(alone, whole[1])
    trial_checkpoints: dict[int, bytes] = {}
    every_epoch = specs[0].model_copy(update={"training": specs[0].training.model_copy(
        update={"checkpoint_every_seconds": 0})})
    fit(every_epoch, checkpoint_sink=lambda blob, info: trial_checkpoints.__setitem__(info["epoch"], blob))
    repacked = fit_pack(specs, resumes=[trial_checkpoints[2], saved[1][2]])
    assert_same_training(whole[0].result, repacked[0])
    with pytest.raises(PackError, match="resume from different epochs"):
        fit_pack(specs, resumes=[saved[0][2], saved[1][3]])


def test_checkpoints_come_on_a_clock_and_when_a_member_stops():
    specs = members(mlp(epochs=6, early_stopping={"monitor": "val_loss", "patience": 1}), {"optimizer.lr": 0.5},
                    {"optimizer.lr": 0.001})
    saved: list[list[int]] = [[], []]
    packed = fit_pack(specs, checkpoint_sinks=[lambda b, i: saved[0].append(i["epoch"]),
                                               lambda b, i: saved[1].append(i["epoch"])], checkpoint_seconds=3600)
    assert packed[0].result.stop_reason == "early_stopped" and packed[0].result.epochs < 6
    assert saved == [[packed[0].result.epochs], [6]]  # nothing on the clock within an hour: at the stop and the end


@pytest.mark.parametrize("value", ["yes", True, 0, 65, "maybe"])
def test_a_sweeps_pack_is_auto_off_or_a_size_and_says_so(value):
    from trainq.models.spec import SpecError
    from trainq.models.sweep import parse_sweep

    body = {"name": "s", "base": mlp(), "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-2]}}, "pack": value}
    with pytest.raises(SpecError) as caught:
        parse_sweep(body)
    assert [(e.path, e.message) for e in caught.value.errors] == [
        ("pack", f"{value!r} is not a pack: auto (pack where it pays), off, or at most how many trials train together "
                 "(1 to 64)")]
    assert parse_sweep({**body, "pack": 8})[0].pack == 8


def test_trainq_train_pack_out_writes_each_members_checkpoints_as_a_trials(tmp_path):
    from trainq.models.checkpoint import read_meta

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(mlp(epochs=3)))
    result = CliRunner().invoke(main, ["train", str(path), "--pack", "training.seed=0,1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    for i in (0, 1):
        blob = (tmp_path / "o" / f"member-{i}" / "latest.safetensors").read_bytes()
        meta = read_meta(blob)
        assert meta["epoch"] == 3 and meta["spec"]["training"]["seed"] == i
        alone = fit(parse_spec(with_(mlp(epochs=3), **{"training.seed": i})))
        assert [h["val_loss"] for h in meta["history"]] == pytest.approx([h["val_loss"] for h in alone.history],
                                                                          abs=1e-4)
