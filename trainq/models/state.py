"""What every part of a run shares: the State the loop works on (a checkpoint is this, serialized) and the Callback
hooks the loop calls with it. It imports nothing of ours that uses a State, so the engine, the callbacks, checkpoints
and the reporter can each import it without importing each other."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from trainq.models.datasets import Data
    from trainq.models.losses import Objective
    from trainq.models.optimizers import Schedule
    from trainq.models.spec import JobSpec


class Callback:
    """Hooks the engine calls; every method is optional."""

    def on_train_start(self, state: State) -> None: ...
    def on_log(self, state: State, metrics: dict[str, float]) -> None: ...  # every log_every_steps
    def on_batch_end(self, state: State) -> None: ...  # a streamed run's, batch_in_epoch set to the batches done
    def on_epoch_end(self, state: State) -> None: ...
    def on_train_end(self, state: State) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class State:
    """Everything the loop works on; a checkpoint is this, serialized."""

    spec: JobSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule | None
    objective: Objective
    data: Data
    device: torch.device
    generator: torch.Generator  # shuffles the training split, seeded by training.seed
    tracker: Callback  # the run's EarlyStopping (callbacks.py): the monitored metric, its best epoch and weights
    augment: Any = None  # a module applied to training batches of images
    callbacks: list[Callback] = field(default_factory=list)
    interrupt: threading.Event = field(default_factory=threading.Event)  # set from outside to cancel
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    metrics: dict[str, float] = field(default_factory=dict)  # of the last epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    should_stop: bool = False
    stop_reason: str = "completed"
    amp: torch.dtype | None = None  # autocast dtype of forward passes (bf16), None for fp32
    channels_last: bool = False  # image batches and conv weights in NHWC
    on_host: bool = False  # the dataset stays in host memory; batches are copied to the device
    world: int = 1  # data-parallel replicas (DDP), one process each; this one is `rank`
    rank: int = 0
    train_model: nn.Module | None = None  # the DistributedDataParallel wrapper when world > 1
    rng: torch.Generator | None = None  # what dropout and noise draw from when not the global generator (a pack member)
    noise_var: float | None = None  # Bayesian regression: the homoscedastic noise variance (target units) last fitted
    # An epoch interrupted part-way (a drain): the batches it finished, their summed loss (for its train_loss), and
    # the shuffle generator's state when it began (its permutation); a checkpoint carries them to resume at that batch.
    batch_in_epoch: int = 0
    epoch_loss: float = 0.0
    epoch_rng: torch.Tensor | None = None

    def interrupted(self) -> bool:
        """Whether to stop now. With replicas, rank 0 decides (it hears cancels and pruners) and all follow."""
        if self.world == 1:
            return self.interrupt.is_set()
        import torch.distributed as dist

        flag = torch.tensor([1 if self.rank == 0 and self.interrupt.is_set() else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())
