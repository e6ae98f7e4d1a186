"""Architectures: each layer type of the spec has one builder here, and the model is their sequence."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainq.models.registry import Registry
from trainq.models.spec import ActivationSpec, DenseSpec, DropoutSpec, JobSpec, Shape

LAYERS = Registry("layer")
INITS = Registry("init")


@LAYERS.register("dense")
def dense(spec: DenseSpec, shape: Shape) -> nn.Module:
    return nn.Linear(shape[0], spec.units, bias=spec.bias)


@LAYERS.register("activation")
def activation(spec: ActivationSpec, shape: Shape) -> nn.Module:
    return {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[spec.fn]()


@LAYERS.register("dropout")
def dropout(spec: DropoutSpec, shape: Shape) -> nn.Module:
    return nn.Dropout(spec.p)


# Weight initialization. Random schemes break the symmetry of hidden units; zeros keep them identical.
@INITS.register("zeros")
def init_zeros(w: torch.Tensor) -> None:
    nn.init.zeros_(w)


@INITS.register("normal")
def init_normal(w: torch.Tensor) -> None:
    nn.init.normal_(w, 0.0, 0.01)


@INITS.register("uniform")
def init_uniform(w: torch.Tensor) -> None:
    nn.init.uniform_(w, -0.05, 0.05)


@INITS.register("xavier")
def init_xavier(w: torch.Tensor) -> None:
    nn.init.xavier_uniform_(w)


@INITS.register("he")
def init_he(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, nonlinearity="relu")


@INITS.register("lecun")
def init_lecun(w: torch.Tensor) -> None:
    nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1]))


def build_model(spec: JobSpec) -> nn.Sequential:
    """Build the spec's layers in order, initialized by the spec's scheme (biases start at zero)."""
    shape: Shape = (spec.dataset.info().features,)
    modules = []
    for layer in spec.model.layers:
        modules.append(LAYERS[layer.type](layer, shape))
        shape = layer.output_shape(shape)
    model = nn.Sequential(*modules)
    init = INITS[spec.model.init]
    for module in model.modules():
        if isinstance(module, nn.Linear):
            init(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
