"""Stacked layers: M models of one architecture computed as one module, their parameters stacked on a leading member
axis. A dense layer is one batched matrix multiply, a convolution one grouped convolution, a batch norm one over M x C
channels; dropout and noise draw each member's own mask from a generator given per member.

Two users: packed trials (packed.py: members are separate trials, each with its own optimizer hyperparameters) and
deep ensembles (`Ensemble`: one run's M members from M seeds, trained together, predicting as a mixture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainq.models.bayes import BayesModule
from trainq.models.layers import GaussianNoise, StochasticPool2d, SubsampledConv2d
from trainq.models.packing import PackError


# ---------------------------------------------------------------------------------------------------------------------
# Stacked layers: parameters carry a leading member axis. Activations are (N, B, F) for features and (B, N*C, H, W)
# for images (grouped channels), so convolutions, pooling and batch norm run once for all members.
# ---------------------------------------------------------------------------------------------------------------------


def _stack(tensors: list[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]))


class PackedLinear(nn.Module):
    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = _stack([m.weight for m in layers])  # (N, out, in)
        self.bias = _stack([m.bias for m in layers]) if layers[0].bias is not None else None  # (N, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, B, in) -> (N, B, out)
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class PackedConv2d(nn.Module):
    def __init__(self, layers: list[nn.Conv2d]):
        super().__init__()
        first = layers[0]
        self.stride, self.padding, self.members = first.stride, first.padding, len(layers)
        self.groups = first.groups  # a depthwise convolution's own groups: each member's, side by side
        self.weight = _stack([m.weight for m in layers])  # (N, out, in / groups, k, k)
        self.bias = _stack([m.bias for m in layers]) if first.bias is not None else None

        self.subsampled = isinstance(first, SubsampledConv2d)  # a strided 1x1: as the member computes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N*in, H, W) -> (B, N*out, H', W')
        w = self.weight.flatten(0, 1)
        bias = None if self.bias is None else self.bias.flatten()
        if self.subsampled:
            (ph, pw), (sh, sw) = self.padding, self.stride
            x = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
            return F.conv2d(x[:, :, ::sh, ::sw], w, bias, 1, 0, 1, self.members * self.groups)
        return F.conv2d(x, w, bias, self.stride, self.padding, groups=self.members * self.groups)


class PackedBatchNorm(nn.Module):
    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        first = layers[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = _stack([m.weight for m in layers])  # (N, C)
        self.bias = _stack([m.bias for m in layers])
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in layers]).clone())
        self.register_buffer("running_var", torch.stack([m.running_var for m in layers]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 3  # (N, B, C): per member and feature, over the batch
        if flat:
            n, b, c = x.shape
            x = x.transpose(0, 1).reshape(b, n * c)
        out = F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.flatten(),
                           self.bias.flatten(), self.training, self.momentum, self.eps)
        return out.view(b, n, c).transpose(0, 1) if flat else out


class PackedDropout(nn.Module):
    """Each member's mask from its own generator, drawn as nn.Dropout draws it (none when p = 0)."""

    def __init__(self, ps: list[float], generators: list[torch.Generator]):
        super().__init__()
        self.ps, self.generators = ps, generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.ps):
            return x
        parts = _members(x, len(self.ps))
        out = []
        for part, p, g in zip(parts, self.ps, self.generators):
            if p == 0 or g is None:
                out.append(part)
            elif p == 1:
                out.append(part * 0)
            else:
                out.append(_dropout(part, p, g))
        return _join(out, x)


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """nn.Dropout's mask, drawn from `generator`. On a CPU nn.Dropout is a bernoulli_ draw; on a GPU it is a fused
    kernel that draws from the device's default generator with its own layout of the random stream, so there it runs
    with the generator's state swapped in (a bernoulli_ mask there differs from the trial's alone: measured on an
    H200, a packed MLP with dropout drifted 9e-2 from its trials in five epochs)."""
    if x.device.type != "cuda":
        return x * torch.empty_like(x).bernoulli_(1 - p, generator=generator).div_(1 - p)
    default = torch.cuda.default_generators[x.device.index if x.device.index is not None
                                           else torch.cuda.current_device()]
    saved = default.get_state()
    default.set_state(generator.get_state())
    try:
        out = F.dropout(x.contiguous(), p, training=True)
        generator.set_state(default.get_state())
    finally:
        default.set_state(saved)
    return out


class PackedNoise(nn.Module):
    def __init__(self, stds: list[float], generators: list[torch.Generator]):
        super().__init__()
        self.stds, self.generators = stds, generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.stds):
            return x
        out = []
        for part, std, g in zip(_members(x, len(self.stds)), self.stds, self.generators):
            out.append(part if not std or g is None else
                       part + std * torch.randn(part.shape, generator=g, device=part.device, dtype=part.dtype))
        return _join(out, x)


def _members(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """One member's activations each, shaped as the member alone would have them."""
    if x.dim() == 3:
        return list(x.unbind(0))
    b, nc, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return [part.contiguous(memory_format=fmt) for part in x.view(b, n, nc // n, h, w).unbind(1)]


def _join(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 3:
        return torch.stack(parts)
    return torch.stack(parts, dim=1).flatten(1, 2)


class PackedLayerNorm(nn.Module):
    """Layer norm of each member's features, (N, B, F), with each member's own scale and shift."""

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        self.shape, self.eps = layers[0].normalized_shape, layers[0].eps
        self.weight = _stack([m.weight for m in layers])  # (N, F)
        self.bias = _stack([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.unsqueeze(1), F.layer_norm(x, self.shape, None, None, self.eps),
                             self.weight.unsqueeze(1))


class PackedGlobalAvgPool(nn.Module):
    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N*C, H, W) -> (N, B, C)
        return x.mean(dim=(2, 3)).view(x.shape[0], self.members, -1).transpose(0, 1)


class PackedConcat(nn.Module):
    """Each member's inputs side by side: its channels of each image input together, or its features."""

    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if xs[0].dim() == 3:  # (N, B, F_i) -> (N, B, sum F_i)
            return torch.cat(xs, dim=-1)
        b, _, h, w = xs[0].shape  # (B, N*C_i, H, W) -> (B, N*sum C_i, H, W), member-major
        return torch.cat([x.view(b, self.members, -1, h, w) for x in xs], dim=2).flatten(1, 2)


class PackedFlatten(nn.Module):
    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N*C, H, W) -> (N, B, C*H*W)
        b = x.shape[0]
        return x.reshape(b, self.members, -1).transpose(0, 1)


class PackedSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1 if x.dim() == 3 else 1)


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d)


def pack_modules(models: list[nn.Module], generators: list[torch.Generator]) -> nn.Module:
    """One module that computes every member model at once (their weights copied in, stacked): a straight stack as
    an nn.Sequential, a graph as a GraphNet of packed layers reading the same inputs."""
    from trainq.models.layers import GraphNet

    if isinstance(models[0], GraphNet):
        return GraphNet([_pack_one(list(layers), generators) for layers in zip(*(m.layers for m in models))],
                        models[0].inputs)
    return nn.Sequential(*[_pack_one(list(layers), generators) for layers in zip(*models)])


def _pack_one(layers: list[nn.Module], generators: list[torch.Generator]) -> nn.Module:
    """The members' module at one place of the network, packed."""
    from trainq.models.layers import Add, Concat, GlobalAvgPool, SlopedSigmoid, Step

    first, n = layers[0], len(layers)
    if isinstance(first, nn.Sequential):  # a layer made of layers (separable_conv2d, a projection)
        return nn.Sequential(*[_pack_one(list(parts), generators) for parts in zip(*layers)])
    if isinstance(first, nn.Identity):
        return first
    if isinstance(first, Add):  # the members' projections packed: the module names stay the member's
        return Add([_pack_one(list(parts), generators) for parts in zip(*(m.projections for m in layers))])
    if isinstance(first, Concat):
        return PackedConcat(n)
    if isinstance(first, GlobalAvgPool):
        return PackedGlobalAvgPool(n)
    if isinstance(first, nn.LayerNorm):
        return PackedLayerNorm(layers)
    return _pack_plain(layers, generators, SlopedSigmoid, Step)


def _pack_plain(layers: list[nn.Module], generators, *elementwise) -> nn.Module:
    first = layers[0]
    if isinstance(first, (BayesModule, StochasticPool2d)):
        raise PackError(f"{type(first).__name__} is not packed")
    if isinstance(first, nn.Linear):
        return PackedLinear(layers)
    if isinstance(first, nn.Conv2d):
        return PackedConv2d(layers)
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return PackedBatchNorm(layers)
    if isinstance(first, nn.Dropout):
        return PackedDropout([m.p for m in layers], generators)
    if isinstance(first, GaussianNoise):
        return PackedNoise([m.std for m in layers], generators)
    if isinstance(first, nn.Flatten):
        return PackedFlatten(len(layers))
    if isinstance(first, nn.Softmax):
        return PackedSoftmax()
    if isinstance(first, (*ELEMENTWISE, *elementwise)):
        return first  # acts on each element or channel alone: the same for every member
    raise PackError(f"{type(first).__name__} is not packed")


COUNTED = (PackedConv2d, PackedFlatten, PackedGlobalAvgPool, PackedConcat)  # they hold the number of live members


class Ensemble(nn.Module):
    """A deep ensemble: M networks of one architecture stacked in one module, answering (M, B, outputs).

    Inputs are either shared, (B, ...) the same rows for every member (evaluation, prediction), or each member's own,
    (M, B, ...) (training, where every member draws its own permutation of the training split). Dropout and noise
    draw each member's mask separately, from `generator`."""

    def __init__(self, models: list[nn.Sequential], example_dims: int, generator: torch.Generator | None):
        super().__init__()
        self.members, self.example_dims = len(models), example_dims
        self.net = pack_modules(models, [generator] * len(models))
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        shared = x.dim() == self.example_dims + 1
        if self.example_dims == 1:  # features: (M, B, F), one batched matrix multiply per dense layer
            x = x.expand(m, *x.shape) if shared else x
        else:  # images: members' channels side by side, (B, M*C, H, W), one grouped convolution per layer
            x = x.repeat(1, m, 1, 1) if shared else x.transpose(0, 1).flatten(1, 2)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def clip_members_(parameters: list[nn.Parameter], max_norm: float, members: int) -> None:
    """Scale each member's gradients down to `max_norm` by their global norm, as clip_grad_norm_ does for a network
    alone (stacked parameters are member-major, so a member's share of each is one row of its (M, -1) view)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.reshape(members, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(members, *[1] * (g.dim() - 1)))
