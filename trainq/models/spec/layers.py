"""Layers: each layer type knows its output shape and parameter count from its input's shape (plain arithmetic),
and the weight initializations.

Shapes are one example's: features (F,), a sequence (T, F) of T steps, or an image (C, H, W). On a sequence, dense,
activation, dropout, noise and layernorm act on the last axis, step by step. Merge layers (add, concat) take the
shapes of several layers (`from: [a, b]`) and are planned by the model's graph (trainq.models.spec.model). Layer
types that installed packages add (trainq.extensions) join the union here, after the built-in ones.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, model_validator

from trainq.extensions import installed_layers, type_name
from trainq.models.spec.base import LayerFields, Shape, ShapeError, Spec

KINDS = {1: "features (F,)", 2: "a sequence (steps, features)", 3: "an image (channels, height, width)"}
HINTS = {1: "; add a flatten (or sequence_pool, global_avg_pool) layer first", 2: "", 3: ""}


def _needs(shape: Shape, dims: int | tuple[int, ...], what: str) -> None:
    allowed = (dims,) if isinstance(dims, int) else dims
    if len(shape) not in allowed:
        kind = " or ".join(KINDS[d] for d in allowed)
        raise ShapeError(f"{what} needs {kind}, got shape {list(shape)}{HINTS[allowed[0]]}")


class SameShape:
    """A layer that keeps its input's shape and has no parameters."""

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0


class DenseSpec(LayerFields):
    """A fully connected layer: `units` outputs from the features (per step on a sequence)."""

    type: Literal["dense"]  # on a sequence, the same dense layer at every step
    units: int = Field(gt=0, le=65_536)
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, (1, 2), "dense")
        return (*shape[:-1], self.units)

    def param_count(self, shape: Shape) -> int:
        return shape[-1] * self.units + (self.units if self.bias else 0)


ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "softmax")


class ActivationSpec(SameShape, LayerFields):
    """An elementwise nonlinearity `fn` (relu, gelu, tanh, sigmoid, ...); the shape is unchanged."""

    type: Literal["activation"]
    fn: Literal[ACTIVATIONS]  # type: ignore[valid-type]  # softmax: over features, a step's features, or channels
    slope: float = Field(1.0, gt=0, le=100)  # sigmoid(slope * s)
    negative_slope: float = Field(0.01, ge=0, le=1)  # leaky_relu
    alpha: float = Field(1.0, gt=0, le=100)  # elu

    def unused(self) -> set[str]:
        """The parameters of the other functions: relu has no slope, no alpha."""
        return super().unused() | {name for name, fn in (("slope", "sigmoid"), ("negative_slope", "leaky_relu"),
                                                         ("alpha", "elu")) if self.fn != fn}


class DropoutSpec(SameShape, LayerFields):
    """Zeroes each value with probability `p` while training (and scales the rest); nothing at inference."""

    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1)


class NoiseSpec(SameShape, LayerFields):
    """Adds Gaussian noise of `std` while training: a regularizer; nothing at inference."""

    type: Literal["noise"]  # Gaussian noise added to the activations in training only
    std: float = Field(0.1, ge=0, le=100)


Padding = Annotated[int, Field(ge=0, le=64)] | Literal["same", "valid"]  # same: (kernel - 1) / 2 each side


class Windowed:
    """A layer that slides a kernel over an image: its padding and output size."""

    kernel: int
    stride: int
    padding: Any

    def pad(self) -> int:
        if self.padding == "same":
            if self.kernel % 2 == 0:
                raise ShapeError("padding 'same' needs an odd kernel")
            return (self.kernel - 1) // 2
        return 0 if self.padding == "valid" else self.padding

    def window(self, shape: Shape, channels: int) -> Shape:
        _needs(shape, 3, self.type)
        p = self.pad()
        h, w = ((size + 2 * p - self.kernel) // self.stride + 1 for size in shape[1:])
        if h < 1 or w < 1:
            raise ShapeError(f"{self.type} with kernel {self.kernel} does not fit an input of {list(shape)}")
        return (channels, h, w)


class Conv2dSpec(Windowed, LayerFields):
    """A 2-D convolution of images: `out_channels` filters of `kernel` x `kernel` (`padding`: pixels, same or valid)."""

    type: Literal["conv2d"]
    out_channels: int = Field(gt=0, le=4096)
    kernel: int = Field(3, gt=0, le=31)
    stride: int = Field(1, gt=0, le=16)
    padding: Padding = 0
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        return self.window(shape, self.out_channels)

    def param_count(self, shape: Shape) -> int:
        return self.out_channels * shape[0] * self.kernel ** 2 + (self.out_channels if self.bias else 0)


class DepthwiseConv2dSpec(Windowed, LayerFields):
    """A convolution of each channel alone (`multiplier` filters per channel): MobileNet's first half."""

    type: Literal["depthwise_conv2d"]  # one kernel per input channel (times multiplier), channels never mixed
    multiplier: int = Field(1, gt=0, le=64)
    kernel: int = Field(3, gt=0, le=31)
    stride: int = Field(1, gt=0, le=16)
    padding: Padding = "same"
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        return self.window(shape, shape[0] * self.multiplier)

    def param_count(self, shape: Shape) -> int:
        out = shape[0] * self.multiplier
        return out * self.kernel ** 2 + (out if self.bias else 0)


class SeparableConv2dSpec(Windowed, LayerFields):
    """A depthwise convolution then a 1x1 convolution to `out_channels`: far fewer parameters."""

    type: Literal["separable_conv2d"]  # a depthwise convolution (no bias), then a 1x1 one that mixes the channels
    out_channels: int = Field(gt=0, le=4096)
    kernel: int = Field(3, gt=0, le=31)
    stride: int = Field(1, gt=0, le=16)
    padding: Padding = "same"
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        return self.window(shape, self.out_channels)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.kernel ** 2 + shape[0] * self.out_channels + (self.out_channels if self.bias else 0)


class BayesFields(Spec):
    """A mean-field Gaussian posterior per weight, N(mu, softplus(rho)^2), against the prior N(0, prior_sigma^2)."""

    prior_sigma: float = Field(1.0, gt=0, le=100)
    posterior_rho_init: float = Field(-5.0, ge=-20, le=5)  # softplus(-5) = 0.0067: start near the point estimate


class DenseBayesSpec(BayesFields, DenseSpec):
    """A dense layer with a Gaussian posterior over its weights (Bayes by backprop): predictions with spread."""

    type: Literal["dense_bayes"]  # local reparameterization trick

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 1, "dense_bayes")
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)  # a mean and a rho per weight


class Conv2dBayesSpec(BayesFields, Conv2dSpec):
    """A 2-D convolution with a Gaussian posterior over its weights (Bayes by backprop)."""

    type: Literal["conv2d_bayes"]  # Flipout

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)


class PoolSpec(LayerFields):
    """Max or average pooling of images over `size` x `size` windows."""

    type: Literal["pool"]
    kind: Literal["max", "avg", "stochastic"] = "max"  # stochastic: sample a_i with p_i = a_i / sum(a) in training
    size: int = Field(2, gt=0, le=32)
    stride: int | None = Field(None, gt=0, le=32)  # default: size

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "pool")
        stride = self.stride or self.size
        h, w = ((size - self.size) // stride + 1 for size in shape[1:])
        if h < 1 or w < 1:
            raise ShapeError(f"pool of size {self.size} does not fit an input of {list(shape)}")
        return (shape[0], h, w)

    def param_count(self, shape: Shape) -> int:
        return 0


class GlobalAvgPoolSpec(LayerFields):
    """The mean of each channel over the whole image: an image becomes a vector of its channels."""

    type: Literal["global_avg_pool"]  # each channel's mean over the image: (C, H, W) -> (C,)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "global_avg_pool")
        return (shape[0],)

    def param_count(self, shape: Shape) -> int:
        return 0


class PadSpec(LayerFields):
    """Zero padding of `size` pixels around an image."""

    type: Literal["pad"]  # zeros around an image: a 32x32x3 image padded by 2 is 36x36x3
    size: int = Field(1, ge=0, le=64)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "pad")
        return (shape[0], shape[1] + 2 * self.size, shape[2] + 2 * self.size)

    def param_count(self, shape: Shape) -> int:
        return 0


class BatchnormSpec(LayerFields):
    """Batch normalization: per channel for images, per feature otherwise."""

    type: Literal["batchnorm"]  # over features (1d) or channels (2d), chosen by the input's shape
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0, le=1)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (1, 3):
            hint = "; on a sequence, use layernorm" if len(shape) == 2 else ""
            raise ShapeError(f"batchnorm needs features or an image, got shape {list(shape)}{hint}")
        return shape

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[0]  # gamma and beta per feature or channel


class LayernormSpec(LayerFields):
    """Layer normalization over the features (per step on a sequence)."""

    type: Literal["layernorm"]  # each example's (or step's) features to mean 0 and variance 1, then a learned scale
    eps: float = Field(1e-5, gt=0, le=1)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, (1, 2), "layernorm")
        return shape

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[-1]


class FlattenSpec(LayerFields):
    """An image or a sequence as one vector."""

    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def param_count(self, shape: Shape) -> int:
        return 0


class MdnSpec(LayerFields):
    """A mixture density head: `components` Gaussians over `outputs` values (for loss: mdn_nll)."""

    type: Literal["mdn"]  # mixture density head: K mixing logits, K x D means, K x D log standard deviations
    components: int = Field(5, gt=0, le=100)
    outputs: int = Field(1, gt=0, le=100)

    @property
    def width(self) -> int:
        return self.components * (1 + 2 * self.outputs)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 1, "mdn")
        return (self.width,)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.width + self.width


# ---------------------------------------------------------------------------------------------------------------------
# Sequences: token ids to vectors, recurrent layers, attention, positions, pooling over steps
# ---------------------------------------------------------------------------------------------------------------------


class EmbeddingSpec(LayerFields):
    """Token ids (integers below `vocab`, one per step) as vectors of `dim`: the input of a text or id model."""

    type: Literal["embedding"]  # token ids (integers in [0, vocab)) -> vectors: (T,) or (T, 1) -> (T, dim)
    vocab: int = Field(gt=0, le=1_000_000)
    dim: int = Field(gt=0, le=8192)

    def output_shape(self, shape: Shape) -> Shape:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ShapeError(f"embedding needs a sequence of token ids, (steps,) or (steps, 1), got shape "
                             f"{list(shape)}")
        return (shape[0], self.dim)

    def param_count(self, shape: Shape) -> int:
        return self.vocab * self.dim


class RecurrentFields(LayerFields):
    units: int = Field(gt=0, le=8192)  # the hidden state's width (per direction)
    layers: int = Field(1, gt=0, le=16)  # stacked, each reading the one below's sequence
    bidirectional: bool = False  # a second pass from the last step back: outputs are 2 x units wide
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers, in training
    # last: the final hidden state (both directions' for a bidirectional layer), (2 x) units; sequence: every step's
    return_: Literal["last", "sequence"] = Field("last", alias="return")
    gates: ClassVar[int] = 0  # weight blocks per layer: 4 for an LSTM (input, forget, cell, output), 3 for a GRU

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 2, self.type)
        width = self.units * (2 if self.bidirectional else 1)
        return (shape[0], width) if self.return_ == "sequence" else (width,)

    def param_count(self, shape: Shape) -> int:
        directions = 2 if self.bidirectional else 1
        total, width = 0, shape[-1]
        for _ in range(self.layers):  # torch keeps two bias vectors per gate block (input and hidden)
            total += directions * self.gates * (self.units * width + self.units * self.units + 2 * self.units)
            width = self.units * directions
        return total


class LstmSpec(RecurrentFields):
    """A long short-term memory network over a sequence: `units` per direction, the last step or every step."""

    type: Literal["lstm"]
    gates: ClassVar[int] = 4


class GruSpec(RecurrentFields):
    """A gated recurrent unit network over a sequence: `units` per direction, the last step or every step."""

    type: Literal["gru"]
    gates: ClassVar[int] = 3


def _heads_divide(dim: int, heads: int) -> None:
    if dim % heads:
        raise ShapeError(f"dim {dim} must be a multiple of heads ({heads}): each head takes dim / heads features")


class AttentionSpec(LayerFields):
    """Multi-head self-attention over a sequence's steps (`causal`: each step sees only earlier ones)."""

    type: Literal["attention"]  # multi-head self-attention over the steps: (T, F) -> (T, dim)
    heads: int = Field(1, gt=0, le=64)
    dim: int | None = Field(None, gt=0, le=8192)  # default: the input's features
    causal: bool = False  # a step attends only to itself and earlier steps
    dropout: float = Field(0.0, ge=0, lt=1)  # on the attention weights, in training

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 2, "attention")
        dim = self.dim or shape[1]
        _heads_divide(dim, self.heads)
        return (shape[0], dim)

    def param_count(self, shape: Shape) -> int:
        dim = self.dim or shape[1]
        return 3 * (shape[1] * dim + dim) + dim * dim + dim  # query, key and value projections; the output one


class TransformerEncoderSpec(LayerFields):
    """`layers` transformer encoder blocks (pre-norm attention and feed-forward, each with a residual)."""

    type: Literal["transformer_encoder"]  # pre-norm encoder layers: attention, then a feed-forward, each residual
    layers: int = Field(2, gt=0, le=48)
    heads: int = Field(4, gt=0, le=64)
    dim: int | None = Field(None, gt=0, le=8192)  # must equal the input's features (default: it)
    feedforward: int | None = Field(None, gt=0, le=65_536)  # the feed-forward's width (default: 4 x dim)
    dropout: float = Field(0.1, ge=0, lt=1)
    causal: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 2, "transformer_encoder")
        if self.dim is not None and self.dim != shape[1]:
            raise ShapeError(f"transformer_encoder with dim {self.dim} needs {self.dim} features per step, got "
                             f"{shape[1]}; put a {{type: dense, units: {self.dim}}} layer before it")
        _heads_divide(shape[1], self.heads)
        return shape

    def param_count(self, shape: Shape) -> int:
        d = shape[1]
        ff = self.feedforward or 4 * d
        per_layer = 2 * 2 * d + (4 * d * d + 4 * d) + (d * ff + ff + ff * d + d)  # 2 layernorms, attention, MLP
        return self.layers * per_layer + 2 * d  # and the final layernorm


class PositionalSpec(LayerFields):
    """Adds each step's position to a sequence: `learned` vectors or fixed `sinusoidal` ones."""

    type: Literal["positional"]  # adds each step's position to its features: learned vectors, or sines and cosines
    kind: Literal["learned", "sinusoidal"] = "sinusoidal"

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 2, "positional")
        return shape

    def param_count(self, shape: Shape) -> int:
        return shape[0] * shape[1] if self.kind == "learned" else 0


class SequencePoolSpec(LayerFields):
    """A sequence as one vector: the mean, the max or the last step."""

    type: Literal["sequence_pool"]  # a sequence to one vector: the steps' mean or maximum, or the last step
    kind: Literal["mean", "max", "last"] = "mean"

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 2, "sequence_pool")
        return (shape[1],)

    def param_count(self, shape: Shape) -> int:
        return 0


# ---------------------------------------------------------------------------------------------------------------------
# Merges: several earlier layers' outputs into one
# ---------------------------------------------------------------------------------------------------------------------


class AddSpec(LayerFields):
    """The sum of the outputs named in `from` (a skip connection: `from: [conv2, in]`). Each input whose shape differs
    from the first's is projected to it when project is auto: a 1x1 convolution (strided to the first's size) and a
    batchnorm for images, a dense layer for features and steps."""

    type: Literal["add"]
    project: Literal["auto", "none"] = "auto"
    merges: ClassVar[bool] = True

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        target = shapes[0]
        for i, shape in enumerate(shapes[1:], start=1):
            if shape != target:
                if self.project == "none":
                    raise ShapeError(f"add needs equal shapes: input {i} is {list(shape)}, input 0 is "
                                     f"{list(target)}; set project: auto to project it")
                projection_of(shape, target, i)
        return target

    def merge_params(self, shapes: list[Shape]) -> int:
        target = shapes[0]
        return sum(projection_params(shape, target) for shape in shapes[1:] if shape != target)


def projection_of(shape: Shape, target: Shape, i: int) -> int:
    """The stride of the 1x1 convolution that takes an image of `shape` to `target` (1 for features and steps);
    raise ShapeError where no projection can."""
    mismatch = f"add cannot project input {i} of shape {list(shape)} onto input 0's {list(target)}"
    if len(shape) != len(target):
        raise ShapeError(mismatch)
    if len(shape) == 2 and shape[0] != target[0]:
        raise ShapeError(f"{mismatch}: the steps differ")
    if len(shape) == 3:
        stride = shape[1] // target[1] if target[1] else 0
        if stride < 1 or shape[1] != stride * target[1] or shape[2] != stride * target[2]:
            raise ShapeError(f"{mismatch}: {shape[1]}x{shape[2]} is not a whole multiple of {target[1]}x{target[2]}")
        return stride
    return 1


def projection_params(shape: Shape, target: Shape) -> int:
    if len(shape) == 3:
        return shape[0] * target[0] + 2 * target[0]  # a 1x1 convolution without bias, and its batchnorm
    return shape[-1] * target[-1] + target[-1]


class ConcatSpec(LayerFields):
    """The outputs named in `from` side by side: channels for images, features otherwise (steps must agree)."""

    type: Literal["concat"]
    merges: ClassVar[bool] = True

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        first = shapes[0]
        for i, shape in enumerate(shapes[1:], start=1):
            if len(shape) != len(first):
                raise ShapeError(f"concat needs inputs of one kind: input {i} is {list(shape)}, input 0 is "
                                 f"{list(first)}")
            if len(shape) == 3 and shape[1:] != first[1:]:
                raise ShapeError(f"concat joins images of one size: input {i} is {shape[1]}x{shape[2]}, input 0 is "
                                 f"{first[1]}x{first[2]}")
            if len(shape) == 2 and shape[0] != first[0]:
                raise ShapeError(f"concat joins sequences of as many steps: input {i} has {shape[0]}, input 0 "
                                 f"{first[0]}")
        axis = 0 if len(first) in (1, 3) else 1
        return tuple(sum(s[axis] for s in shapes) if d == axis else n for d, n in enumerate(first))

    def merge_params(self, shapes: list[Shape]) -> int:
        return 0


MERGES = ("add", "concat")
BUILTIN_LAYERS = (DenseSpec, ActivationSpec, DropoutSpec, NoiseSpec, Conv2dSpec, DepthwiseConv2dSpec,
                  SeparableConv2dSpec, PoolSpec, GlobalAvgPoolSpec, PadSpec, BatchnormSpec, LayernormSpec, FlattenSpec,
                  MdnSpec, DenseBayesSpec, Conv2dBayesSpec, EmbeddingSpec, LstmSpec, GruSpec, AttentionSpec,
                  TransformerEncoderSpec, PositionalSpec, SequencePoolSpec, AddSpec, ConcatSpec)
BUILTIN_NAMES = frozenset(type_name(cls) for cls in BUILTIN_LAYERS)
PLUGINS, REFUSED_PLUGINS = installed_layers(BUILTIN_NAMES)  # the installed packages' layer types, read once
LAYER_CLASSES = BUILTIN_LAYERS + tuple(p.layer.spec for p in PLUGINS)
LayerSpec = Annotated[Union[LAYER_CLASSES], Field(discriminator="type")]  # type: ignore[valid-type]
BAYES_LAYERS = ("dense_bayes", "conv2d_bayes")
SEQUENCE_LAYERS = ("embedding", "lstm", "gru", "attention", "transformer_encoder", "positional", "sequence_pool")


def plugin_of(type_: str):
    """The installed package a layer type comes from (None for a built-in)."""
    return next((p for p in PLUGINS if p.name == type_), None)


def installed_packages() -> dict[str, dict[str, str]]:
    """The layer types this process has from installed packages: {type: {package, version}}."""
    return {p.name: {"package": p.package, "version": p.version} for p in PLUGINS}


COMMON_FIELDS = ("type", "id", "from")  # every layer has them: the reference lists them once


def schema_words(schema: dict[str, Any]) -> str:
    """A field's JSON Schema in a few words: integer, same|valid, integer or same|valid, a list of string."""
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return str(schema["const"])
    if "anyOf" in schema:
        return " or ".join(schema_words(s) for s in schema["anyOf"] if s.get("type") != "null")
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return "a list of " + schema_words(schema.get("items", {}))
    return str(schema.get("type", ""))


def layer_catalog() -> dict[str, Any]:
    """Every layer type a spec may use here, built-in and installed, each with its fields as JSON Schema (what
    GET /api/v1/layers answers), and the installed entry points that were refused, with why. `about` says each field
    in words (its type, and required or its default), as the submit page and `trainq layers` show it."""
    def entry(cls, package=None, version=None):
        schema = cls.model_json_schema()
        doc = " ".join((cls.__doc__ or "").split())
        fields = {k: v for k, v in schema.get("properties", {}).items() if k not in COMMON_FIELDS}
        required = [k for k in schema.get("required", []) if k not in COMMON_FIELDS]
        # each field in words, in the class's order (a JSON object's keys may be sorted on the way)
        said = {k: "required" if k in required else f"default {json.dumps(v.get('default'))}"
                for k, v in fields.items()}
        about = [[k, f"{schema_words(v)} ({said[k]})"] for k, v in fields.items()]
        return {"type": type_name(cls), "package": package, "version": version, "description": doc,
                "fields": fields, "about": about, "required": required,
                "sequence": type_name(cls) in SEQUENCE_LAYERS, "merges": bool(getattr(cls, "merges", False)),
                "definitions": schema.get("$defs", {})}

    return {"layers": [entry(cls) for cls in BUILTIN_LAYERS]
            + [entry(p.layer.spec, p.package, p.version) for p in PLUGINS],
            "refused": [{"name": r.name, "package": r.package, "version": r.version, "reason": r.reason}
                        for r in REFUSED_PLUGINS]}


class ZerosInit(Spec):
    type: Literal["zeros"]  # every hidden unit stays identical: the symmetry is never broken


class NormalInit(Spec):
    type: Literal["normal"]
    mean: float = Field(0.0, ge=-10, le=10)
    std: float = Field(0.01, gt=0, le=10)


class UniformInit(Spec):
    type: Literal["uniform"]
    low: float = Field(-0.05, ge=-10, le=10)
    high: float = Field(0.05, ge=-10, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> "UniformInit":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class XavierInit(Spec):
    type: Literal["xavier"]  # Glorot: variance 2 / (fan_in + fan_out)
    distribution: Literal["uniform", "normal"] = "uniform"
    gain: float = Field(1.0, gt=0, le=10)


class HeInit(Spec):
    type: Literal["he"]  # Kaiming: variance 2 / fan_in, for ReLU
    distribution: Literal["uniform", "normal"] = "normal"
    nonlinearity: Literal["relu", "leaky_relu"] = "relu"


class LecunInit(Spec):
    type: Literal["lecun"]  # variance 1 / fan_in, for SELU and tanh
    distribution: Literal["uniform", "normal"] = "normal"


InitSpec = Annotated[Union[ZerosInit, NormalInit, UniformInit, XavierInit, HeInit, LecunInit],
                     Field(discriminator="type")]
INIT_NAMES = ("zeros", "normal", "uniform", "xavier", "he", "lecun")

