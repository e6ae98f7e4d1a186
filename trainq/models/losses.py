"""Losses: each loss type of the spec has one builder returning an Objective (the loss and how to read a class)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from trainq.models.registry import Registry
from trainq.models.spec import JobSpec

LOSSES = Registry("loss")


@dataclass
class Objective:
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the batch
    predict: Callable[[torch.Tensor], torch.Tensor] | None  # outputs -> class labels; None for regression


def _argmax(out: torch.Tensor) -> torch.Tensor:
    return out.argmax(dim=1)


@LOSSES.register("mse")
def mse(spec: JobSpec, units: int) -> Objective:
    classes = spec.dataset.info().classes
    if classes is None:
        return Objective(F.mse_loss, None)
    if units == classes:  # one-hot targets, the class is the largest output
        return Objective(lambda out, y: F.mse_loss(out, F.one_hot(y, classes).to(out.dtype)), _argmax)
    # one output unit regressing the class index
    return Objective(lambda out, y: F.mse_loss(out.squeeze(1), y.to(out.dtype)),
                     lambda out: out.squeeze(1).round().clamp(0, classes - 1).long())


@LOSSES.register("bce")
def bce(spec: JobSpec, units: int) -> Objective:
    return Objective(lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(1), y.to(out.dtype)),
                     lambda out: (out.squeeze(1) > 0).long())


@LOSSES.register("cross_entropy")
def cross_entropy(spec: JobSpec, units: int) -> Objective:
    smoothing = spec.loss.label_smoothing
    return Objective(lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing), _argmax)


def build_objective(spec: JobSpec, units: int) -> Objective:
    return LOSSES[spec.loss.type](spec, units)
