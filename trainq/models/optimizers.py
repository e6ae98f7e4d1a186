"""Optimizers and learning-rate schedules: one builder per spec name."""

from __future__ import annotations

from typing import Iterable

import torch

from trainq.models.registry import Registry
from trainq.models.spec import JobSpec

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


# L2 is coupled, as in the course's update rule: theta <- theta - lr * (dL/dtheta + l2 * theta),
# which is exactly what torch's weight_decay does for SGD and Adam.
@OPTIMIZERS.register("sgd")
def sgd(spec: JobSpec, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    o = spec.optimizer
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=spec.regularization.l2, foreach=True)


@OPTIMIZERS.register("adam")
def adam(spec: JobSpec, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    o = spec.optimizer
    return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=spec.regularization.l2,
                            foreach=True)


@SCHEDULES.register("none")
def no_schedule(spec: JobSpec, optimizer: torch.optim.Optimizer) -> None:
    return None


@SCHEDULES.register("cosine")
def cosine(spec: JobSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.training.epochs, eta_min=spec.schedule.min_lr)


@SCHEDULES.register("step")
def step(spec: JobSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    s = spec.schedule
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)


def build_optimizer(spec: JobSpec, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.optimizer.type](spec, params)


def build_schedule(spec: JobSpec, optimizer: torch.optim.Optimizer):
    return SCHEDULES[spec.schedule.type](spec, optimizer)
