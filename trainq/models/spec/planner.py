"""The dry run: shapes, parameters, memory and FLOPs from the spec alone, and the checks that need the whole spec
(the output against the loss and data, the inference method against the model, streaming)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainq.models.spec.base import FieldError, Shape, ShapeError, SpecError
from trainq.models.spec.data import SHAPE_CLASSES, DatasetInfo
from trainq.models.spec.job import JobSpec
from trainq.models.spec.layers import BAYES_LAYERS, plugin_of
from trainq.models.spec.model import Node


CLASSIFICATION_METRICS = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "train_loss")
REGRESSION_METRICS = ("val_loss", "val_mse", "val_rmse", "val_mae", "val_r2", "train_loss")
BAYES_CLASSIFICATION_METRICS = ("val_nll", "val_ece", "val_brier", "train_kl")  # with an inference block
BAYES_REGRESSION_METRICS = ("val_nll", "val_coverage95", "val_coverage68", "val_width95", "val_crps", "train_kl")


@dataclass
class LayerPlan:
    index: int
    type: str
    output_shape: list[int]
    params: int
    id: str = ""  # its id, or type_index; a block's layers: the block's name where used, a dot, their own
    inputs: list[str] = field(default_factory=lambda: ["in"])  # the layers it reads (in: the model's input)
    path: str = ""  # where the spec writes it


@dataclass
class Plan:
    """What a dry run tells: shapes, parameters, memory, before anything is queued."""

    input_shape: list[int]
    output_shape: list[int]
    task: str  # classification | regression
    layers: list[LayerPlan] = field(default_factory=list)
    params: int = 0
    memory_bytes: int = 0
    flops_per_example: int = 0  # multiply-adds of one forward pass (a conv's weights count once per output pixel)
    warnings: list[dict[str, str]] = field(default_factory=list)  # valid, but likely not what the user wants
    members: int = 0  # an ensemble's networks, all counted in params, memory and flops (0: one network)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "task": self.task,
            "layers": [vars(layer) for layer in self.layers],
            "params": self.params,
            "memory_bytes": self.memory_bytes,
            "flops_per_example": self.flops_per_example,
            "warnings": self.warnings,
            "members": self.members,
        }


def train_rows(spec: JobSpec) -> int:
    ds = spec.dataset
    if ds.info().fixed_size == 4:
        return 4
    return max(1, ds.size() - round(ds.size() * ds.val_fraction) - round(ds.size() * ds.test_fraction))


def batch_size(spec: JobSpec) -> int:
    """The batch size in rows: "full" and sizes above the training split mean the whole split."""
    rows = train_rows(spec)
    size = spec.training.batch_size
    return rows if size == "full" else min(size, rows)


def input_shape(spec: JobSpec) -> Shape:
    """One example's shape as the spec tells it. A one-hot column's width is known only once the data is loaded,
    so the dry run counts it as one column; the engine builds the model from the loaded data's shape."""
    return spec.dataset.info().shape


def plan(spec: JobSpec) -> Plan:
    """Infer shapes, count parameters and estimate memory; raise SpecError naming the field at fault."""
    info = spec.dataset.info()
    shape = input_shape(spec)
    task = "regression" if info.classes is None else "classification"
    result = Plan(input_shape=list(shape), output_shape=[], task=task)
    activations = 0
    if info.embeddings:  # an uploaded table's embedded categories, ahead of the first layer
        params = sum(rows * dim for _, rows, dim in info.embeddings)
        result.layers.append(LayerPlan(-1, "embedding", list(shape), params, "columns", ["in"], "dataset.columns"))
        result.params += params
    graph = spec.model.graph()
    shapes: dict[int, Shape] = {-1: shape}
    for node in graph.nodes:
        inputs = [shapes[i] for i in node.inputs]
        out, params = _plan_node(spec, node, inputs)
        shapes[node.index] = out
        result.layers.append(LayerPlan(node.index, node.layer.type, list(out), params, node.name,
                                       graph.input_names(node), node.path))
        result.params += params
        result.flops_per_example += _flops(node.layer, inputs[0], out, params)
        activations += math.prod(out)
    shape = shapes[graph.nodes[-1].index]
    result.output_shape = list(shape)
    copies = ensemble_members(spec)
    result.members = copies
    if copies:  # an ensemble stacks `members` copies of the network: each counts, in parameters and work
        for layer_plan in result.layers:
            layer_plan.params *= copies
        result.params *= copies
        result.flops_per_example *= copies
        activations *= copies

    errors = _check_output(spec, shape, info) + _check_fields(spec, task, info)
    if errors:
        raise SpecError(errors)

    optimizer_copies = {"adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1, "momentum": 1, "nesterov": 1,
                        "lbfgs": 2 * getattr(spec.optimizer, "history_size", 0)}.get(spec.optimizer.type, 0)
    if spec.optimizer.type == "sgd" and spec.optimizer.momentum:
        optimizer_copies = 1
    fp32 = 4
    features = math.prod(info.shape)
    result.memory_bytes = fp32 * (
        result.params * (2 + optimizer_copies + 1)  # weights, gradients, optimizer state, best-weights copy
        + 2 * -(-batch_size(spec) // spec.training.accumulate_steps) * (activations + features)  # activations kept for backward, and their gradients
    ) + (0 if spec.training.data_placement == "stream"  # a shard at a time, within the worker's data budget
         else spec.dataset.size() * spec.dataset.stored_bytes())  # the whole dataset lives on the device
    if spec.optimizer.type == "lbfgs" and batch_size(spec) < train_rows(spec):
        result.warnings.append({"path": "training.batch_size", "message": (
            f"L-BFGS on mini-batches of {batch_size(spec)} of {train_rows(spec)} rows: its curvature estimate sees a "
            "different batch at every step and the loss often ends in NaN; use batch_size: full")})
    return result


def _plan_node(spec: JobSpec, node: Node, inputs: list[Shape]) -> tuple[Shape, int]:
    """A layer's output shape and parameter count from its inputs' shapes; SpecError at its path if it cannot take
    them."""
    layer = node.layer
    try:
        if getattr(layer, "merges", False):
            return tuple(layer.merge_shape(inputs)), layer.merge_params(inputs)
        if plugin_of(layer.type) is None:
            return tuple(layer.output_shape(inputs[0])), layer.param_count(inputs[0])
        return _plan_plugin(layer, inputs[0])
    except ShapeError as exc:
        message = str(exc) + node.where()
        if spec.dataset.name == "digits" and not spec.dataset.as_images and "image (" in message:
            message += "; digits comes as 1x8x8 images too: set dataset.as_images: true"
        raise SpecError([FieldError(node.path, message)]) from None


def _plan_plugin(layer, shape: Shape) -> tuple[Shape, int]:
    """An installed layer's own shape rule, held to what the planner needs: a shape of positive ints, a count."""
    plugin = plugin_of(layer.type)
    try:
        out, params = tuple(layer.output_shape(shape)), layer.param_count(shape)
    except ShapeError:
        raise
    except Exception as exc:  # the package's code: a bug there is its package's, named as such
        raise ShapeError(f"the installed layer {layer.type} ({plugin.package} {plugin.version}) failed to plan an "
                         f"input of {list(shape)}: {type(exc).__name__}: {exc}") from None
    if not (1 <= len(out) <= 3 and all(isinstance(d, int) and d > 0 for d in out)) or not (
            isinstance(params, int) and params >= 0):
        raise ShapeError(f"the installed layer {layer.type} ({plugin.package} {plugin.version}) planned an output "
                         f"of {list(out)} and {params!r} parameters: not a shape and a count")
    return out, params


def _flops(layer, shape: Shape, out: Shape, params: int) -> int:
    """Multiply-adds of one example's forward pass through a layer, roughly: its weights once per output pixel or
    step they apply at, plus attention's step-by-step products."""
    if layer.type in ("embedding", "positional", "concat"):
        return 0
    if layer.type in ("attention", "transformer_encoder"):
        steps, dim = shape[0], out[-1]
        return params * steps + 2 * steps * steps * dim * getattr(layer, "layers", 1)
    if layer.type in ("lstm", "gru"):
        return params * shape[0]
    if len(out) == 3:
        return params * math.prod(out[1:])
    return params * (out[0] if len(out) == 2 else 1)


def layer_packages(spec: JobSpec) -> dict[str, dict[str, str]] | None:
    """The installed layer types a spec uses, with the package and version each was planned with (None: none)."""
    used = {}
    for node in spec.model.nodes:
        plugin = plugin_of(node.layer.type)
        if plugin is not None:
            used[plugin.name] = {"package": plugin.package, "version": plugin.version}
    return used or None


def _check_output(spec: JobSpec, shape: Shape, info: DatasetInfo) -> list[FieldError]:
    last_path = spec.model.output_path()
    last = spec.model.output_layer
    loss = spec.loss.type
    if len(shape) != 1:
        return [FieldError(last_path, f"the model must end in a flat output, got shape {list(shape)}")]
    width = shape[0]
    name = spec.dataset.name
    if loss == "mdn_nll":
        if info.classes is not None:
            return [FieldError("loss.type", f"mdn_nll is for regression; {name} is classification")]
        if last.type != "mdn":
            return [FieldError(last_path, "mdn_nll needs the model to end in an mdn layer")]
        if last.outputs != 1:
            return [FieldError(f"{last_path}.outputs", f"{name} has 1 target, the mdn layer has {last.outputs}")]
        return []
    if last.type == "mdn":
        return [FieldError("loss.type", "an mdn head needs the mdn_nll loss")]
    if loss == "gaussian_nll":
        if info.classes is not None:
            return [FieldError("loss.type", f"gaussian_nll is for regression; {name} is classification")]
        if width != 2:
            return [FieldError(last_path, f"gaussian_nll needs 2 output units (the mean and the noise), got {width}")]
        return []
    if info.classes is None:
        if loss not in ("mse", "mae", "huber"):
            return [FieldError("loss.type", f"{loss} needs a classification dataset; {name} is regression")]
        if width != 1:
            return [FieldError(last_path, f"regression on {name} needs 1 output unit, got {width}")]
        return []
    k = info.classes
    if loss in ("bce", "perceptron"):
        if k != 2:
            return [FieldError("loss.type", f"{loss} is for two classes; {name} has {k}")]
        if width != 1:
            return [FieldError(last_path, f"{loss} needs 1 output unit, got {width}")]
    elif loss in ("cross_entropy", "nll", "hinge") and width != k:
        return [FieldError(last_path, f"{loss} on {name} needs {k} output units, got {width}")]
    elif loss in ("mse", "mae", "huber") and width not in (1, k):
        return [FieldError(last_path, f"{loss} on {k} classes needs 1 unit or {k} (one-hot), got {width}")]
    if loss == "nll" and not (last.type == "activation" and last.fn == "softmax"):
        return [FieldError(last_path, "nll takes probabilities: end the model with {type: activation, fn: softmax}")]
    weights = getattr(spec.loss, "class_weights", None)
    if weights is not None and len(weights) != k:
        return [FieldError("loss.class_weights", f"{name} has {k} classes, got {len(weights)} weights")]
    return []


def _check_fields(spec: JobSpec, task: str, info: DatasetInfo) -> list[FieldError]:
    errors = []
    ds = spec.dataset
    if info.fixed_size is None or info.fixed_size > 4:
        if ds.val_fraction + ds.test_fraction > 0.9:
            errors.append(FieldError("dataset.val_fraction", "val_fraction + test_fraction must leave 10% for training"))
    if ds.name == "shapes" and ds.classes > len(SHAPE_CLASSES):
        errors.append(FieldError("dataset.classes", f"shapes has at most {len(SHAPE_CLASSES)} classes"))
    if ds.preprocess.one_hot and ds.table_kind() == "table":
        errors.append(FieldError("dataset.preprocess.one_hot", "an uploaded table's columns are coded by name: "
                                                               "dataset.columns: {plan: category}"))
    for i, column in enumerate(ds.preprocess.one_hot if ds.table_kind() != "table" else []):
        if len(info.shape) != 1 or column >= info.shape[0]:
            errors.append(FieldError(f"dataset.preprocess.one_hot[{i}]",
                                     f"no column {column} in {ds.name} ({info.shape[0]} columns)"
                                     if len(info.shape) == 1 else "one-hot codes are for tabular data"))
    reads_ids = [node for node in spec.model.nodes if node.layer.type == "embedding" and node.inputs == (-1,)]
    if reads_ids and ds.preprocess.scale != "none":
        errors.append(FieldError("dataset.preprocess.scale", f"{reads_ids[0].path} embeds token ids, which must reach "
                                                             "it as they are: set dataset.preprocess.scale: none"))
    if not info.is_image:
        for i, _ in enumerate(spec.augmentation):
            errors.append(FieldError(f"augmentation[{i}]", f"augmentation needs image data; {ds.name} is tabular"))
        if spec.test_time_augmentation is not None:
            errors.append(FieldError("test_time_augmentation", f"needs image data; {ds.name} is tabular"))
    errors += _check_inference(spec, task) + _check_stream(spec)
    stopping = spec.training.early_stopping
    if stopping is not None:
        allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
        if spec.inference is not None:
            allowed = allowed + (BAYES_CLASSIFICATION_METRICS if task == "classification" else BAYES_REGRESSION_METRICS)
        if stopping.monitor not in allowed:
            errors.append(FieldError("training.early_stopping.monitor",
                                     f"unknown metric {stopping.monitor!r}; one of {', '.join(allowed)}"))
        if ds.val_fraction == 0 and stopping.monitor.startswith("val_") and (info.fixed_size or 5) > 4:
            errors.append(FieldError("training.early_stopping.monitor", "needs a validation split (val_fraction > 0)"))
    return errors


def _check_stream(spec: JobSpec) -> list[FieldError]:
    """What a streamed table cannot do: it trains in one process, on a point estimate, a shard at a time."""
    ds, t = spec.dataset, spec.training
    errors = []
    if ds.split_column is not None:
        names = [c["name"] for c in ds.uploaded.profile["columns"]] if ds.table_kind() == "table" else []
        if ds.split_column not in names:
            errors.append(FieldError("dataset.split_column", f"no column {ds.split_column!r} in the table"))
        elif t.data_placement != "stream":
            errors.append(FieldError("dataset.split_column", "a split column splits a streamed table: set "
                                                             "training.data_placement: stream"))
    if t.data_placement != "stream":
        return errors
    path = "training.data_placement"
    if ds.table_kind() != "table":
        errors.append(FieldError(path, "stream reads an uploaded table from shards; other data lives in memory "
                                       "(device or host)"))
    if spec.resources.gpus > 1:
        errors.append(FieldError("resources.gpus", "a streamed table trains on one device"))
    if spec.inference is not None:
        errors.append(FieldError("inference", "a streamed table trains a point estimate; remove the inference block"))
    if t.batch_size == "full" or spec.optimizer.type == "lbfgs":
        errors.append(FieldError("training.batch_size", "a streamed table trains in mini-batches (no full batch, no "
                                                        "lbfgs)"))
    return errors


def _check_inference(spec: JobSpec, task: str) -> list[FieldError]:
    """What each method needs of the model, and what it cannot be combined with."""
    errors = []
    inference = spec.inference
    bayes = [node.path for node in spec.model.nodes if node.layer.type in BAYES_LAYERS]
    if inference is None or inference.method != "variational":
        errors += [FieldError(f"{path}.type", "a Bayesian layer trains only with inference.method: "
                                              "variational (add an inference block)") for path in bayes]
    if inference is None:
        if spec.loss.type == "gaussian_nll":
            errors.append(FieldError("loss.type", "gaussian_nll learns the noise of a Bayesian regression: add "
                                                  "inference: {method: ensemble, noise: learned} (or mc_dropout, "
                                                  "variational); a point estimate with a spread: an mdn head with "
                                                  "components: 1"))
        return errors
    if inference.method == "variational":
        if not bayes:
            errors.append(FieldError("inference.method", "variational needs a Bayesian layer: dense_bayes or "
                                                         "conv2d_bayes in model.layers"))
        if spec.optimizer.type == "lbfgs":
            errors.append(FieldError("optimizer.type", "lbfgs needs a deterministic loss; a variational loss is "
                                                       "sampled: use adam or sgd"))
    if inference.method == "mc_dropout" and not any(node.layer.type == "dropout" and node.layer.p > 0
                                                    for node in spec.model.nodes):
        errors.append(FieldError("inference.method", "mc_dropout samples the dropout layers: add a "
                                                     "{type: dropout, p: 0.1} layer (p > 0)"))
    if spec.model.output_layer.type == "mdn":
        errors.append(FieldError("inference", "a mixture density head already gives a predictive distribution; "
                                              "remove the inference block or the mdn layer"))
    if task == "classification" and spec.loss.type not in ("cross_entropy", "bce", "nll"):
        errors.append(FieldError("loss.type", f"{spec.loss.type} gives no class probabilities to average over "
                                              "samples: use cross_entropy (or bce, nll)"))
    if spec.test_time_augmentation is not None:
        errors.append(FieldError("test_time_augmentation", "cannot be combined with an inference block"))
    if inference.method == "ensemble":
        if spec.optimizer.type == "lbfgs":
            errors.append(FieldError("optimizer.type", "an ensemble's members train as one stacked model with an "
                                                       "element-wise optimizer; lbfgs couples them: use adam or sgd"))
        limit = stacking_limit(spec)
        if limit is not None:
            errors.append(FieldError(limit[0], f"{limit[1]}; an ensemble's members train stacked as one model, "
                                               "so remove it or use method mc_dropout"))
    if inference.noise == "learned" and spec.loss.type != "gaussian_nll":
        errors.append(FieldError("inference.noise", "learned noise needs loss.type: gaussian_nll and 2 output units "
                                                    "(the mean and the noise)"))
    if inference.noise != "learned" and spec.loss.type == "gaussian_nll":
        errors.append(FieldError("inference.noise", "gaussian_nll learns the noise: set noise: learned"))
    if inference.noise == "fixed" and inference.noise_sigma is None:
        errors.append(FieldError("inference.noise_sigma", "noise: fixed needs noise_sigma, in the target's units"))
    return errors


def ensemble_members(spec: JobSpec) -> int:
    """How many networks the run trains: an ensemble's members, else 0 (one network, not stacked)."""
    inference = spec.inference
    return inference.members if inference is not None and inference.method == "ensemble" else 0


STACKED_SCHEDULES = ("none", "step", "exponential", "cosine", "warmup")  # closed-form in the epoch alone
# The layers that several members (a pack's trials, an ensemble's networks) compute stacked in one module
STACKED_LAYERS = ("dense", "activation", "dropout", "noise", "conv2d", "depthwise_conv2d", "separable_conv2d", "pool",
                  "global_avg_pool", "pad", "batchnorm", "layernorm", "flatten", "mdn", "add", "concat")


def stacking_limit(spec: JobSpec) -> tuple[str, str] | None:
    """(field path, why) when this spec's network cannot train as one of several members stacked in one module (a
    pack of trials, the members of an ensemble); None when it can."""
    t = spec.training
    if t.data_placement == "stream":
        return "training.data_placement", "streamed data is read in one order per run, not stacked"
    embedded = [name for name, c in spec.dataset.columns.items() if c.encoding == "embedding" and c.type != "number"]
    if embedded and spec.dataset.name == "upload":
        return f"dataset.columns.{embedded[0]}", "embedded categories are not stacked"
    if spec.augmentation:
        return "augmentation", "image augmentation draws from one generator for the whole batch and is not stacked"
    if spec.schedule.type not in STACKED_SCHEDULES:
        return "schedule.type", f"{spec.schedule.type} is not stacked (stacked: {', '.join(STACKED_SCHEDULES)})"
    if t.accumulate_steps > 1:
        return "training.accumulate_steps", "gradient accumulation is not stacked"
    if t.compile:
        return "training.compile", "compiled runs are not stacked"
    if spec.resources.gpus > 1:
        return "resources.gpus", "data-parallel runs are not stacked"
    if len(input_shape(spec)) == 2:
        return "dataset", "sequences (steps x features) are not stacked yet; images and feature vectors are"
    graph = spec.model.graph()
    for node in graph.nodes:
        layer = node.layer
        if layer.type in BAYES_LAYERS:
            return f"{node.path}.type", "Bayesian layers are not stacked"
        if layer.type == "pool" and layer.kind == "stochastic":
            return f"{node.path}.kind", "stochastic pooling is not stacked"
        if layer.type not in STACKED_LAYERS:
            installed = plugin_of(layer.type)
            what = f"the installed layer {layer.type} ({installed.package})" if installed else layer.type
            return f"{node.path}.type", f"{what} is not stacked (stacked: {', '.join(STACKED_LAYERS)})"
    return None

