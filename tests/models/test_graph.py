"""Graphs and the layers past a straight stack: blocks expand in place, ids resolve backwards only, every error names
its path; each new layer's planned shape and parameters are torch's; a graph and each new layer export to ONNX and
resume from a checkpoint exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from trainq.models.engine import build, fit
from trainq.models.export import export_onnx, raw_rows
from trainq.models.layers import LAYERS, GraphNet, build_model
from trainq.models.spec import ITEM, SpecError, Uploaded, parse_spec, plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def errors_of(spec: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return {e.path: e.message for e in caught.value.errors}


def changed(spec: dict, change) -> dict:
    spec = copy.deepcopy(spec)
    change(spec)
    return spec


# ---------------------------------------------------------------------------------------------------------------------
# Planning a graph
# ---------------------------------------------------------------------------------------------------------------------


def test_resnet8_expands_its_blocks_and_projects_the_shortcut_where_the_shape_changes():
    spec = parse_spec(example("resnet8"))
    planned = plan(spec)
    adds = [layer for layer in planned.layers if layer.type == "add"]
    assert [a.id for a in adds] == ["basic1.add_8", "basic2.add_15", "basic3.add_22"]
    assert [a.inputs for a in adds] == [["basic1.main", "activation_2"], ["basic2.main", "basic1.activation_9"],
                                        ["basic3.main", "basic2.activation_16"]]
    # the first block keeps 16 x 32 x 32: no projection; the others a 1x1 convolution (no bias) and its batchnorm
    assert [a.params for a in adds] == [0, 16 * 32 + 2 * 32, 32 * 64 + 2 * 64]
    assert [a.output_shape for a in adds] == [[16, 32, 32], [32, 16, 16], [64, 8, 8]]
    assert {a.path for a in adds} == {"model.blocks.basic[5]"}
    model = build_model(spec)
    assert isinstance(model, GraphNet) and len(model.layers) == len(planned.layers) == 26
    assert sum(p.numel() for p in model.parameters()) == planned.params
    assert tuple(model(torch.randn(2, 3, 32, 32)).shape) == (2, 6)


def test_a_straight_stack_stays_a_sequential_and_names_its_layers():
    spec = parse_spec(example("digits-mlp"))
    assert isinstance(build_model(spec), torch.nn.Sequential)
    layers = plan(spec).as_dict()["layers"]
    assert [(layer["id"], layer["inputs"]) for layer in layers[:2]] == [("dense_0", ["in"]), ("activation_1",
                                                                                               ["dense_0"])]


RESNET = example("resnet8")
BLOCK = ("model", "blocks", "basic")


def block_layer(i: int, **fields):
    return lambda s: s["model"]["blocks"]["basic"][i].update(fields)


@pytest.mark.parametrize("change, path, fragment", [
    (lambda s: s["model"]["layers"][4].pop("s"), "model.blocks.basic[0].stride",
     "$s is not given where the block is used (model.layers[4]): add s: VALUE there"),
    (lambda s: s["model"]["layers"][4].update(g=3), "model.layers[4].g", "block basic has no parameter $g; it takes f, s"),
    (block_layer(5, project="none"), "model.blocks.basic[5]",
     "add needs equal shapes: input 1 is [16, 32, 32], input 0 is [32, 16, 16]"),
    (block_layer(5, **{"from": ["main", "later"]}), "model.blocks.basic[5].from", "no layer with id 'later'"),
    (block_layer(4, **{"from": "main"}), "model.blocks.basic[4].from", "'main' is this layer itself"),
    (block_layer(3, **{"from": "main"}), "model.blocks.basic[3].from", "'main' is a later layer"),
    (block_layer(0, out_channels="$k"), "model.blocks.basic[0].out_channels", "$k is not given"),
    (block_layer(0, out_channels=0), "model.blocks.basic[0].out_channels", "as used at model.layers[3]"),
    (lambda s: s["model"]["blocks"]["basic"].append({"use": "basic", "f": 1, "s": 1}), "model.blocks.basic[7].use",
     "block basic uses itself"),
    (lambda s: s["model"]["layers"].__setitem__(3, {"use": "basick", "f": 16, "s": 1}), "model.layers[3].use",
     "no block named 'basick'; the blocks are basic"),
    (lambda s: s["model"]["layers"].insert(3, {"type": "conv2d", "out_channels": 3, "from": "in"}), "model.layers[2]",
     "the output of this activation layer is never used"),
    (lambda s: s["model"]["layers"].insert(3, {"type": "add", "from": "in"}), "model.layers[3].from",
     "add joins two or more layers"),
    (lambda s: s["model"]["layers"].insert(3, {"type": "conv2d", "out_channels": 3, "from": ["in", "in"]}),
     "model.layers[3].from", "conv2d reads one layer; join several first"),
    (lambda s: s["model"]["layers"].__setitem__(6, {"type": "dense", "units": 3}), "model.layers[6]",
     "dense needs features (F,) or a sequence (steps, features), got shape [64, 8, 8]; add a flatten"),
    (lambda s: s["model"]["layers"].__setitem__(0, {"type": "residual"}), "model.layers[0]",
     "unknown layer type 'residual'; did you mean 'add'?"),
    (lambda s: s["model"]["layers"][0].update(id="in"), "model.layers[0].id", "in names the input"),
    (lambda s: s["model"]["layers"][2].update(**{"from": "conv2d_0"}), "model.layers[2].from",  # the dry run's name
     "conv2d_0 is the name the dry run shows for the layer at model.layers[0], which has no id; give it one"),
])
def test_a_graph_mistake_is_named_at_its_path(change, path, fragment):
    errors = errors_of(changed(RESNET, change))
    assert path in errors, errors
    assert fragment in errors[path], errors[path]


def test_an_unknown_layer_type_lists_the_installed_ones_and_who_installs_more():
    message = errors_of(changed(RESNET, lambda s: s["model"]["layers"].__setitem__(0, {"type": "swin"})))[
        "model.layers[0]"]
    assert "the layer types installed here are activation, add, attention" in message
    assert "packages that the administrator installs" in message and "GET /api/v1/layers" in message


def test_a_block_used_with_other_parameters_plans_each_use_apart():
    planned = plan(parse_spec(RESNET))
    convs = [layer for layer in planned.layers if layer.type == "conv2d" and layer.id.startswith("basic")]
    assert [c.output_shape[0] for c in convs] == [16, 16, 32, 32, 64, 64]


def test_the_stored_spec_is_the_one_written_blocks_and_all():
    spec = parse_spec(RESNET)
    dumped = spec.model_dump(mode="json")["model"]
    assert dumped["layers"][3] == {"use": "basic", "f": 16, "s": 1}
    assert dumped["blocks"]["basic"][5] == {"type": "add", "from": ["main", "in"]}
    assert dumped["layers"][0] == {"type": "conv2d", "out_channels": 16, "kernel": 3, "stride": 1, "padding": "same",
                                   "bias": False}
    assert plan(parse_spec(spec.model_dump(mode="json"))).params == plan(spec).params


# ---------------------------------------------------------------------------------------------------------------------
# Each layer's planned shape and parameters are torch's
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer, shape", [
    ({"type": "dense", "units": 5}, (7, 3)),
    ({"type": "layernorm"}, (7, 3)), ({"type": "layernorm"}, (9,)),
    ({"type": "depthwise_conv2d", "multiplier": 2, "kernel": 3, "stride": 2}, (3, 16, 16)),
    ({"type": "separable_conv2d", "out_channels": 8, "kernel": 5, "padding": "valid"}, (3, 16, 16)),
    ({"type": "global_avg_pool"}, (3, 8, 8)),
    ({"type": "embedding", "vocab": 20, "dim": 6}, (11,)), ({"type": "embedding", "vocab": 20, "dim": 6}, (11, 1)),
    ({"type": "lstm", "units": 8, "layers": 2, "bidirectional": True}, (10, 3)),
    ({"type": "lstm", "units": 8, "return": "sequence"}, (10, 3)),
    ({"type": "gru", "units": 8, "layers": 3, "bidirectional": True, "return": "sequence"}, (10, 3)),
    ({"type": "gru", "units": 4}, (10, 3)),
    ({"type": "attention", "heads": 2, "dim": 8, "causal": True}, (10, 3)), ({"type": "attention", "heads": 3}, (10, 6)),
    ({"type": "transformer_encoder", "layers": 2, "heads": 2, "feedforward": 16}, (10, 6)),
    ({"type": "positional", "kind": "learned"}, (10, 6)), ({"type": "positional"}, (10, 7)),
    ({"type": "sequence_pool", "kind": "max"}, (10, 6)), ({"type": "sequence_pool", "kind": "last"}, (10, 6)),
    ({"type": "sequence_pool"}, (10, 6)),
    ({"type": "activation", "fn": "softmax"}, (10, 6)), ({"type": "activation", "fn": "gelu"}, (6,)),
], ids=lambda v: v.get("type") if isinstance(v, dict) else str(v))
def test_a_layers_planned_shape_and_parameters_are_torchs(layer, shape):
    spec = ITEM.validate_python(layer)
    module = LAYERS[spec.type](spec, shape)
    x = torch.randint(0, 20, (4, *shape)).float() if spec.type == "embedding" else torch.randn(4, *shape)
    assert tuple(module(x).shape[1:]) == spec.output_shape(shape)
    assert sum(p.numel() for p in module.parameters()) == spec.param_count(shape)


@pytest.mark.parametrize("layer, shapes", [
    ({"type": "add"}, [(8, 4, 4), (3, 8, 8)]), ({"type": "add"}, [(5,), (3,)]), ({"type": "add"}, [(7, 5), (7, 3)]),
    ({"type": "add"}, [(5,), (5,), (5,)]),
    ({"type": "concat"}, [(8, 4, 4), (3, 4, 4)]), ({"type": "concat"}, [(7, 5), (7, 3), (7, 1)]),
    ({"type": "concat"}, [(4,), (2,)]),
])
def test_a_merges_planned_shape_and_parameters_are_torchs(layer, shapes):
    spec = ITEM.validate_python({**layer, "from": [f"x{i}" for i in range(len(shapes))]})
    module = LAYERS[spec.type](spec, shapes)
    out = module(*[torch.randn(4, *s) for s in shapes])
    assert tuple(out.shape[1:]) == spec.merge_shape(shapes)
    assert sum(p.numel() for p in module.parameters()) == spec.merge_params(shapes)


def test_attention_is_causal_when_asked():
    spec = ITEM.validate_python({"type": "attention", "heads": 2, "causal": True})
    module = LAYERS["attention"](spec, (6, 4))
    x = torch.randn(1, 6, 4)
    later = x.clone()
    later[:, 4:] += 10.0  # a causal step 3 cannot see steps 4 and 5
    assert torch.allclose(module(x)[:, :4], module(later)[:, :4])
    assert not torch.allclose(module(x)[:, 4:], module(later)[:, 4:])


# ---------------------------------------------------------------------------------------------------------------------
# Export and resume: every new layer, in graphs on images and on sequences
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_GRAPH = {
    "name": "image-graph", "dataset": {"name": "digits", "as_images": True, "seed": 0},
    "model": {"layers": [
        {"type": "conv2d", "out_channels": 8, "kernel": 3, "padding": "same", "id": "stem"},
        {"type": "depthwise_conv2d", "multiplier": 2},
        {"type": "batchnorm"},
        {"type": "separable_conv2d", "out_channels": 12, "stride": 2, "id": "branch"},
        {"type": "add", "from": ["branch", "stem"]},  # 8 x 8 x 8 projected onto 12 x 4 x 4
        {"type": "activation", "fn": "gelu", "id": "merged"},
        {"type": "pool", "kind": "avg", "size": 2, "from": "stem", "id": "pooled"},
        {"type": "concat", "from": ["merged", "pooled"]},
        {"type": "global_avg_pool"},
        {"type": "layernorm"},
        {"type": "dense", "units": 10}]},
    "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.003},
    "training": {"epochs": 3, "batch_size": 64, "seed": 0, "checkpoint_every_seconds": 0}}

SEQUENCE_GRAPH = {
    "name": "sequence-graph", "dataset": {"name": "adding", "sequence_length": 12, "n_samples": 400, "seed": 0},
    "model": {"layers": [
        {"type": "dense", "units": 8, "id": "wide"},
        {"type": "positional", "kind": "learned"},
        {"type": "lstm", "units": 4, "bidirectional": True, "return": "sequence", "id": "lstm"},
        {"type": "gru", "units": 8, "layers": 2, "return": "sequence", "from": "wide", "id": "gru"},
        {"type": "add", "from": ["gru", "lstm"]},  # 4 x 2 directions projected onto 8
        {"type": "layernorm"},
        {"type": "attention", "heads": 2, "causal": True, "id": "attended"},
        {"type": "dropout", "p": 0.1},
        {"type": "transformer_encoder", "layers": 1, "heads": 2, "feedforward": 16, "dropout": 0.1},
        {"type": "positional", "id": "encoded"},
        {"type": "concat", "from": ["encoded", "wide"]},
        {"type": "sequence_pool", "kind": "max", "id": "peak"},
        {"type": "sequence_pool", "kind": "last", "from": "lstm", "id": "last"},
        {"type": "concat", "from": ["peak", "last"]},
        {"type": "dense", "units": 1}]},
    "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.003},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0, "checkpoint_every_seconds": 0}}

TOKENS = {
    "name": "tokens", "dataset": {"name": "upload", "upload": "tokens", "preprocess": {"scale": "none"}, "seed": 0},
    "model": {"layers": [
        {"type": "embedding", "vocab": 30, "dim": 8},
        {"type": "gru", "units": 8},
        {"type": "dense", "units": 2}]},
    "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0, "checkpoint_every_seconds": 0}}


def token_arrays():
    """Sequences of 10 token ids; the class is whether token 7 appears in them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, (300, 10)).astype(np.float32)
    return x, (x == 7).any(axis=1).astype(np.int64)


def tokens_uploaded(name: str) -> Uploaded:
    return Uploaded("tokens", 1, "arrays", 300, 2, shape=(10,))


CASES = {"image graph": (IMAGE_GRAPH, None), "sequence graph": (SEQUENCE_GRAPH, None),
         "token ids": (TOKENS, token_arrays)}


@pytest.mark.parametrize("name", CASES)
def test_onnx_answers_as_torch_does_on_the_validation_rows(tmp_path, name):
    spec, arrays = CASES[name]
    arrays = arrays() if arrays else None
    parsed = parse_spec(spec, uploads=tokens_uploaded)
    blobs = []
    fit(parsed, checkpoint_sink=lambda blob, info: blobs.append(blob), arrays=arrays)
    state = build(parsed, device="cpu", resume=blobs[-1], arrays=arrays)
    done = export_onnx(state, tmp_path / "model.onnx", arrays)
    session = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    rows = raw_rows(state, "val", arrays)
    onnx_out = session.run(None, {"x": rows})[-1]  # probabilities, or the value
    state.model.eval()
    with torch.no_grad():
        out = state.model(state.data.val.features())
    torch_out = (torch.softmax(out, 1) if parsed.dataset.info().classes else out * state.data.y_std + state.data.y_mean)
    assert np.abs(onnx_out - torch_out.numpy()).max() < 1e-4


@pytest.mark.parametrize("name", CASES)
def test_a_graph_resumes_from_a_checkpoint_as_if_uninterrupted(name):
    spec, arrays = CASES[name]
    arrays = arrays() if arrays else None
    parsed = parse_spec(spec, uploads=tokens_uploaded)
    blobs = []
    full = fit(parsed, checkpoint_sink=lambda blob, info: blobs.append((blob, info)), arrays=arrays)
    at_one = next(blob for blob, info in blobs if info["epoch"] == 1)
    resumed = fit(parsed, resume=at_one, arrays=arrays)
    assert resumed.history == full.history and resumed.metrics == full.metrics


def test_token_ids_must_reach_an_embedding_unscaled():
    spec = copy.deepcopy(TOKENS)
    spec["dataset"]["preprocess"]["scale"] = "zscore"
    with pytest.raises(SpecError) as caught:
        parse_spec(spec, uploads=tokens_uploaded)
    [error] = caught.value.errors
    assert error.path == "dataset.preprocess.scale" and "set dataset.preprocess.scale: none" in error.message


def test_the_adding_problem_is_two_marked_values_and_their_sum():
    from trainq.models.datasets import raw

    x, y = raw(parse_spec(SEQUENCE_GRAPH).dataset)
    assert x.shape == (400, 12, 2) and y.shape == (400,)
    assert (x[:, :, 1].sum(axis=1) == 2).all() and (x[:, :6, 1].sum(axis=1) == 1).all()
    assert np.allclose((x[:, :, 0] * x[:, :, 1]).sum(axis=1), y)
    assert abs(float(np.var(y)) - 1 / 6) < 0.03  # what predicting the mean scores


STRIDED_POINTWISE = """
import torch
from trainq.models.layers import add
from trainq.models.spec import AddSpec

torch.set_num_threads(1)
torch.manual_seed(0)
block = add(AddSpec(type="add", **{"from": ["a", "b"]}), [(8, 6, 6), (6, 12, 12)]).to(memory_format=torch.channels_last)
for _ in range(50):
    x = torch.randn(32, 6, 12, 12, requires_grad=True).contiguous(memory_format=torch.channels_last)
    block(torch.zeros(32, 8, 6, 6), x).sum().backward()
print("trained")
"""


def test_a_strided_pointwise_projection_of_few_channels_trains_on_one_thread():
    """torch 2.13's CPU backward of a strided 1x1 convolution in channels-last on one thread, with fewer than 8
    input channels, corrupts the heap (a ResNet shortcut on grayscale images: the worker died, or numbers changed).
    trainq computes it as a subsampling and a 1x1 convolution: the same numbers, in its own process here."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STRIDED_POINTWISE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "trained", done.stderr[-2000:]
    from trainq.models.layers import SubsampledConv2d

    resnet = build_model(parse_spec(example("resnet8")), (3, 32, 32))
    assert sum(isinstance(m, SubsampledConv2d) for m in resnet.modules()) == 2  # its two projected shortcuts
    for padding in (0, 1):
        conv = torch.nn.Conv2d(6, 8, 1, stride=2, padding=padding)
        mine = SubsampledConv2d(6, 8, 1, stride=2, padding=padding)
        mine.load_state_dict(conv.state_dict())
        x = torch.randn(4, 6, 9, 9)
        assert mine(x).shape == conv(x).shape == (4, 8, 5 + padding, 5 + padding)
        assert torch.allclose(mine(x), conv(x), atol=1e-6)
