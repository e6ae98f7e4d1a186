"""Architectures: each layer type of the spec has one builder here, and the model is their sequence."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainq.models.bayes import BayesConv2d, BayesLinear, BayesModule
from trainq.models.registry import Registry
from trainq.models.spec import (ActivationSpec, BatchnormSpec, Conv2dBayesSpec, Conv2dSpec, DenseBayesSpec, DenseSpec,
                                DropoutSpec, FlattenSpec, JobSpec, MdnSpec, NoiseSpec, PadSpec, PoolSpec, Shape,
                                input_shape)

LAYERS = Registry("layer")
ACTIVATIONS = Registry("activation")
INITS = Registry("init")

# ---------------------------------------------------------------------------------------------------------------------
# Modules no library has in this form
# ---------------------------------------------------------------------------------------------------------------------


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: torch.Tensor) -> torch.Tensor:
        return torch.where(s >= 0, 1.0, -1.0).to(s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad  # straight-through: the true derivative is zero almost everywhere and would stop all learning


class Step(nn.Module):
    """The perceptron's threshold: +1 for s >= 0, -1 below (gradient passed straight through)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return _StepFn.apply(s)


class SlopedSigmoid(nn.Module):
    """sigma(a s) = 1 / (1 + exp(-a s)); a is the slope."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.slope * s)


class GaussianNoise(nn.Module):
    """Noise injection: add N(0, std^2) to the activations in training; identity in evaluation."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x) if self.training and self.std else x


class StochasticPool2d(nn.Module):
    """Stochastic pooling (Zeiler & Fergus): in training, pick a_i in each window with p_i = a_i / sum_k a_k;
    in evaluation, the probability-weighted average sum_i p_i a_i. Activations are taken as non-negative."""

    def __init__(self, size: int, stride: int):
        super().__init__()
        self.size, self.stride = size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out_h, out_w = (h - self.size) // self.stride + 1, (w - self.size) // self.stride + 1
        windows = F.unfold(x, self.size, stride=self.stride).view(n, c, self.size * self.size, out_h * out_w)
        a = windows.clamp_min(0)
        total = a.sum(dim=2, keepdim=True)
        p = torch.where(total > 0, a / total.clamp_min(1e-12), torch.full_like(a, 1.0 / a.shape[2]))
        if self.training:
            # inverse-CDF sampling of one index per window, all windows at once
            u = torch.rand(n, c, 1, out_h * out_w, device=x.device, dtype=x.dtype)
            index = (p.cumsum(dim=2) < u).sum(dim=2, keepdim=True).clamp_max(a.shape[2] - 1)
            pooled = a.gather(2, index).squeeze(2)
        else:
            pooled = (p * a).sum(dim=2)
        return pooled.view(n, c, out_h, out_w)


# ---------------------------------------------------------------------------------------------------------------------
# One builder per spec name
# ---------------------------------------------------------------------------------------------------------------------


@LAYERS.register("dense")
def dense(spec: DenseSpec, shape: Shape) -> nn.Module:
    return nn.Linear(shape[0], spec.units, bias=spec.bias)


@LAYERS.register("activation")
def activation(spec: ActivationSpec, shape: Shape) -> nn.Module:
    return ACTIVATIONS[spec.fn](spec)


@LAYERS.register("dropout")
def dropout(spec: DropoutSpec, shape: Shape) -> nn.Module:
    return nn.Dropout(spec.p)


@LAYERS.register("noise")
def noise(spec: NoiseSpec, shape: Shape) -> nn.Module:
    return GaussianNoise(spec.std)


@LAYERS.register("conv2d")
def conv2d(spec: Conv2dSpec, shape: Shape) -> nn.Module:
    return nn.Conv2d(shape[0], spec.out_channels, spec.kernel, stride=spec.stride, padding=spec.pad(),
                     bias=spec.bias)


@LAYERS.register("pool")
def pool(spec: PoolSpec, shape: Shape) -> nn.Module:
    stride = spec.stride or spec.size
    if spec.kind == "max":
        return nn.MaxPool2d(spec.size, stride)
    if spec.kind == "avg":
        return nn.AvgPool2d(spec.size, stride)
    return StochasticPool2d(spec.size, stride)


@LAYERS.register("pad")
def pad(spec: PadSpec, shape: Shape) -> nn.Module:
    return nn.ZeroPad2d(spec.size)


@LAYERS.register("batchnorm")
def batchnorm(spec: BatchnormSpec, shape: Shape) -> nn.Module:
    kind = nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d
    return kind(shape[0], eps=spec.eps, momentum=spec.momentum)


@LAYERS.register("dense_bayes")
def dense_bayes(spec: DenseBayesSpec, shape: Shape) -> nn.Module:
    return BayesLinear(shape[0], spec.units, spec.bias, spec.prior_sigma, spec.posterior_rho_init)


@LAYERS.register("conv2d_bayes")
def conv2d_bayes(spec: Conv2dBayesSpec, shape: Shape) -> nn.Module:
    return BayesConv2d(shape[0], spec.out_channels, spec.kernel, spec.stride, spec.pad(), spec.bias, spec.prior_sigma,
                       spec.posterior_rho_init)


@LAYERS.register("flatten")
def flatten(spec: FlattenSpec, shape: Shape) -> nn.Module:
    return nn.Flatten()


@LAYERS.register("mdn")
def mdn(spec: MdnSpec, shape: Shape) -> nn.Module:
    return nn.Linear(shape[0], spec.width)  # split into logits, means and log-sigmas by the mdn_nll loss


ACTIVATIONS.register("step")(lambda s: Step())
ACTIVATIONS.register("sigmoid")(lambda s: SlopedSigmoid(s.slope) if s.slope != 1 else nn.Sigmoid())
ACTIVATIONS.register("tanh")(lambda s: nn.Tanh())
ACTIVATIONS.register("relu")(lambda s: nn.ReLU())
ACTIVATIONS.register("leaky_relu")(lambda s: nn.LeakyReLU(s.negative_slope))
ACTIVATIONS.register("elu")(lambda s: nn.ELU(s.alpha))
ACTIVATIONS.register("selu")(lambda s: nn.SELU())
ACTIVATIONS.register("softmax")(lambda s: nn.Softmax(dim=1))

# ---------------------------------------------------------------------------------------------------------------------
# Initialization: random schemes break the symmetry of hidden units; zeros keep them identical
# ---------------------------------------------------------------------------------------------------------------------


@INITS.register("zeros")
def init_zeros(w: torch.Tensor, spec) -> None:
    nn.init.zeros_(w)


@INITS.register("normal")
def init_normal(w: torch.Tensor, spec) -> None:
    nn.init.normal_(w, spec.mean, spec.std)


@INITS.register("uniform")
def init_uniform(w: torch.Tensor, spec) -> None:
    nn.init.uniform_(w, spec.low, spec.high)


@INITS.register("xavier")
def init_xavier(w: torch.Tensor, spec) -> None:
    (nn.init.xavier_uniform_ if spec.distribution == "uniform" else nn.init.xavier_normal_)(w, gain=spec.gain)


@INITS.register("he")
def init_he(w: torch.Tensor, spec) -> None:
    fill = nn.init.kaiming_uniform_ if spec.distribution == "uniform" else nn.init.kaiming_normal_
    fill(w, nonlinearity=spec.nonlinearity)


@INITS.register("lecun")
def init_lecun(w: torch.Tensor, spec) -> None:
    fan_in = w[0].numel()
    if spec.distribution == "normal":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
    else:
        bound = math.sqrt(3.0 / fan_in)
        nn.init.uniform_(w, -bound, bound)


class EmbedColumns(nn.Module):
    """An uploaded table's embedded categories: each such input column holds a vocabulary index, replaced in place
    by its learned vector; the other columns pass through."""

    def __init__(self, embeddings: tuple[tuple[int, int, int], ...]):
        super().__init__()
        self.columns = [column for column, _, _ in embeddings]
        self.tables = nn.ModuleList(nn.Embedding(rows, dim) for _, rows, dim in embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for column, table in zip(self.columns, self.tables):
            parts += [x[:, start:column], table(x[:, column].long())]
            start = column + 1
        parts.append(x[:, start:])
        return torch.cat(parts, dim=1)


def build_model(spec: JobSpec, shape: Shape | None = None) -> nn.Sequential:
    """Build the spec's layers in order, initialized by the spec's scheme (biases start at zero).

    `shape` is one example's shape as loaded (one-hot codes can widen it past what the spec alone tells). An uploaded
    table's embedded categories come first, as an EmbedColumns module.
    """
    shape = tuple(shape) if shape is not None else input_shape(spec)
    modules = []
    embeddings = spec.dataset.info().embeddings if spec.dataset.name == "upload" else ()
    if embeddings:
        modules.append(EmbedColumns(embeddings))
        shape = input_shape(spec)
    for layer in spec.model.layers:
        modules.append(LAYERS[layer.type](layer, shape))
        shape = layer.output_shape(shape)
    model = nn.Sequential(*modules)
    init = INITS[spec.model.init.type]
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, BayesModule)):  # a Bayesian layer: its posterior means
            init(module.weight, spec.model.init)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
