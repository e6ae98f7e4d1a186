"""Losses: each loss type of the spec has one builder returning an Objective (the loss and how to read outputs).

The course's formulas are here as plain functions too (with a log base, as the course writes them), and the
training losses are built from them where torch has no equivalent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from trainq.models.registry import Registry
from trainq.models.spec import JobSpec

LOSSES = Registry("loss")

# ---------------------------------------------------------------------------------------------------------------------
# The course's formulas
# ---------------------------------------------------------------------------------------------------------------------


def binary_cross_entropy(o: torch.Tensor, y: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """-(y log o + (1 - y) log(1 - o)), in the given log base."""
    return -(y * torch.log(o) + (1 - y) * torch.log1p(-o)) / math.log(base)


def half_squared_error(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y - o) ** 2


def negative_log_likelihood(p_y: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """-log p_y of the true class's probability, in the given log base."""
    return -torch.log(p_y) / math.log(base)


def multiclass_hinge(scores: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin) per row: the sum form, not divided by the class count."""
    true = scores.gather(1, y.unsqueeze(1))
    losses = (scores - true + margin).clamp_min(0)
    return losses.sum(dim=1) - margin  # the j = y term contributes exactly max(0, margin) = margin


def perceptron_criterion(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """max(0, -t s) with t in {-1, +1}: its gradient step on a mistake is the perceptron rule w += lr t x."""
    return (-t * s).clamp_min(0)


def l1_norm(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sum()


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum().sqrt()


def mdn_split(out: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split an mdn head's output into mixing log-weights (log softmax), means and standard deviations (exp)."""
    k = components
    d = (out.shape[1] // k - 1) // 2
    log_pi = F.log_softmax(out[:, :k], dim=1)
    mu = out[:, k:k + k * d].view(-1, k, d)
    sigma = out[:, k + k * d:].view(-1, k, d).clamp(-7, 7).exp()  # kept positive, and away from 0 and inf
    return log_pi, mu, sigma


def mdn_nll(out: torch.Tensor, y: torch.Tensor, components: int) -> torch.Tensor:
    """-log sum_k pi_k N(y | mu_k, sigma_k^2), per row."""
    log_pi, mu, sigma = mdn_split(out, components)
    z = (y.unsqueeze(1) - mu) / sigma
    log_normal = (-0.5 * z ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(dim=2)
    return -torch.logsumexp(log_pi + log_normal, dim=1)


def gaussian_split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A heteroscedastic head's (N, 2) outputs as the mean and the noise variance (softplus, kept above 1e-6), each
    (N, 1), in standardized target units."""
    return out[..., :1], F.softplus(out[..., 1:2]) + 1e-6


def gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log N(y | mean, variance), per row (with its constant, so it is comparable to mdn_nll and the test NLL)."""
    mean, var = gaussian_split(out)
    return (0.5 * torch.log(2 * math.pi * var) + 0.5 * (y - mean) ** 2 / var).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Objective:
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the batch
    predict: Callable[[torch.Tensor], torch.Tensor] | None  # outputs -> class labels; None for regression
    point: Callable[[torch.Tensor], torch.Tensor] = lambda out: out  # regression: outputs -> (N, 1) prediction
    probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None  # for averaging test-time augmentations


def _argmax(out: torch.Tensor) -> torch.Tensor:
    return out.argmax(dim=1)


def _weights(spec: JobSpec, like: torch.Tensor) -> torch.Tensor | None:
    w = getattr(spec.loss, "class_weights", None)
    return None if w is None else torch.tensor(w, dtype=like.dtype, device=like.device)


def _regression_or_classes(spec: JobSpec, units: int, fn) -> Objective:
    """mse, mae and huber: plain regression, one-hot targets over all classes, or one unit regressing the index."""
    classes = spec.dataset.info().classes
    if classes is None:
        return Objective(fn, None)
    if units == classes:
        return Objective(lambda out, y: fn(out, F.one_hot(y, classes).to(out.dtype)), _argmax,
                         probabilities=lambda out: out)
    return Objective(lambda out, y: fn(out.squeeze(1), y.to(out.dtype)),
                     lambda out: out.squeeze(1).round().clamp(0, classes - 1).long())


@LOSSES.register("mse")
def mse(spec: JobSpec, units: int) -> Objective:
    return _regression_or_classes(spec, units, F.mse_loss)


@LOSSES.register("mae")
def mae(spec: JobSpec, units: int) -> Objective:
    return _regression_or_classes(spec, units, F.l1_loss)


@LOSSES.register("huber")
def huber(spec: JobSpec, units: int) -> Objective:
    delta = spec.loss.delta
    return _regression_or_classes(spec, units, lambda out, y: F.huber_loss(out, y, delta=delta))


@LOSSES.register("bce")
def bce(spec: JobSpec, units: int) -> Objective:
    pos = spec.loss.pos_weight

    def loss(out, y):
        weight = None if pos is None else torch.tensor(pos, dtype=out.dtype, device=out.device)
        return F.binary_cross_entropy_with_logits(out.squeeze(1), y.to(out.dtype), pos_weight=weight)

    return Objective(loss, lambda out: (out.squeeze(1) > 0).long(),
                     probabilities=lambda out: torch.cat([1 - torch.sigmoid(out), torch.sigmoid(out)], dim=1))


@LOSSES.register("cross_entropy")
def cross_entropy(spec: JobSpec, units: int) -> Objective:
    smoothing = spec.loss.label_smoothing
    return Objective(lambda out, y: F.cross_entropy(out, y, weight=_weights(spec, out), label_smoothing=smoothing),
                     _argmax, probabilities=lambda out: F.softmax(out, dim=1))


@LOSSES.register("nll")
def nll(spec: JobSpec, units: int) -> Objective:
    # The model ends in a softmax (the spec checks it); clamp so a probability of exactly 0 costs a finite loss.
    return Objective(lambda out, y: F.nll_loss(out.clamp_min(1e-12).log(), y, weight=_weights(spec, out)),
                     _argmax, probabilities=lambda out: out)


@LOSSES.register("hinge")
def hinge(spec: JobSpec, units: int) -> Objective:
    margin = spec.loss.margin
    return Objective(lambda out, y: multiclass_hinge(out, y, margin).mean(), _argmax)


@LOSSES.register("perceptron")
def perceptron(spec: JobSpec, units: int) -> Objective:
    return Objective(lambda out, y: perceptron_criterion(out.squeeze(1), 2 * y.to(out.dtype) - 1).mean(),
                     lambda out: (out.squeeze(1) >= 0).long())


@LOSSES.register("mdn_nll")
def mdn_loss(spec: JobSpec, units: int) -> Objective:
    k = spec.model.output_layer.components

    def point(out):  # the mixture's mean, sum_k pi_k mu_k
        log_pi, mu, _ = mdn_split(out, k)
        return (log_pi.exp().unsqueeze(2) * mu).sum(dim=1)

    return Objective(lambda out, y: mdn_nll(out, y, k).mean(), None, point)


@LOSSES.register("gaussian_nll")
def gaussian_loss(spec: JobSpec, units: int) -> Objective:
    return Objective(lambda out, y: gaussian_nll(out, y).mean(), None, lambda out: out[..., :1])


def build_objective(spec: JobSpec, units: int) -> Objective:
    return LOSSES[spec.loss.type](spec, units)
