"""Architectures: each layer type of the spec has one builder here. A straight stack of layers is an nn.Sequential;
a graph (layers that read earlier layers by id, merged by add or concat) is a GraphNet that computes its nodes in
order. Either is built once, before the first step, so a graph costs nothing per step beyond its own layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainq.models.bayes import BayesConv2d, BayesLinear, BayesModule
from trainq.models.registry import Registry
from trainq.models.spec import (ActivationSpec, AddSpec, AttentionSpec, BatchnormSpec, ConcatSpec, Conv2dBayesSpec,
                                Conv2dSpec, DenseBayesSpec, DenseSpec, DepthwiseConv2dSpec, DropoutSpec, EmbeddingSpec,
                                FlattenSpec, GlobalAvgPoolSpec, JobSpec, LayernormSpec, MdnSpec, NoiseSpec, PadSpec,
                                PoolSpec, PositionalSpec, SeparableConv2dSpec, SequencePoolSpec, Shape,
                                TransformerEncoderSpec, input_shape)
from trainq.models.spec.layers import BUILTIN_NAMES as LAYER_TYPES
from trainq.models.spec.layers import PLUGINS, RecurrentFields, projection_of

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


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TokenEmbedding(nn.Module):
    """Token ids, (N, T) or (N, T, 1) as numbers, to vectors (N, T, dim)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table((x.squeeze(-1) if x.dim() == 3 else x).long())


class Recurrent(nn.Module):
    """An LSTM or GRU over (N, T, F), batch first: every step's outputs, or the last hidden state (both directions')."""

    def __init__(self, kind: type[nn.RNNBase], spec: RecurrentFields, features: int):
        super().__init__()
        self.rnn = kind(features, spec.units, num_layers=spec.layers, batch_first=True,
                        bidirectional=spec.bidirectional, dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.sequence, self.directions = spec.return_ == "sequence", 2 if spec.bidirectional else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, hidden = self.rnn(x)
        if self.sequence:
            return out
        h = hidden[0] if isinstance(hidden, tuple) else hidden  # an LSTM's (h, c)
        return torch.cat([h[-2], h[-1]], dim=1) if self.directions == 2 else h[-1]


class SelfAttention(nn.Module):
    """Multi-head self-attention over the steps of (N, T, F): (N, T, dim)."""

    def __init__(self, features: int, dim: int, heads: int, causal: bool, dropout: float):
        super().__init__()
        self.qkv, self.out = nn.Linear(features, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.causal, self.dropout = heads, causal, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each (N, heads, T, dim/heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, t, -1))


class EncoderLayer(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feedforward(norm(x))."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float, causal: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, dim, heads, causal, dropout)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(feedforward, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.drop(self.feedforward(self.norm2(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, spec: TransformerEncoderSpec, shape: Shape):
        super().__init__()
        dim = shape[1]
        self.layers = nn.Sequential(*(EncoderLayer(dim, spec.heads, spec.feedforward or 4 * dim, spec.dropout,
                                                   spec.causal) for _ in range(spec.layers)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(x))


class Positional(nn.Module):
    """Adds each step's position: learned vectors, or the sines and cosines of Vaswani et al."""

    def __init__(self, kind: str, steps: int, features: int):
        super().__init__()
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(steps, features) * 0.02)
        else:
            position = torch.arange(steps, dtype=torch.float32)[:, None]
            rate = torch.exp(torch.arange(0, features, 2, dtype=torch.float32) * (-math.log(10_000.0) / features))
            table = torch.zeros(steps, features)
            table[:, 0::2] = torch.sin(position * rate)
            table[:, 1::2] = torch.cos(position * rate[: features // 2])
            self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table


class SequencePool(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return x.mean(dim=1)
        return x.amax(dim=1) if self.kind == "max" else x[:, -1]


class SubsampledConv2d(nn.Conv2d):
    """A 1x1 convolution with a stride, computed as what it is: every stride-th pixel, then a 1x1 convolution. The
    same numbers and parameters as nn.Conv2d's; and it sidesteps a fault of torch 2.13 on CPU, where the backward of
    a strided 1x1 convolution in channels-last on one thread with fewer than 8 input channels corrupts the heap and
    kills the process (tests/models/test_graph.py trains such a projection)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw) = self.padding, self.stride
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, 1, self.groups)


def conv(channels: int, out: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
         bias: bool = True) -> nn.Conv2d:
    """A convolution module: nn.Conv2d, or SubsampledConv2d for a 1x1 kernel with a stride."""
    kind = SubsampledConv2d if kernel == 1 and stride > 1 else nn.Conv2d
    return kind(channels, out, kernel, stride=stride, padding=padding, groups=groups, bias=bias)


class Add(nn.Module):
    """The sum of its inputs, each projected onto the first's shape where it differs (Identity where it does not)."""

    def __init__(self, projections: list[nn.Module]):
        super().__init__()
        self.projections = nn.ModuleList(projections)

    def forward(self, first: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        for projection, x in zip(self.projections, others):
            first = first + projection(x)
        return first


class Concat(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class GraphNet(nn.Module):
    """Layers that read earlier layers: each computed in order from the outputs it names (-1: the model's input).
    The order and inputs are fixed when it is built, so torch.compile and the ONNX export see a plain graph."""

    def __init__(self, layers: list[nn.Module], inputs: list[tuple[int, ...]]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.inputs = [tuple(i) for i in inputs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for layer, inputs in zip(self.layers, self.inputs):
            args = [x if i < 0 else outputs[i] for i in inputs]
            outputs.append(layer(*args))
        return outputs[-1]


# ---------------------------------------------------------------------------------------------------------------------
# One builder per spec name
# ---------------------------------------------------------------------------------------------------------------------


@LAYERS.register("dense")
def dense(spec: DenseSpec, shape: Shape) -> nn.Module:
    return nn.Linear(shape[-1], spec.units, bias=spec.bias)


@LAYERS.register("activation")
def activation(spec: ActivationSpec, shape: Shape) -> nn.Module:
    if spec.fn == "softmax" and len(shape) == 2:
        return nn.Softmax(dim=-1)  # a sequence: over each step's features
    return ACTIVATIONS[spec.fn](spec)


@LAYERS.register("dropout")
def dropout(spec: DropoutSpec, shape: Shape) -> nn.Module:
    return nn.Dropout(spec.p)


@LAYERS.register("noise")
def noise(spec: NoiseSpec, shape: Shape) -> nn.Module:
    return GaussianNoise(spec.std)


@LAYERS.register("conv2d")
def conv2d(spec: Conv2dSpec, shape: Shape) -> nn.Module:
    return conv(shape[0], spec.out_channels, spec.kernel, spec.stride, spec.pad(), bias=spec.bias)


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


@LAYERS.register("depthwise_conv2d")
def depthwise_conv2d(spec: DepthwiseConv2dSpec, shape: Shape) -> nn.Module:
    return conv(shape[0], shape[0] * spec.multiplier, spec.kernel, spec.stride, spec.pad(), groups=shape[0],
                bias=spec.bias)


@LAYERS.register("separable_conv2d")
def separable_conv2d(spec: SeparableConv2dSpec, shape: Shape) -> nn.Module:
    return nn.Sequential(conv(shape[0], shape[0], spec.kernel, spec.stride, spec.pad(), groups=shape[0], bias=False),
                         nn.Conv2d(shape[0], spec.out_channels, 1, bias=spec.bias))


@LAYERS.register("global_avg_pool")
def global_avg_pool(spec: GlobalAvgPoolSpec, shape: Shape) -> nn.Module:
    return GlobalAvgPool()


@LAYERS.register("layernorm")
def layernorm(spec: LayernormSpec, shape: Shape) -> nn.Module:
    return nn.LayerNorm(shape[-1], eps=spec.eps)


@LAYERS.register("embedding")
def embedding(spec: EmbeddingSpec, shape: Shape) -> nn.Module:
    return TokenEmbedding(spec.vocab, spec.dim)


@LAYERS.register("lstm")
def lstm(spec: RecurrentFields, shape: Shape) -> nn.Module:
    return Recurrent(nn.LSTM, spec, shape[1])


@LAYERS.register("gru")
def gru(spec: RecurrentFields, shape: Shape) -> nn.Module:
    return Recurrent(nn.GRU, spec, shape[1])


@LAYERS.register("attention")
def attention(spec: AttentionSpec, shape: Shape) -> nn.Module:
    return SelfAttention(shape[1], spec.dim or shape[1], spec.heads, spec.causal, spec.dropout)


@LAYERS.register("transformer_encoder")
def transformer_encoder(spec: TransformerEncoderSpec, shape: Shape) -> nn.Module:
    return TransformerEncoder(spec, shape)


@LAYERS.register("positional")
def positional(spec: PositionalSpec, shape: Shape) -> nn.Module:
    return Positional(spec.kind, shape[0], shape[1])


@LAYERS.register("sequence_pool")
def sequence_pool(spec: SequencePoolSpec, shape: Shape) -> nn.Module:
    return SequencePool(spec.kind)


@LAYERS.register("add")
def add(spec: AddSpec, shapes: list[Shape]) -> nn.Module:
    target, projections = shapes[0], []
    for i, shape in enumerate(shapes[1:], start=1):
        if shape == target:
            projections.append(nn.Identity())
        elif len(shape) == 3:
            stride = projection_of(shape, target, i)
            projections.append(nn.Sequential(conv(shape[0], target[0], 1, stride, bias=False),
                                             nn.BatchNorm2d(target[0])))
        else:
            projections.append(nn.Linear(shape[-1], target[-1]))
    return Add(projections)


@LAYERS.register("concat")
def concat(spec: ConcatSpec, shapes: list[Shape]) -> nn.Module:
    return Concat(1 if len(shapes[0]) in (1, 3) else 2)


for _plugin in PLUGINS:  # the layer types of installed packages, built by their own functions
    LAYERS.register(_plugin.name)(_plugin.layer.build)


ACTIVATIONS.register("step")(lambda s: Step())
ACTIVATIONS.register("sigmoid")(lambda s: SlopedSigmoid(s.slope) if s.slope != 1 else nn.Sigmoid())
ACTIVATIONS.register("tanh")(lambda s: nn.Tanh())
ACTIVATIONS.register("relu")(lambda s: nn.ReLU())
ACTIVATIONS.register("leaky_relu")(lambda s: nn.LeakyReLU(s.negative_slope))
ACTIVATIONS.register("elu")(lambda s: nn.ELU(s.alpha))
ACTIVATIONS.register("selu")(lambda s: nn.SELU())
ACTIVATIONS.register("gelu")(lambda s: nn.GELU())
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


def build_model(spec: JobSpec, shape: Shape | None = None) -> nn.Module:
    """Build the spec's layers, initialized by the spec's scheme (biases start at zero; an installed layer keeps its
    own initialization): an nn.Sequential for a straight stack, a GraphNet for a graph.

    `shape` is one example's shape as loaded (one-hot codes can widen it past what the spec alone tells). An uploaded
    table's embedded categories come first, as an EmbedColumns module.
    """
    shape = tuple(shape) if shape is not None else input_shape(spec)
    front: list[nn.Module] = []
    embeddings = spec.dataset.info().embeddings if spec.dataset.name == "upload" else ()
    if embeddings:
        front.append(EmbedColumns(embeddings))
        shape = input_shape(spec)
    graph = spec.model.graph()
    shapes: dict[int, Shape] = {-1: shape}
    modules, own = [], []
    for node in graph.nodes:
        layer, inputs = node.layer, [shapes[i] for i in node.inputs]
        if getattr(layer, "merges", False):
            module, out = LAYERS[layer.type](layer, inputs), layer.merge_shape(inputs)
        else:
            module, out = LAYERS[layer.type](layer, inputs[0]), layer.output_shape(inputs[0])
        shapes[node.index] = tuple(out)
        modules.append(module)
        if layer.type in LAYER_TYPES:
            own.append(module)
    init = INITS[spec.model.init.type]
    for module in (m for layer in front + own for m in layer.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d, BayesModule)):  # a Bayesian layer: its posterior means
            init(module.weight, spec.model.init)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if graph.chain:
        return nn.Sequential(*front, *modules)
    net = GraphNet(modules, [node.inputs for node in graph.nodes])
    return nn.Sequential(*front, net) if front else net
