"""How a run trains (epochs, batches, early stopping, placement), its Bayesian inference, and where it runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainq.models.spec.base import Spec


class EarlyStoppingSpec(Spec):
    monitor: str = Field("val_loss", max_length=64)
    mode: Literal["min", "max"] | None = None  # None: min for losses and errors, max for accuracy and r2
    patience: int = Field(10, ge=0, le=100_000)  # epochs without improvement before stopping
    min_delta: float = Field(0.0, ge=0)  # an improvement smaller than this does not count
    restore_best: bool = True

    @property
    def resolved_mode(self) -> str:
        return improves(self.monitor, self.mode)


def improves(monitor: str, mode: str | None = None) -> str:
    """Which way a monitored metric gets better: `mode` if given, else max for accuracy and R², min for the rest."""
    return mode or ("max" if monitor.endswith(("accuracy", "r2")) else "min")


class TrainingSpec(Spec):
    epochs: int = Field(10, gt=0, le=100_000)
    batch_size: Annotated[int, Field(gt=0, le=1_000_000)] | Literal["full"] = 32  # full: the whole split
    seed: int = Field(0, ge=0, le=2**32 - 1)
    early_stopping: EarlyStoppingSpec | None = None
    log_every_steps: int = Field(10, gt=0, le=1_000_000)  # train loss is reported every this many steps
    keep_checkpoints: int = Field(2, ge=1, le=100)  # latest checkpoints kept, besides the best
    # A checkpoint when this many seconds passed since the last (0: after every epoch); also on a new best when the
    # last best checkpoint is older than that, after the last epoch or an early stop, and where the run is
    # interrupted (a cancel, a pruner, a worker's SIGTERM or drain: mid-epoch, resumed exactly at that batch).
    checkpoint_every_seconds: float = Field(30, ge=0, le=86_400)
    # Each batch is split into this many micro-batches whose gradients add up before one optimizer step: the same
    # effective batch with a fraction of the activation memory (set by the out-of-memory retry, or by hand).
    accumulate_steps: int = Field(1, ge=1, le=1024)
    # auto: bf16 autocast on a GPU that computes in bf16 (compute capability 8.0 on), fp32 elsewhere. bf16 also works
    # on CPU, where it is rarely faster.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"  # auto: for image data (models with convolutions)
    compile: bool = False  # torch.compile; a worker's warm process reuses the compiled graph of the same architecture
    # device: the whole dataset lives on the training device (batches by indexing); host: it stays in (pinned) host
    # memory and each batch is copied over, for data that does not fit; stream: an uploaded table is read from shards
    # on disk with a fixed memory budget (TRAINQ_DATA_MEMORY_MB), in an order drawn from (seed, epoch); auto: an
    # uploaded table larger than the budget streams, other data goes on the device unless it would take more than a
    # quarter of the GPU's free memory.
    data_placement: Literal["auto", "device", "host", "stream"] = "auto"


POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class InferenceSpec(Spec):
    """Approximate Bayesian inference: predictions average Monte Carlo samples of the posterior (variational,
    mc_dropout), or the members of a deep ensemble (ensemble: `members` networks from seeds training.seed,
    training.seed + 1, ..., trained together as one stacked model, their predictions a uniform mixture)."""

    method: Literal["variational", "mc_dropout", "ensemble"]
    samples: int = Field(50, ge=1, le=1000)  # Monte Carlo samples for the test split and predictions
    val_samples: int = Field(10, ge=1, le=1000)  # for the per-epoch validation metrics
    kl_weight: float = Field(1.0, ge=0, le=1_000_000)  # beta: loss = mean NLL + beta * KL / N_train
    kl_warmup_epochs: int = Field(0, ge=0, le=100_000)  # beta rises linearly from beta / warmup to beta
    members: int = Field(5, ge=2, le=64)  # ensemble: how many networks
    # regression's noise: homoscedastic, fitted on the validation split or fixed; or learned per input (gaussian_nll)
    noise: Literal["validation", "fixed", "learned"] = "validation"
    noise_sigma: float | None = Field(None, gt=0, le=1e9)  # with noise: fixed, in the target's units

    @property
    def draws(self) -> int:
        """How many predictions a final answer averages: the members of an ensemble, else `samples`."""
        return self.members if self.method == "ensemble" else self.samples

    def unused(self) -> set[str]:
        return ({"kl_weight", "kl_warmup_epochs"} if self.method != "variational" else set()) | (
            {"noise_sigma"} if self.noise != "fixed" else set()) | (
            {"samples", "val_samples"} if self.method == "ensemble" else {"members"})


class ResourcesSpec(Spec):
    pool: str = Field("cpu", pattern=POOL_PATTERN)
    priority: int = Field(0, ge=-100, le=100)
    device: Literal["any", "cpu", "gpu"] = "any"  # gpu: only a GPU worker of the pool takes it; cpu: only a CPU one
    gpus: int = Field(1, ge=1, le=16)  # > 1: data-parallel (DDP) over this many GPUs of one worker

    @model_validator(mode="after")
    def _gpus_need_a_gpu(self):
        if self.gpus > 1 and self.device == "cpu":
            raise ValueError("gpus > 1 trains on several GPUs: device must be gpu or any")
        return self

