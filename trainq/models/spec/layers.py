"""Layers: each layer type knows its output shape and parameter count from its input's shape (plain arithmetic),
and the weight initializations."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from trainq.models.spec.base import Shape, ShapeError, Spec


def _needs(shape: Shape, dims: int, what: str) -> None:
    if len(shape) != dims:
        kind = "a flat input (features)" if dims == 1 else "an image input (channels, height, width)"
        hint = "; add a flatten layer first" if dims == 1 else ""
        raise ShapeError(f"{what} needs {kind}, got shape {list(shape)}{hint}")


class SameShape:
    """A layer that keeps its input's shape and has no parameters."""

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0


class DenseSpec(Spec):
    type: Literal["dense"]
    units: int = Field(gt=0, le=65_536)
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 1, "dense")
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.units + (self.units if self.bias else 0)


ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "softmax")


class ActivationSpec(SameShape, Spec):
    type: Literal["activation"]
    fn: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    slope: float = Field(1.0, gt=0, le=100)  # sigmoid(slope * s)
    negative_slope: float = Field(0.01, ge=0, le=1)  # leaky_relu
    alpha: float = Field(1.0, gt=0, le=100)  # elu

    def unused(self) -> set[str]:
        """The parameters of the other functions: relu has no slope, no alpha."""
        return {name for name, fn in (("slope", "sigmoid"), ("negative_slope", "leaky_relu"), ("alpha", "elu"))
                if self.fn != fn}


class DropoutSpec(SameShape, Spec):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1)


class NoiseSpec(SameShape, Spec):
    type: Literal["noise"]  # Gaussian noise added to the activations in training only
    std: float = Field(0.1, ge=0, le=100)


class Conv2dSpec(Spec):
    type: Literal["conv2d"]
    out_channels: int = Field(gt=0, le=4096)
    kernel: int = Field(3, gt=0, le=31)
    stride: int = Field(1, gt=0, le=16)
    padding: Annotated[int, Field(ge=0, le=64)] | Literal["same", "valid"] = 0  # same: (kernel - 1) / 2 each side
    bias: bool = True

    def pad(self) -> int:
        if self.padding == "same":
            if self.kernel % 2 == 0:
                raise ShapeError("padding 'same' needs an odd kernel")
            return (self.kernel - 1) // 2
        return 0 if self.padding == "valid" else self.padding

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "conv2d")
        p = self.pad()
        h, w = ((size + 2 * p - self.kernel) // self.stride + 1 for size in shape[1:])
        if h < 1 or w < 1:
            raise ShapeError(f"conv2d with kernel {self.kernel} does not fit an input of {list(shape)}")
        return (self.out_channels, h, w)

    def param_count(self, shape: Shape) -> int:
        return self.out_channels * shape[0] * self.kernel ** 2 + (self.out_channels if self.bias else 0)


class BayesFields(Spec):
    """A mean-field Gaussian posterior per weight, N(mu, softplus(rho)^2), against the prior N(0, prior_sigma^2)."""

    prior_sigma: float = Field(1.0, gt=0, le=100)
    posterior_rho_init: float = Field(-5.0, ge=-20, le=5)  # softplus(-5) = 0.0067: start near the point estimate


class DenseBayesSpec(BayesFields, DenseSpec):
    type: Literal["dense_bayes"]  # local reparameterization trick

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)  # a mean and a rho per weight


class Conv2dBayesSpec(BayesFields, Conv2dSpec):
    type: Literal["conv2d_bayes"]  # Flipout

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)


class PoolSpec(Spec):
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


class PadSpec(Spec):
    type: Literal["pad"]  # zeros around an image: a 32x32x3 image padded by 2 is 36x36x3
    size: int = Field(1, ge=0, le=64)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "pad")
        return (shape[0], shape[1] + 2 * self.size, shape[2] + 2 * self.size)

    def param_count(self, shape: Shape) -> int:
        return 0


class BatchnormSpec(Spec):
    type: Literal["batchnorm"]  # over features (1d) or channels (2d), chosen by the input's shape
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0, le=1)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (1, 3):
            raise ShapeError(f"batchnorm needs features or an image, got shape {list(shape)}")
        return shape

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[0]  # gamma and beta per feature or channel


class FlattenSpec(Spec):
    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def param_count(self, shape: Shape) -> int:
        return 0


class MdnSpec(Spec):
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


LayerSpec = Annotated[Union[DenseSpec, ActivationSpec, DropoutSpec, NoiseSpec, Conv2dSpec, PoolSpec, PadSpec,
                            BatchnormSpec, FlattenSpec, MdnSpec, DenseBayesSpec, Conv2dBayesSpec],
                      Field(discriminator="type")]
BAYES_LAYERS = ("dense_bayes", "conv2d_bayes")


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

