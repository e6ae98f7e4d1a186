"""Packed trials: N trials of one architecture trained as one model, each exactly as it would train alone.

A pack's members share every shape (layers, widths, kernels, batch size, epochs, dataset and split) and may differ in
the numbers a sweep searches: the optimizer's, the regularization's, dropout `p`, noise `std`, the seed, label
smoothing, the schedule's. Their parameters are stacked along a leading member axis: a dense layer is one batched
matrix multiply, a convolution one grouped convolution, a batch norm one over N x C channels. Every member draws its
own rows each step (its own permutation), its own dropout masks and noise (its own generator, seeded as the trial
alone seeds the global one), and the optimizers here apply each member's hyperparameters as tensors. So a member's
losses are the trial's alone (to float rounding), while a step costs about one step of a model N times as wide.

Each member keeps its own State (the engine's), early stopping and callbacks: its metrics, events, checkpoints
(a trial's, resumable packed or alone) and final evaluation are those of a trial. A stopped member is masked (learning
rate zero, no loss); when fewer than half the members are live the pack is compacted to them. L-BFGS, Bayesian
layers, image augmentation, stochastic pooling, gradient accumulation, one-cycle and plateau schedules are not
packed (`packing.unpackable` says why; packing.py decides, without torch, what packs and when it pays).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from trainq.models.datasets import Data, Split, load
from trainq.models.engine import (PARALLEL_STEP_FLOPS, NonFiniteLoss, Result, _scores, autocast_dtype, evaluate,
                                  fp32_numerics, pick_device, tracker_for)
from trainq.models.layers import build_model
from trainq.models.losses import _argmax, build_objective
from trainq.models.checkpoint import dump, restore
from trainq.models.optimizers import build_optimizer, decoupled_decay
from trainq.models.packing import PackError, check_pack
from trainq.models.spec import JobSpec, batch_size, plan
from trainq.models.stacked import COUNTED, PackedDropout, PackedNoise, pack_modules
from trainq.models.state import Callback, State


def _unpacked_state(packed: nn.Module, member: int) -> dict[str, torch.Tensor]:
    """Member `member`'s slice of the pack as its own model's state_dict (same names)."""
    out = {}
    for name, tensor in [*packed.named_parameters(), *packed.named_buffers()]:
        out[name] = tensor.detach()[member]
    return out


def flatten_parameters(packed: nn.Module, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Put every parameter of the pack into one (N, P) tensor, member-major, and make each parameter a view of its
    columns: the optimizer then updates all of them in a dozen operations on one tensor. With `keep`, only those
    members stay (compaction), in parameters and buffers alike."""
    slots = [(module, name, p) for module in packed.modules() for name, p in module.named_parameters(recurse=False)]
    rows = [p.detach() if keep is None else p.detach()[keep] for _, _, p in slots]
    flat = torch.cat([r.reshape(len(r), -1) for r in rows], dim=1)
    offset = 0
    for (module, name, _), r in zip(slots, rows):
        width = r[0].numel()
        setattr(module, name, nn.Parameter(flat[:, offset:offset + width].view(r.shape)))
        offset += width
    if keep is not None:
        for module in packed.modules():
            for name, b in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, b[keep].clone())
            if isinstance(module, COUNTED):
                module.members = len(keep)
    return flat


# ---------------------------------------------------------------------------------------------------------------------
# Optimizers over stacked parameters: each member's hyperparameters are a (N, 1) column, the update rules torch's own
# ---------------------------------------------------------------------------------------------------------------------


def _column(values: list[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)


class PackedOptimizer:
    """SGD (momentum, Nesterov), Adam, AdamW, RMSprop and Adagrad on the pack's flat (N, P) parameters, with torch's
    update rules and each member's hyperparameters as a column. `lr` is set each epoch by the schedule; a member
    with lr 0 does not move."""

    def __init__(self, model: nn.Module, specs: list[JobSpec], device):
        self.model, self.kind = model, specs[0].optimizer.type
        if self.kind not in ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"):
            raise PackError(f"optimizer.type: {self.kind} is not packed")
        self._bind(flatten_parameters(model))
        o = [s.optimizer for s in specs]
        self.lr = _column([x.lr for x in o], device)
        self.l2 = _column([s.regularization.l2 for s in specs], device)
        self.decay = _column([decoupled_decay(s) for s in specs], device)  # AdamW's own, or applied after the step
        self.momentum = _column([getattr(x, "momentum", 0.0) for x in o], device)
        self.nesterov = _column([float(x.type == "nesterov" or getattr(x, "nesterov", False)) for x in o], device)
        self.beta1 = _column([getattr(x, "betas", (0.9, 0.999))[0] for x in o], device)
        self.beta2 = _column([getattr(x, "betas", (0.9, 0.999))[1] for x in o], device)
        self.alpha = _column([getattr(x, "alpha", 0.99) for x in o], device)
        self.eps = _column([getattr(x, "eps", 1e-8) for x in o], device)
        self.uses = {"l2": bool(self.l2.any()), "decay": bool(self.decay.any()), "momentum": bool(self.momentum.any()),
                     "nesterov": bool(self.nesterov.any())}
        self.steps = 0
        self.state: dict[str, torch.Tensor] = {}

    COLUMNS = ("lr", "l2", "decay", "momentum", "nesterov", "beta1", "beta2", "alpha", "eps")

    def select(self, keep: torch.Tensor) -> None:
        """Keep only members `keep`: the model's parameters and buffers, these columns and the optimizer's state."""
        self._bind(flatten_parameters(self.model, keep))
        for name in self.COLUMNS:
            setattr(self, name, getattr(self, name)[keep])
        self.state = {k: v[keep].clone() for k, v in self.state.items()}

    def _bind(self, flat: torch.Tensor) -> None:
        """Each parameter's .grad a view of one (N, P) gradient: backward accumulates into it in place, so the
        optimizer reads every gradient with no copy."""
        self.flat, self.grad = flat, torch.zeros_like(flat)
        offset = 0
        for p in self.model.parameters():
            width = p[0].numel()
            p.grad = self.grad[:, offset:offset + width].view(p.shape)
            offset += width

    def gradient(self) -> torch.Tensor:
        """The parameters' gradients as one (N, P) tensor, in the flat layout."""
        return self.grad

    @torch.no_grad()
    def step(self, g: torch.Tensor) -> None:
        self.steps += 1
        t, p, lr = self.steps, self.flat, self.lr
        if self.kind != "adamw" and self.uses["l2"]:
            g = g + self.l2 * p  # coupled L2, as torch's weight_decay
        if self.kind in ("sgd", "momentum", "nesterov"):
            if self.uses["momentum"]:
                if "momentum_buffer" not in self.state:  # torch's first step: the buffer is the gradient
                    self.state["momentum_buffer"] = g.clone()
                else:
                    self.state["momentum_buffer"].mul_(self.momentum).add_(g)
                buf = self.state["momentum_buffer"]
                g = torch.where(self.nesterov.bool(), g + self.momentum * buf, buf) if self.uses["nesterov"] else buf
            p.sub_(lr * g)
        elif self.kind in ("adam", "adamw"):
            if self.kind == "adamw":
                p.mul_(1 - lr * self.decay)
            m, v = self._buffer("exp_avg"), self._buffer("exp_avg_sq")
            m.lerp_(g, 1 - self.beta1)  # as torch's Adam; in-place, broadcast columns: ~3x fewer passes than plain
            v.mul_(self.beta2).addcmul_(g, g * (1 - self.beta2))
            correction1, correction2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
            p.addcdiv_(m * (-lr / correction1), (v / correction2).sqrt_().add_(self.eps))
        elif self.kind == "rmsprop":
            sq = self._buffer("square_avg")
            sq.mul_(self.alpha).addcmul_(g, g * (1 - self.alpha))
            avg = sq.sqrt().add_(self.eps)
            if self.uses["momentum"]:
                buf = self._buffer("momentum_buffer")
                buf.mul_(self.momentum).add_(g / avg)
                p.sub_(lr * buf)
            else:
                p.sub_(lr * g / avg)
        else:  # adagrad
            total = self._buffer("sum")
            total.addcmul_(g, g)
            p.sub_(lr * g / total.sqrt().add_(self.eps))
        if self.kind != "adamw" and self.uses["decay"]:
            p.mul_(1 - lr * self.decay)

    def _columns_of(self, params: list[torch.Tensor]) -> list[tuple[int, int]]:
        offsets, offset = [], 0
        for p in params:
            offsets.append((offset, p.numel()))
            offset += p.numel()
        return offsets

    def save_member(self, row: int, state: State) -> None:
        """Put member `row`'s slice of the optimizer state into its own torch optimizer, in torch's names and form."""
        params = list(state.model.parameters())
        no_momentum = float(self.momentum[row, 0]) == 0
        for p, (offset, width) in zip(params, self._columns_of(params)):
            entry: dict[str, torch.Tensor] = {}
            for name, flat in self.state.items():
                if name == "momentum_buffer" and no_momentum:
                    continue  # torch keeps none without momentum
                entry[name] = flat[row, offset:offset + width].reshape(p.shape).clone()
            if self.kind not in ("sgd", "momentum", "nesterov"):
                entry["step"] = torch.tensor(float(self.steps))
            state.optimizer.state[p] = entry

    def load_member(self, row: int, state: State) -> None:
        """Take member `row`'s optimizer state from its torch optimizer (a restored checkpoint's)."""
        params = list(state.model.parameters())
        for p, (offset, width) in zip(params, self._columns_of(params)):
            for name, value in state.optimizer.state.get(p, {}).items():
                if name != "step" and isinstance(value, torch.Tensor):
                    self._buffer(name)[row, offset:offset + width] = value.reshape(-1).to(self.flat.device)

    def _buffer(self, name: str) -> torch.Tensor:
        if name not in self.state:
            self.state[name] = torch.zeros_like(self.flat)
        return self.state[name]

    def zero_grad(self) -> None:
        self.grad.zero_()


def scheduled_lr(spec: JobSpec, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under the spec's epoch schedule, in closed form."""
    lr, s = spec.optimizer.lr, spec.schedule
    if s.type == "step":
        return lr * s.gamma ** (epoch // s.step_size)
    if s.type == "exponential":
        return lr * s.gamma ** epoch
    if s.type == "cosine":
        t_max = spec.training.epochs
        return s.min_lr + (lr - s.min_lr) * (1 + math.cos(math.pi * epoch / t_max)) / 2
    if s.type == "warmup":
        return lr * (s.start_factor + (1 - s.start_factor) * min(epoch, s.epochs) / s.epochs)
    return lr


# ---------------------------------------------------------------------------------------------------------------------
# Losses over a pack: one vectorized call for cross entropy and MSE, a member at a time for the rest
# ---------------------------------------------------------------------------------------------------------------------


def _member_losses(specs: list[JobSpec], states: list[State], out: torch.Tensor, y: torch.Tensor,
                   live: list[int]) -> torch.Tensor:
    """(N,) mean loss per member over its batch; members not in `live` get 0 (they take no gradient)."""
    loss = specs[0].loss
    if loss.type == "cross_entropy" and loss.class_weights is None:
        logp = out - out.logsumexp(-1, keepdim=True)  # log_softmax: its CPU kernel is 3x slower over 10 classes
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        values = nll
        if any(s.loss.label_smoothing for s in specs):  # as F.cross_entropy: (1 - e) nll + e * mean_k(-log p_k)
            e = torch.tensor([s.loss.label_smoothing for s in specs], device=out.device, dtype=out.dtype)
            values = (1 - e) * nll + e * (-logp.mean(-1).mean(1))
    elif loss.type == "mse" and states[0].objective.predict is None:
        values = (out - y).pow(2).flatten(1).mean(1)
    else:
        values = torch.stack([states[i].objective.loss(out[i], y[i]) for i in range(len(specs))])
    if len(live) < len(specs):
        mask = torch.zeros(len(specs), device=out.device, dtype=values.dtype)
        mask[live] = 1
        values = values * mask
    return values


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One trial in the pack: its spec, its own engine State (model, tracker, callbacks, metrics) and generators."""

    spec: JobSpec
    state: State
    live: bool = True
    failed: str | None = None  # why it stopped with an error (a non-finite loss)
    result: Result | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)  # set from outside to cancel this member
    sink: Callable[[bytes, dict], None] | None = None  # where its checkpoints go (each one a trial could resume)
    saved_at: float = 0.0  # when it was last checkpointed (time.monotonic)


@dataclass
class Pack:
    members: list[Member]
    model: nn.Module  # the packed model over the live members (`slots` maps its rows to members)
    optimizer: PackedOptimizer
    generators: list[torch.Generator | None]
    slots: list[int]  # member index of each row of the packed parameters
    data: Data
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    epoch: int = 0
    step: int = 0
    compactions: int = 0
    history: list[int] = field(default_factory=list)  # live members per epoch


def build_pack(specs: Sequence[JobSpec], *, device: str | torch.device | None = None,
               callbacks: Sequence[Sequence[Callback]] | None = None, arrays: tuple | None = None,
               resumes: Sequence[bytes | None] | None = None) -> Pack:
    """Load the data once, build each member as `engine.build` builds its trial (same seeds, same init), restore
    the members' checkpoints if given (all from the same epoch), and stack them into one packed model."""
    check_pack(specs)
    device = pick_device(device) if not isinstance(device, torch.device) else device
    first = specs[0]
    data = load(first.dataset, arrays)
    if device.type != "cpu":
        data = data.to(device)
    units = plan(first).output_shape[0]
    image = data.train.x.dim() == 4
    channels_last = (first.training.channels_last if isinstance(first.training.channels_last, bool) else image) \
        and image
    members, models, generators = [], [], []
    for i, spec in enumerate(specs):
        torch.manual_seed(spec.training.seed)  # as `engine.build`: the init, then dropout, draw from this stream
        model = build_model(spec, data.train.x.shape[1:]).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        generator = torch.Generator(device=device)
        generator.set_state(torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device))
        generators.append(generator)
        models.append(model)
        tracker = tracker_for(spec, data)
        # The member's torch optimizer is never stepped: it carries the member's slice of the packed optimizer's
        # state in torch's own form, in and out of checkpoints, so a member's checkpoint is its trial's.
        state = State(spec=spec, model=model, optimizer=build_optimizer(spec, model.parameters()), scheduler=None,
                      objective=build_objective(spec, units), data=data, device=device,
                      generator=torch.Generator().manual_seed(spec.training.seed), tracker=tracker,
                      callbacks=[tracker, *(callbacks[i] if callbacks else ())], amp=autocast_dtype(spec, device),
                      channels_last=channels_last, rng=generator)
        members.append(Member(spec, state))
        state.interrupt = members[-1].interrupt
        if resumes and resumes[i] is not None:
            restore(state, resumes[i])
    epochs = {m.state.epoch for m in members}
    if len(epochs) > 1:
        raise PackError(f"members resume from different epochs ({sorted(epochs)}): a pack trains members that are "
                        "at the same epoch; train the others apart")
    packed = pack_modules(models, generators).to(device)
    optimizer = PackedOptimizer(packed, list(specs), device)
    pack = Pack(members, packed, optimizer, generators, list(range(len(specs))), data, device,
                autocast_dtype(first, device), channels_last, epoch=members[0].state.epoch,
                step=members[0].state.step)
    optimizer.steps = pack.step
    for row, member in enumerate(members):
        optimizer.load_member(row, member.state)
    return pack


def _forward(pack: Pack, x: torch.Tensor) -> torch.Tensor:
    """x: (N, B, ...) each member's rows -> (N, B, outputs), in fp32."""
    n = x.shape[0]
    if x.dim() == 5:  # images: members' channels side by side, one grouped convolution for all
        b = x.shape[1]
        x = x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:])
        if pack.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    if pack.amp is None:
        return pack.model(x)
    with torch.autocast(pack.device.type, dtype=pack.amp):
        return pack.model(x).float()


def _live_slots(pack: Pack) -> list[int]:
    return [row for row, m in enumerate(pack.slots) if pack.members[m].live]


def _regularizers(pack: Pack) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each member's l1 and max_grad_norm as (N, 1) columns (None where no member uses it), once an epoch."""
    specs = [pack.members[m].spec for m in pack.slots]
    l1 = [s.regularization.l1 for s in specs]
    clip = [s.regularization.max_grad_norm for s in specs]
    return (_column(l1, pack.device) if any(l1) else None,
            _column([c if c is not None else math.inf for c in clip], pack.device)
            if any(c is not None for c in clip) else None)


def _clip_and_l1(pack: Pack, g: torch.Tensor, l1: torch.Tensor | None, limit: torch.Tensor | None) -> torch.Tensor:
    """Per member, on the flat (N, P) gradient: l1 adds l1 * sign(theta), then the member's gradients are clipped to
    its max_grad_norm by their global norm (as clip_grad_norm_)."""
    if l1 is not None:
        g = g + l1 * pack.optimizer.flat.sign()
    if limit is not None:
        norms = g.pow(2).sum(1, keepdim=True).sqrt()
        g = g * (limit / (norms + 1e-6)).clamp(max=1.0)  # scaled down only
    return g


def train_epoch(pack: Pack) -> None:
    """One epoch for every live member: each its own permutation, batches stacked; sets each member's train_loss."""
    members = [pack.members[m] for m in pack.slots]
    specs = [m.spec for m in members]
    train = pack.data.train
    n, size = len(train), batch_size(specs[0])
    log_every = specs[0].training.log_every_steps
    pack.model.train()
    for row, member in enumerate(members):
        lr = scheduled_lr(member.spec, pack.epoch) if member.live else 0.0
        pack.optimizer.lr[row, 0] = lr
    noise = [s.regularization.input_noise for s in specs]
    orders = torch.stack([torch.randperm(n, generator=m.state.generator) for m in members]).to(train.x.device)
    live = _live_slots(pack)
    l1, limit = _regularizers(pack)
    sums = torch.zeros(len(members), device=pack.device)
    logged = torch.zeros(len(members), device=pack.device)
    logged_steps = 0
    for start in range(0, n, size):
        idx = orders[:, start:start + size]
        x, y = train.x[idx], train.y[idx]  # (N, B, ...), (N, B[, 1])
        x = train.decode(x)  # uint8 pixels' per-channel scaling broadcasts over the member axis too
        if any(noise):  # each member's input noise from its generator, as randn_like draws it alone
            x = torch.stack([part + std * torch.randn(part.shape, generator=pack.generators[row], device=part.device)
                             if std and members[row].live else part
                             for row, (part, std) in enumerate(zip(x, noise))])
        pack.optimizer.zero_grad()
        losses = _member_losses(specs, [m.state for m in members], _forward(pack, x), y, live)
        with warnings.catch_warnings():  # the gradients are strided views of one buffer, on purpose (see _bind)
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            losses.sum().backward()  # each member's parameters get its own loss's gradient
        pack.optimizer.step(_clip_and_l1(pack, pack.optimizer.gradient(), l1, limit))
        pack.step += 1
        rows = idx.shape[1]
        batch = losses.detach()
        sums += batch * rows
        logged += batch
        logged_steps += 1
        if pack.step % log_every == 0:
            values = (logged / logged_steps).tolist()  # the one host sync per reporting interval
            logged.zero_()
            logged_steps = 0
            for row in live:
                member = members[row]
                member.state.step = pack.step
                if not math.isfinite(values[row]):
                    _fail(member, values[row], pack.step)
                    continue
                for cb in member.state.callbacks:
                    cb.on_log(member.state, {"train_loss_step": values[row]})
            live = _live_slots(pack)
        cancelled = [row for row in live if members[row].interrupt.is_set()]
        for row in cancelled:  # a cancelled member stops within a batch, as a trial alone does; the rest go on
            members[row].live = False
            members[row].state.stop_reason = "cancelled"
        if cancelled or any(not members[row].live for row in live):
            live = _live_slots(pack)
            for row in range(len(members)):
                if row not in live:
                    pack.optimizer.lr[row, 0] = 0.0
    epoch_loss = (sums / n).tolist()
    for row in live:
        member = members[row]
        member.state.step = pack.step
        member.state.metrics = {"train_loss": epoch_loss[row]}
        if not math.isfinite(epoch_loss[row]):
            _fail(member, epoch_loss[row], pack.step)


def _fail(member: Member, value: float, step: int) -> None:
    """A member whose loss is not finite fails alone (a trial alone raises NonFiniteLoss); the others go on."""
    member.failed = str(NonFiniteLoss(f"the training loss became {value} at step {step}; lower the learning rate "
                                      "or clip gradients (regularization.max_grad_norm)"))
    member.live = False
    member.state.stop_reason = "failed"


@torch.inference_mode()
def _validate(pack: Pack) -> None:
    """Each live member's validation metrics, from one packed forward of the validation split."""
    val = pack.data.val
    if len(val) == 0:
        return
    pack.model.eval()
    rows = _live_slots(pack)
    count = len(pack.slots)
    outs = []
    for start in range(0, len(val), 8192):
        x = val.decode(val.x[start:start + 8192])
        outs.append(_forward(pack, x.unsqueeze(0).expand(count, *x.shape)))
    out = torch.cat(outs, dim=1)
    states = [pack.members[m].state for m in pack.slots]
    if all(s.objective.predict is _argmax for s in states):
        scores = _class_scores(states, out, val, "val")
    else:
        scores = [_scores(states[row], out[row], val, "val", False, False) if row in rows else {}
                  for row in range(count)]
    for row in rows:
        states[row].metrics.update(scores[row])


def _class_scores(states: list[State], out: torch.Tensor, split: Split, prefix: str) -> list[dict[str, float]]:
    """The engine's classification metrics (`engine._scores`: loss, accuracy, macro precision, recall and F1 as
    torchmetrics computes them) for every member at once, from their (N, V, K) outputs: one host sync, not N x 4
    torchmetrics calls a member."""
    n, _, k = out.shape
    y = split.y.to(out.device).unsqueeze(0).expand(n, -1)
    loss = _member_losses([s.spec for s in states], states, out, y, list(range(n)))
    pred = out.argmax(dim=-1)
    accuracy = (pred == y).float().mean(1)
    codes = (torch.arange(n, device=out.device).view(-1, 1) * k + y) * k + pred
    confusion = torch.bincount(codes.flatten(), minlength=n * k * k).view(n, k, k).float()  # [member, true, pred]
    tp = confusion.diagonal(dim1=1, dim2=2)
    fp, fn = confusion.sum(1) - tp, confusion.sum(2) - tp
    present = ((tp + fp + fn) > 0).float()  # torchmetrics' macro average leaves out classes never seen nor predicted

    def macro(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        score = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
        return (score * present).sum(1) / present.sum(1).clamp_min(1)

    table = torch.stack([loss, accuracy, macro(tp, tp + fp), macro(tp, tp + fn), macro(2 * tp, 2 * tp + fp + fn)], 1)
    names = [f"{prefix}_{name}" for name in ("loss", "accuracy", "precision", "recall", "f1")]
    return [dict(zip(names, values)) for values in table.tolist()]


def _sync(pack: Pack, row: int) -> None:
    """Copy a member's slice of the pack into its own model (for its tracker's best weights and its final test)."""
    member = pack.members[pack.slots[row]]
    # strict=False: a batch norm's num_batches_tracked is not kept per member (it only counts steps)
    member.state.model.load_state_dict(_unpacked_state(pack.model, row), strict=False)


def _compact(pack: Pack) -> None:
    keep_rows = _live_slots(pack)
    pack.optimizer.select(torch.tensor(keep_rows, device=pack.device))
    pack.slots = [pack.slots[r] for r in keep_rows]
    pack.generators[:] = [pack.generators[r] for r in keep_rows]  # the dropout and noise layers hold this list
    for module in pack.model.modules():
        if isinstance(module, PackedDropout):
            module.ps = [module.ps[r] for r in keep_rows]
        elif isinstance(module, PackedNoise):
            module.stds = [module.stds[r] for r in keep_rows]
    pack.compactions += 1


def _finish(pack: Pack, member: Member, started: float, setup: float) -> None:
    state = member.state
    for cb in state.callbacks:
        cb.on_train_end(state)
    final: dict[str, Any] = {}
    if state.stop_reason not in ("cancelled", "failed"):
        final = evaluate(state, pack.data.test, "test", tta=True, confusion=True)
        if state.best_score is not None:
            final[f"best_{state.tracker.monitor}"] = state.best_score
    member.result = Result(state.stop_reason, state.epoch, state.best_epoch, final, state.history, setup,
                           time.perf_counter() - started - setup)


def fit_pack(specs: Sequence[JobSpec], *, device: str | torch.device | None = None,
             callbacks: Sequence[Sequence[Callback]] | None = None, arrays: tuple | None = None,
             threads: int | None = None, on_epoch: Callable[[Pack], None] | None = None,
             resumes: Sequence[bytes | None] | None = None, interrupts: Sequence[threading.Event] | None = None,
             checkpoint_sinks: Sequence[Callable[[bytes, dict], None] | None] | None = None,
             checkpoint_seconds: float = 30.0, on_done: Callable[[int, Member], None] | None = None,
             on_validated: Callable[[Pack], None] | None = None) -> list[Member]:
    """Train the members of a pack to their ends; return them, each with its Result (or `failed`).

    Per member i: `callbacks[i]` see its State as a trial's; `interrupts[i]` cancels it alone; `resumes[i]` is a
    checkpoint to continue from (a trial's, packed or not); `checkpoint_sinks[i](blob, info)` receives checkpoints
    a trial alone could resume from, on a clock (every `checkpoint_seconds`; a new best at most that often), at
    its last epoch and when it stops: a member's checkpoint costs a serialization, so not every epoch of a pack.
    A member that stops (early, pruned, cancelled, failed) is measured on the test split at once and handed to
    `on_done(i, member)`, so its job can end while the others train on. `on_validated(pack)` sees every member's
    validation metrics before their epochs end (a sweep's pruner is asked for all of them at once there; a member
    it stops has its interrupt set and stops at that epoch's end).
    """
    started = time.perf_counter()
    kind = pick_device(device if not isinstance(device, torch.device) else str(device)).type
    previous = torch.get_num_threads()
    if kind == "cpu":  # the pack's step is N members' work: threads by the work of all of them
        torch.set_num_threads(threads or (max(1, previous) if _pack_flops(specs) >= PARALLEL_STEP_FLOPS else 1))
    try:
        with fp32_numerics(specs[0], device):
            pack = build_pack(specs, device=device, callbacks=callbacks, arrays=arrays, resumes=resumes)
            now = time.monotonic()
            for i, member in enumerate(pack.members):
                if interrupts is not None:
                    member.interrupt = member.state.interrupt = interrupts[i]
                member.sink = checkpoint_sinks[i] if checkpoint_sinks else None
                member.saved_at = now
            setup = time.perf_counter() - started
            for member in pack.members:
                for cb in member.state.callbacks:
                    cb.on_train_start(member.state)
            epochs = specs[0].training.epochs
            while pack.epoch < epochs and _live_slots(pack):
                train_epoch(pack)
                pack.epoch += 1
                _validate(pack)
                if on_validated is not None:
                    on_validated(pack)
                for row in _live_slots(pack):
                    _end_epoch(pack, row, epochs, checkpoint_seconds)
                pack.history.append(len(_live_slots(pack)))
                for i, member in enumerate(pack.members):
                    if not member.live and member.result is None:
                        _done(pack, i, started, setup, on_done)
                if on_epoch is not None:
                    on_epoch(pack)
                live = _live_slots(pack)
                if live and len(live) < len(pack.slots) / 2:
                    _compact(pack)
            for row, m in enumerate(pack.slots):
                if pack.members[m].live:
                    _sync(pack, row)
            for i, member in enumerate(pack.members):
                if member.result is None:
                    _done(pack, i, started, setup, on_done)
            return pack.members
    finally:
        torch.set_num_threads(previous)


def _done(pack: Pack, i: int, started: float, setup: float, on_done) -> None:
    _finish(pack, pack.members[i], started, setup)
    if on_done is not None:
        on_done(i, pack.members[i])


def _end_epoch(pack: Pack, row: int, epochs: int, checkpoint_seconds: float) -> None:
    """A live member's end of epoch, as the engine's: its metrics and history, its callbacks (early stopping,
    reporting, pruning), a checkpoint when due, and its stop."""
    member = pack.members[pack.slots[row]]
    state = member.state
    state.epoch = pack.epoch
    rate = {"lr": scheduled_lr(member.spec, pack.epoch - 1)} if member.spec.schedule.type != "none" else {}
    state.metrics = {"epoch": state.epoch, **state.metrics, **rate}
    state.history.append(state.metrics)
    synced = getattr(state.tracker, "restore_best", False)
    if synced:
        _sync(pack, row)  # the tracker copies the weights of a new best from the member's model
    for cb in state.callbacks:
        cb.on_epoch_end(state)
    cancelled = member.interrupt.is_set() and not state.should_stop
    stopping = state.should_stop or cancelled or pack.epoch == epochs
    now = time.monotonic()
    if member.sink is not None and not cancelled and (stopping or now - member.saved_at >= checkpoint_seconds):
        if not synced:
            _sync(pack, row)
            synced = True
        pack.optimizer.save_member(row, state)
        member.sink(dump(state), {"epoch": state.epoch, "step": state.step, "is_best": state.tracker.improved,
                                  "metric_name": state.tracker.monitor,
                                  "metric": state.metrics.get(state.tracker.monitor)})
        member.saved_at = now
    if state.should_stop or cancelled:
        if cancelled:
            state.stop_reason = "cancelled"
        if not synced:
            _sync(pack, row)
        member.live = False
        pack.optimizer.lr[row, 0] = 0.0


def _pack_flops(specs: Sequence[JobSpec]) -> int:
    return 3 * plan(specs[0]).flops_per_example * batch_size(specs[0]) * len(specs)
