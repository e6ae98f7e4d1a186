"""The training engine: build a run from a spec and train it, in mini-batches, with early stopping.

Read `fit` top to bottom. The dataset lives as tensors on the device; batches are a seeded permutation
and indexing (no DataLoader); losses accumulate on the device and are read once per reporting interval,
so no step waits on the host.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from trainq.models.augment import build_augmentation, tta_views
from trainq.models.bayes import (classification_measures, fit_noise, kl_divergence, regression_measures,
                                 sampling_mode)
from trainq.models.callbacks import Checkpointer, EarlyStopping
from trainq.models.checkpoint import restore
from trainq.models.datasets import Data, Split, load
from trainq.models.distributed import fit_data_parallel
from trainq.models.layers import build_model
from trainq.models.losses import build_objective, gaussian_split
from trainq.models.optimizers import build_optimizer, build_schedule, decoupled_decay
from trainq.models.spec import JobSpec, batch_size, ensemble_members, plan
from trainq.models.stacked import Ensemble, clip_members_
from trainq.models.state import Callback, State
from trainq.models.streams import ShardedSplit

EVAL_BATCH = 8192  # rows per evaluation batch; evaluation keeps no graph, so this can be large
# Below this many multiply-adds per training step (forward and backward, ~3x the forward), splitting each op
# across threads saves nothing (digits MLP: 1.7 M, same speed on 1 or 2 threads; on a loaded machine 1 thread is
# much faster) while a small CNN (19 M) is ~25% faster on two threads than on one.
PARALLEL_STEP_FLOPS = 5_000_000


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run cannot recover, so it fails with the step it happened at."""


@dataclass
class Result:
    stop_reason: str  # completed | early_stopped | cancelled
    epochs: int
    best_epoch: int | None
    metrics: dict[str, Any]  # the final metrics: test split (and its confusion matrix), best monitored value
    history: list[dict[str, float]]
    setup_seconds: float
    train_seconds: float


# ---------------------------------------------------------------------------------------------------------------------
# Building a run
# ---------------------------------------------------------------------------------------------------------------------


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tracker_for(spec: JobSpec, data: Data) -> EarlyStopping:
    """The early-stopping callback of the spec, or one that only tracks the best epoch."""
    es = spec.training.early_stopping
    if es is not None:
        return EarlyStopping(es.monitor, es.resolved_mode, es.patience, es.min_delta, es.restore_best)
    monitor = "val_loss" if len(data.val) else "train_loss"
    return EarlyStopping(monitor, "min", patience=None)


def build(spec: JobSpec, *, device: str | torch.device | None = None, callbacks: Sequence[Callback] = (),
          checkpoint_sink: Callable[[bytes, dict], None] | None = None, resume: bytes | None = None,
          arrays: tuple | None = None) -> State:
    """Load the data (or take the given arrays of an upload), build model, loss and optimizer from the spec,
    and restore a checkpoint if given."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    units = plan(spec).output_shape[0]
    torch.manual_seed(spec.training.seed)  # model init and dropout draw from the global generator
    data = load(spec.dataset, arrays)
    on_host = placement(spec, data, device) == "host"
    data = data.pinned(device) if on_host and device.type == "cuda" else (data if on_host else data.to(device))
    members = ensemble_members(spec)
    rng = torch.Generator(device).manual_seed(spec.training.seed) if members else None
    model = (build_ensemble(spec, data.train.x.shape[1:], members, rng) if members
             else build_model(spec, data.train.x.shape[1:])).to(device)
    # NHWC: measured 22% faster than NCHW for the small CNN of bench/engine_speed.py on this CPU (oneDNN), and the
    # layout tensor cores want on a GPU.
    channels_last = (spec.training.channels_last if isinstance(spec.training.channels_last, bool)
                     else data.train.x.dim() == 4)
    if channels_last and data.train.x.dim() == 4:
        if members:  # stacked kernels are 5-D (member first): the ensemble lays out its inputs NHWC itself
            model.channels_last = True
        else:
            model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(spec, model.parameters())
    generator = torch.Generator().manual_seed(spec.training.seed)
    tracker = tracker_for(spec, data)
    all_callbacks: list[Callback] = [tracker]
    if checkpoint_sink is not None:
        all_callbacks.append(Checkpointer(checkpoint_sink, tracker, spec.training.checkpoint_every_seconds))
    all_callbacks.extend(callbacks)
    state = State(spec=spec, model=model, optimizer=optimizer, scheduler=build_schedule(spec, optimizer),
                  objective=build_objective(spec, units), data=data, device=device, generator=generator,
                  tracker=tracker, augment=build_augmentation(spec, data, device), callbacks=all_callbacks,
                  amp=autocast_dtype(spec, device), channels_last=channels_last and data.train.x.dim() == 4,
                  on_host=on_host, rng=rng)
    if resume is not None:
        restore(state, resume)
    return state


def build_ensemble(spec: JobSpec, shape, members: int, generator: torch.Generator) -> Ensemble:
    """An ensemble's members stacked in one module, member m initialized as the spec alone with training.seed + m
    would be; dropout and noise draw from `generator`."""
    models = []
    for m in range(members):
        torch.manual_seed(spec.training.seed + m)
        models.append(build_model(spec, shape))
    torch.manual_seed(spec.training.seed)
    return Ensemble(models, len(shape), generator)


def placement(spec: JobSpec, data: Data, device: torch.device) -> str:
    """Where the dataset lives while training: on the device, or in host memory with batches copied over (a
    streamed table: read from its shards on disk, a batch at a time)."""
    if isinstance(data.train, ShardedSplit):
        return "host"
    wanted = spec.training.data_placement
    if wanted != "auto":
        return wanted
    if device.type != "cuda":
        return "device"  # on CPU the two are the same memory
    size = sum(t.numel() * t.element_size() for split in (data.train, data.val, data.test) for t in (split.x, split.y))
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if size <= free // 4 else "host"


def autocast_dtype(spec: JobSpec, device: torch.device) -> torch.dtype | None:
    precision = spec.training.precision
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 in hardware: a CUDA GPU of compute capability 8.0 or later (A100, H100, L4,
    RTX 30xx and on). torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (T4, V100), which is
    slower than fp32 there, and it asks about the current GPU rather than the run's."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def forward(state: State, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs for a batch on the device, in fp32: under bf16 autocast if the run uses it, NHWC if it
    uses that."""
    if state.channels_last and x.dim() == 4:  # (an ensemble's members' own batches are 5-D: it lays them out itself)
        x = x.contiguous(memory_format=torch.channels_last)
    if state.amp is None:
        return net(x)
    with torch.autocast(state.device.type, dtype=state.amp):
        return net(x).float()


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def cpu_threads(spec: JobSpec, available: int) -> int:
    """Intra-op threads for a CPU run: one when a step is too small to split, else all `available`."""
    step_flops = 3 * plan(spec).flops_per_example * batch_size(spec)
    return 1 if step_flops < PARALLEL_STEP_FLOPS else max(1, available)


def fit(spec: JobSpec, *, device: str | torch.device | None = None, callbacks: Sequence[Callback] = (),
        checkpoint_sink: Callable[[bytes, dict], None] | None = None, resume: bytes | None = None,
        interrupt: threading.Event | None = None, arrays: tuple | None = None, threads: int | None = None,
        world: int = 1) -> Result:
    """Train a spec to the end, an early stop, or an interrupt; return the final metrics.

    On CPU, `threads` (default: chosen from the work per step, up to torch's current setting) is set for the
    run and restored after it. With `world` > 1 the run is data-parallel (DDP): this process is rank 0 and runs the
    callbacks; `world - 1` replicas are started beside it (one per GPU on CUDA, gloo processes on CPU).
    """
    kind = pick_device(device if not isinstance(device, torch.device) else str(device)).type
    if world > 1:
        return fit_data_parallel(_fit, spec, world, kind=kind, callbacks=callbacks, checkpoint_sink=checkpoint_sink,
                                 resume=resume, interrupt=interrupt, arrays=arrays, threads=threads)
    previous = torch.get_num_threads()
    if kind == "cpu":
        torch.set_num_threads(threads or cpu_threads(spec, previous))
    try:
        return _fit(spec, device=device, callbacks=callbacks, checkpoint_sink=checkpoint_sink, resume=resume,
                    interrupt=interrupt, arrays=arrays)
    finally:
        torch.set_num_threads(previous)


@contextmanager
def fp32_numerics(spec: JobSpec, device) -> Any:
    """`precision: fp32` on a GPU computes convolutions in fp32 too: torch lets cuDNN round their inputs to TF32 (a
    10-bit mantissa) by default. Measured on an H200: packed CNN trials drifted 1.8e-3 from the same trials alone in
    three epochs with it, 1e-6 without. (Matrix products are fp32 already: torch's matmul default is "highest".)"""
    kind = device.type if isinstance(device, torch.device) else pick_device(device).type
    if kind != "cuda" or spec.training.precision != "fp32":
        yield
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def _fit(spec: JobSpec, *, device, **kwargs) -> Result:
    """One run (or one replica of a data-parallel run), under the numerics its precision asks for."""
    with fp32_numerics(spec, device):
        return _train(spec, device=device, **kwargs)


def _train(spec: JobSpec, *, device, callbacks, checkpoint_sink, resume, interrupt, arrays, rank: int = 0,
           world: int = 1) -> Result:
    started = time.perf_counter()
    state = build(spec, device=device, callbacks=callbacks, checkpoint_sink=checkpoint_sink, resume=resume,
                  arrays=arrays)
    if interrupt is not None:
        state.interrupt = interrupt
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        state.world, state.rank = world, rank
        state.train_model = DistributedDataParallel(
            state.model, device_ids=[state.device] if state.device.type == "cuda" else None)
    if spec.training.compile:
        # Dynamo keys its cache on the code and guards on shapes and dtypes, with parameters as inputs: the next job
        # of the same architecture in this (warm) worker process reuses the compiled graph instead of recompiling.
        state.train_model = torch.compile(state.train_model or state.model)
    setup_seconds = time.perf_counter() - started

    for cb in state.callbacks:
        cb.on_train_start(state)
    for _ in range(state.epoch, spec.training.epochs):
        train_one_epoch(state)
        if state.interrupted():
            state.stop_reason = "cancelled"
            break
        state.epoch += 1
        schedule = state.scheduler
        rate = {"lr": state.optimizer.param_groups[0]["lr"]} if schedule is not None else {}  # as the epoch trained
        state.metrics = {"epoch": state.epoch, **state.metrics, **evaluate(state, state.data.val, "val"), **rate}
        state.history.append(state.metrics)
        if schedule is not None and schedule.every == "epoch":
            if schedule.on_metric:
                schedule.scheduler.step(state.metrics.get("val_loss", state.metrics["train_loss"]))
            else:
                schedule.scheduler.step()
        for cb in state.callbacks:
            cb.on_epoch_end(state)
        if state.should_stop:
            break
        if state.interrupted():  # asked during the epoch's end (a sweep's pruner): stop before another batch
            state.stop_reason = "cancelled"
            break
    for cb in state.callbacks:
        cb.on_train_end(state)

    final: dict[str, Any] = {}
    if state.stop_reason != "cancelled":
        final = evaluate(state, state.data.test, "test", tta=True, confusion=True)
        if state.best_score is not None:
            final[f"best_{state.tracker.monitor}"] = state.best_score
    return Result(state.stop_reason, state.epoch, state.best_epoch, final, state.history, setup_seconds,
                  time.perf_counter() - started - setup_seconds)


class WaitClock:
    """Seconds this process's training loops spent waiting for their next batch, on the host clock (no device sync):
    a worker's system sampler reads it to chart the data-loading share of the time."""

    def __init__(self):
        self.seconds = 0.0


DATA_WAIT = WaitClock()


def timed(batches: Iterator) -> Iterator:
    clock = time.perf_counter
    while True:
        started = clock()
        try:
            item = next(batches)
        except StopIteration:
            return
        finally:
            DATA_WAIT.seconds += clock() - started
        yield item


def train_one_epoch(state: State) -> None:
    """One pass over the training split in shuffled mini-batches; sets metrics['train_loss']."""
    spec, model, train = state.spec, state.model, state.data.train
    reg = spec.regularization
    params = [p for p in model.parameters() if p.requires_grad]
    decay = decoupled_decay(spec) if spec.optimizer.type != "adamw" else 0.0  # adamw decays by itself
    per_step = state.scheduler if state.scheduler is not None and state.scheduler.every == "step" else None
    closure_step = spec.optimizer.type == "lbfgs"  # quasi-Newton re-evaluates the loss inside its step
    n, size, log_every = len(train), batch_size(spec), spec.training.log_every_steps
    micro = min(spec.training.accumulate_steps, size)
    net = state.train_model or model  # with replicas, DDP averages the gradients of their shards (compiled or not)
    objective_loss = training_loss(state)
    members = ensemble_members(spec)
    model.train()
    resumed = state.batch_in_epoch  # batches of this epoch done before an interruption: resumed at the next one
    streamed = isinstance(train, ShardedSplit)  # read from shards, in an order drawn from (seed, epoch)

    def batches() -> Iterator[tuple[int, torch.Tensor, torch.Tensor, float]]:
        """(batch number, x, y, the weight of its loss) of this epoch from batch `resumed` on."""
        if streamed:
            for batch, x, y in train.batches(spec.training.seed, state.epoch, size, resumed):
                yield batch, x, y, 1.0
            return
        if resumed and state.epoch_rng is not None:  # redraw the interrupted epoch's permutation
            state.generator.set_state(state.epoch_rng)
        state.epoch_rng = state.generator.get_state()
        # an ensemble's members each draw their own permutation: (M, n) row indices, a (M, B) batch of them per step
        order = (torch.stack([torch.randperm(n, generator=state.generator) for _ in range(members)]) if members
                 else torch.randperm(n, generator=state.generator))
        if not state.on_host:
            order = order.to(state.device)
        for batch, start in enumerate(range(0, n, size)):
            if batch < resumed:
                continue
            idx = order[..., start:start + size]
            batch_rows = idx.shape[-1]
            share = float(members) if members else 1.0  # the members' mean loss, each member's gradient its own
            if state.world > 1:  # every replica draws the same permutation and takes its shard of each batch
                shard = idx.tensor_split(state.world)[state.rank]
                # DDP averages shard gradients: weighting each shard's mean loss by its share of the batch makes that
                # average the whole batch's mean gradient, as in one process, even when shards differ in size. A
                # replica with no row in a short last batch still takes part (with weight 0): DDP needs every one.
                share = len(shard) * state.world / batch_rows
                idx = shard if len(shard) else idx[:1]
            yield batch, train.x[idx], train.y[idx], share

    losses: list[torch.Tensor] = []  # detached batch losses, still on the device: summed once per interval
    logged = 0  # how many of them the last report covered
    for batch, x, y, share in timed(batches()):
        if state.on_host:  # streamed from host memory, one batch at a time
            x, y = x.to(state.device, non_blocking=True), y.to(state.device, non_blocking=True)
        x = train.decode(x)  # uint8 pixels become float here, a batch at a time, on the device
        if state.augment is not None:
            x = state.augment(x)
        if reg.input_noise:
            x = x + reg.input_noise * torch.randn_like(x)

        def closure() -> torch.Tensor:
            state.optimizer.zero_grad(set_to_none=True)
            if micro == 1:
                batch_loss = objective_loss(forward(state, net, x), y)
                (batch_loss * share if share != 1.0 else batch_loss).backward()
            else:  # gradient accumulation: each part weighted by its share of the batch, so the sum is the mean
                batch_loss = x.new_zeros(())
                for xs, ys in zip(x.tensor_split(micro), y.tensor_split(micro)):
                    if len(xs):
                        part = objective_loss(forward(state, net, xs), ys) * (len(xs) / len(x))
                        (part * share).backward()
                        batch_loss = batch_loss + part.detach()
            if reg.l1:
                with_grad = [p for p in params if p.grad is not None]
                torch._foreach_add_([p.grad for p in with_grad], torch._foreach_sign(with_grad), alpha=reg.l1)
            if reg.max_grad_norm and members:
                clip_members_(params, reg.max_grad_norm, members)
            elif reg.max_grad_norm:
                nn.utils.clip_grad_norm_(params, reg.max_grad_norm, foreach=True)
            return batch_loss

        if closure_step:
            loss = state.optimizer.step(closure)
        else:
            loss = closure()
            state.optimizer.step()
        if decay:
            with torch.no_grad():
                torch._foreach_mul_(params, 1 - state.optimizer.param_groups[0]["lr"] * decay)
        if per_step is not None:
            per_step.scheduler.step()
        state.step += 1
        losses.append(loss.detach())
        if streamed:  # a host sync per batch (cheap beside reading shards): the epoch's sum in one fixed order, so
            state.epoch_loss += float(loss.detach()) * len(y)  # a resumed epoch adds up as an uninterrupted one
        if state.step % log_every == 0:
            value = torch.stack(losses[logged:]).mean().item()  # the one host sync per reporting interval
            logged = len(losses)
            _check_finite(value, state.step)
            for cb in state.callbacks:
                cb.on_log(state, {"train_loss_step": value})
        if state.world == 1 and state.interrupt.is_set():  # replicas stop together, at the epoch's end
            # stopped part-way: where, for a checkpoint to resume at the next batch
            state.batch_in_epoch = batch + 1
            if not streamed:
                done = torch.stack(losses) * torch.tensor([min(size, n - (resumed + i) * size)
                                                           for i in range(len(losses))], device=losses[0].device)
                state.epoch_loss += float(done.sum())
            return
        if streamed:  # a long epoch: checkpoints on the clock part-way through it, resumed at the next batch
            state.batch_in_epoch = batch + 1
            for cb in state.callbacks:
                cb.on_batch_end(state)
            state.batch_in_epoch = 0
    # the epoch's mean loss per example: batches weighted by their size (the last one may be smaller)
    if state.world > 1:
        shards = [idx_len for idx_len in _shard_sizes(n, size, state.world, state.rank)]
        sizes = torch.tensor(shards, dtype=torch.float32, device=state.device)
    else:
        sizes = torch.full((len(losses),), float(size), device=state.device)
        if losses:
            sizes[-1] = n - size * (resumed + len(losses) - 1)
    if streamed:
        epoch_sum = torch.tensor(state.epoch_loss, dtype=torch.float64)
    else:
        epoch_sum = state.epoch_loss + (  # the batches before an interruption, and since
            (torch.stack(losses) * sizes).sum() if losses else torch.zeros((), device=state.device))
    state.batch_in_epoch, state.epoch_loss = 0, 0.0
    if state.world > 1:
        import torch.distributed as dist

        dist.all_reduce(epoch_sum)  # every replica's share: the same train_loss on all of them
    train_loss = (epoch_sum / n).item()
    _check_finite(train_loss, state.step)
    state.metrics = {"train_loss": train_loss}
    if variational(state.spec):
        with torch.no_grad():
            state.metrics["train_kl"] = float(kl_divergence(model)) / n  # per training row, in nats
        if not resumed:  # the data term on the same scale as val_loss (the KL is charted apart)
            state.metrics["train_nll"] = float(objective_loss.data_sum) / n


def variational(spec: JobSpec) -> bool:
    return spec.inference is not None and spec.inference.method == "variational"


def training_loss(state: State) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The objective's loss; for a variational run, mean NLL + beta * KL / N_train with N_train the training rows
    (not the batch: each batch's loss is a mean, so the whole epoch adds up to one KL)."""
    base = state.objective.loss
    if ensemble_members(state.spec):  # (M, B, outputs) against (M, B, ...): the mean of the members' mean losses

        def members_mean(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.stack([base(o, t) for o, t in zip(out, y)]).mean()

        return members_mean
    if not variational(state.spec):
        return base
    inference, rows, model = state.spec.inference, len(state.data.train), state.model
    warmup = inference.kl_warmup_epochs
    beta = inference.kl_weight * (min(1.0, (state.epoch + 1) / warmup) if warmup else 1.0)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        data = base(out, y)
        loss.data_sum = loss.data_sum + data.detach() * len(y)  # the data term alone, summed over the epoch's rows
        return data + beta * kl_divergence(model) / rows

    loss.data_sum = 0.0
    return loss


def _shard_sizes(n: int, size: int, world: int, rank: int) -> list[int]:
    """The rows this replica trained on in each batch of an epoch (tensor_split's split of each batch)."""
    out = []
    for start in range(0, n, size):
        rows = min(size, n - start)
        out.append(rows // world + (1 if rank < rows % world else 0))
    return out


def _check_finite(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the training loss became {value} at step {step}; lower the learning rate "
                            "or clip gradients (regularization.max_grad_norm)")


def _outputs(state: State, split: Split, tta: bool) -> torch.Tensor:
    """The model's outputs on a split, batched; with test-time augmentation, averaged probabilities."""
    views = state.spec.test_time_augmentation if tta else None
    to_probabilities = state.objective.probabilities
    outputs = []
    for x in split.chunks(EVAL_BATCH):
        if state.on_host:
            x = x.to(state.device, non_blocking=True)
        x = split.decode(x)
        if views is not None and to_probabilities is not None:
            outputs.append(torch.stack([to_probabilities(forward(state, state.model, v))
                                        for v in tta_views(x, views)]).mean(0))
        else:
            outputs.append(forward(state, state.model, x))
    return torch.cat(outputs, dim=1 if ensemble_members(state.spec) else 0)  # an ensemble's: (M, N, outputs)


@torch.inference_mode()
def evaluate(state: State, split: Split, prefix: str, tta: bool = False, confusion: bool = False) -> dict[str, Any]:
    """Loss and metrics on a split: accuracy, precision, recall, F1 (macro) for classification; MSE, RMSE, MAE and
    R² in the target's units for regression. With tta, the test-time augmentations of the spec are averaged. A run
    with an inference block is measured on its predictive distribution (`_evaluate_sampled`)."""
    if len(split) == 0:
        return {}
    model = state.model
    model.eval()
    if state.spec.inference is not None:
        return _evaluate_sampled(state, split, prefix, final=confusion)
    averaged = tta and state.spec.test_time_augmentation is not None and state.objective.probabilities is not None
    return _scores(state, _outputs(state, split, tta), split, prefix, averaged, confusion)


def _scores(state: State, out: torch.Tensor, split: Split, prefix: str, averaged: bool, confusion: bool
            ) -> dict[str, Any]:
    """The loss and metrics of outputs on a split; `averaged`: the outputs are class probabilities (averaged over
    test-time augmentations or posterior samples), so the loss is their NLL."""
    import torchmetrics.functional as M

    labels = split.y.to(state.device) if state.on_host else split.y
    metrics: dict[str, torch.Tensor] = {}
    if averaged:  # the outputs are probabilities: the loss is the NLL of the averaged prediction
        metrics[f"{prefix}_loss"] = torch.nn.functional.nll_loss(out.clamp_min(1e-12).log(), labels)
    else:
        metrics[f"{prefix}_loss"] = state.objective.loss(out, labels)
    extra: dict[str, Any] = {}
    data = state.data
    if state.objective.predict is not None:
        k = data.classes
        pred = out.argmax(dim=1) if averaged else state.objective.predict(out)
        task = {"task": "multiclass", "num_classes": k, "validate_args": False}  # our own tensors, known valid
        metrics[f"{prefix}_accuracy"] = (pred == labels).float().mean()
        metrics[f"{prefix}_precision"] = M.precision(pred, labels, average="macro", **task)
        metrics[f"{prefix}_recall"] = M.recall(pred, labels, average="macro", **task)
        metrics[f"{prefix}_f1"] = M.f1_score(pred, labels, average="macro", **task)
        if confusion:
            extra[f"{prefix}_confusion_matrix"] = M.confusion_matrix(pred, labels, **task).tolist()
    else:
        pred = state.objective.point(out) * data.y_std + data.y_mean
        target = labels * data.y_std + data.y_mean
        metrics[f"{prefix}_mse"] = M.mean_squared_error(pred, target)
        metrics[f"{prefix}_rmse"] = metrics[f"{prefix}_mse"].sqrt()
        metrics[f"{prefix}_mae"] = M.mean_absolute_error(pred, target)
        metrics[f"{prefix}_r2"] = M.r2_score(pred.flatten(), target.flatten()) if len(split) > 1 else pred.new_zeros(())
    values = torch.stack([v.float() for v in metrics.values()]).tolist()  # one host sync for all metrics
    return {**dict(zip(metrics, values)), **extra}


def _sampled(state: State, split: Split, samples: int) -> torch.Tensor:
    """(samples, N, outputs): the model's outputs under `samples` draws of its posterior (variational: the Bayesian
    layers' weights; mc_dropout: the dropout masks, everything else in evaluation mode); an ensemble's members'
    outputs, (M, N, outputs), whatever `samples` says."""
    if ensemble_members(state.spec):
        state.model.eval()
        return _outputs(state, split, False)
    sampling_mode(state.model, state.spec.inference.method)
    try:
        return torch.stack([_outputs(state, split, False) for _ in range(samples)])
    finally:
        state.model.eval()


def noise_variance(state: State) -> float:
    """A Bayesian regression's homoscedastic noise variance in the target's units: fixed by the spec, or fitted by
    maximum likelihood on the validation split (the training split when there is none) given the epistemic spread."""
    inference, data = state.spec.inference, state.data
    if inference.noise == "fixed":
        return inference.noise_sigma ** 2
    if inference.noise == "learned":
        return 0.0  # per input, not one variance: see learned_noise
    held = data.val if len(data.val) else data.train
    with torch.inference_mode():
        values = _sampled(state, held, inference.samples)[..., 0] * data.y_std + data.y_mean
    target = held.y.to(values.device)[:, 0] * data.y_std + data.y_mean
    return fit_noise(values.mean(0), values.var(0, unbiased=False), target)


def learned_noise(state: State, outs: torch.Tensor) -> torch.Tensor:
    """A gaussian_nll head's noise variance per row, in the target's units: its samples' (or members') mean."""
    return gaussian_split(outs)[1][..., 0].mean(0) * state.data.y_std ** 2


CURVE_POINTS, CURVE_TRAIN_POINTS = 200, 300


def _curve(state: State, test: Split) -> dict[str, list[float]]:
    """A 1-D regression's predictive mean and 95 % band over its inputs' range (the test split's, which may reach
    past the training data), with training points, all in raw units: what its run page draws."""
    data, inference = state.data, state.spec.inference
    shift, div = data.preprocessing.shift[0], data.preprocessing.div[0]
    seen = torch.cat([data.train.x[:, 0], test.x[:, 0].to(data.train.x.device)])
    low, high = float(seen.min()), float(seen.max())
    margin = 0.05 * (high - low or 1.0)
    grid = torch.linspace(low - margin, high + margin, CURVE_POINTS, device=data.train.x.device).view(-1, 1)
    outs = _sampled(state, Split(grid, torch.zeros(len(grid), 1, device=grid.device)), inference.samples)
    points = outs[..., 0] * data.y_std + data.y_mean
    noise = learned_noise(state, outs) if inference.noise == "learned" else (state.noise_var or 0.0)
    mean, std = points.mean(0), (points.var(0, unbiased=False) + noise).sqrt()
    every = max(1, len(data.train) // CURVE_TRAIN_POINTS)
    train_x, train_y = data.train.x[::every, 0], data.train.y[::every, 0] * data.y_std + data.y_mean

    def raw_x(z: torch.Tensor) -> list[float]:
        return [round(v, 5) for v in (z * div + shift).tolist()]

    def rounded(t: torch.Tensor) -> list[float]:
        return [round(v, 5) for v in t.tolist()]

    return {"x": raw_x(grid[:, 0]), "mean": rounded(mean), "low": rounded(mean - 1.959964 * std),
            "high": rounded(mean + 1.959964 * std), "train_x": raw_x(train_x), "train_y": rounded(train_y)}


def _evaluate_sampled(state: State, split: Split, prefix: str, final: bool) -> dict[str, Any]:
    """Metrics of the predictive distribution: Monte Carlo samples averaged (val_samples per epoch, samples at the
    end). Classification: the mean of the samples' probabilities, with NLL, ECE and Brier (and at the end the
    reliability table, entropy and mutual information). Regression: a Gaussian whose variance is the samples'
    (epistemic) plus a homoscedastic noise (aleatoric) fitted on the validation split, in the target's units."""
    inference, data = state.spec.inference, state.data
    outs = _sampled(state, split, inference.samples if final else inference.val_samples)
    y = split.y.to(outs.device)
    if state.objective.predict is not None:
        probs = torch.stack([state.objective.probabilities(o) for o in outs])
        return {**_scores(state, probs.mean(0), split, prefix, True, final),
                **classification_measures(probs, y, prefix, final)}
    result = _scores(state, outs.mean(0), split, prefix, False, final)
    points = outs[..., 0] * data.y_std + data.y_mean
    mean, epistemic = points.mean(0), points.var(0, unbiased=False)
    target = y[:, 0] * data.y_std + data.y_mean
    if inference.noise == "fixed":
        state.noise_var = inference.noise_sigma ** 2
    elif inference.noise == "learned":
        pass
    elif split is (data.val if len(data.val) else data.train):
        state.noise_var = fit_noise(mean, epistemic, target)
    elif final or state.noise_var is None:  # the noise of the weights the run ended with
        state.noise_var = noise_variance(state)
    noise = learned_noise(state, outs) if inference.noise == "learned" else state.noise_var  # per row, or one
    result.update(regression_measures(mean, epistemic, noise, target, prefix))
    if final and prefix == "test" and data.preprocessing is not None and len(data.preprocessing.shift) == 1 \
            and split.x.dim() == 2 and split.x.shape[1] == 1:
        result["test_predictive_curve"] = _curve(state, split)
    if final and data.regions is not None and prefix == "test":
        for code, name in enumerate(data.region_names):
            chosen = data.regions.to(epistemic.device) == code
            if chosen.any():
                result[f"test_std_{name}"] = float(epistemic[chosen].clamp_min(0).sqrt().mean())
                here = noise[chosen] if isinstance(noise, torch.Tensor) else noise
                region = regression_measures(mean[chosen], epistemic[chosen], here, target[chosen], "r")
                result[f"test_coverage95_{name}"] = region["r_coverage95"]
                result[f"test_rmse_{name}"] = region["r_rmse"]
                if name == "in" and int(chosen.sum()) > 1:  # R² where the data is: the whole split's mixes in probes
                    import torchmetrics.functional as M

                    result["test_r2_in"] = float(M.r2_score(mean[chosen].flatten(), target[chosen].flatten()))
    return result


def predict(state: State, x: torch.Tensor) -> torch.Tensor:
    """Return the model's raw outputs for inputs x, in evaluation mode."""
    with torch.inference_mode():
        state.model.eval()
        return state.model(x.to(state.device))
