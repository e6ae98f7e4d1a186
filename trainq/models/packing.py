"""Which trials pack together, and when packing pays: arithmetic on specs, no torch (the service plans a sweep's
packs with it; trainq.models.packed trains them)."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from trainq.models.spec import JobSpec, batch_size, plan, spec_rows, stacking_limit

# Fields members may differ in (dotted paths; `*` is any list index). Everything else must be equal.
PACKABLE = ("name", "register_as", "resources.priority", "training.seed", "training.early_stopping",
            "training.checkpoint_every_seconds", "training.keep_checkpoints", "training.log_every_steps",
            "optimizer.lr", "optimizer.momentum", "optimizer.nesterov", "optimizer.betas", "optimizer.eps",
            "optimizer.alpha", "regularization", "loss.label_smoothing", "schedule.step_size", "schedule.gamma",
            "schedule.min_lr", "schedule.start_factor", "schedule.epochs", "model.layers.*.p", "model.layers.*.std")


class PackError(ValueError):
    """These specs cannot train as one pack; the message says which field and why."""


# ---------------------------------------------------------------------------------------------------------------------
# Which specs pack together
# ---------------------------------------------------------------------------------------------------------------------


def _without(document: Any, path: list[str]) -> None:
    head, rest = path[0], path[1:]
    if head == "*":
        for item in document if isinstance(document, list) else []:
            _without(item, rest)
        return
    if not isinstance(document, dict) or head not in document:
        return
    if rest:
        _without(document[head], rest)
    else:
        del document[head]


def pack_key(spec: JobSpec) -> str:
    """What members of one pack must share: the spec with every packable field left out, as canonical JSON. The
    model is compared as its expanded graph (each layer with what it reads), so blocks used with other parameters
    differ where their layers do, and a dropout `p` in a block may differ as one in model.layers may."""
    document = spec.model_dump(mode="json")
    document["model"] = {"init": document["model"].get("init"), "layers": [
        {**node.layer.model_dump(mode="json", exclude={"id", "from_"}), "inputs": list(node.inputs)}
        for node in spec.model.nodes]}
    for path in PACKABLE:
        _without(document, path.split("."))
    return json.dumps(document, sort_keys=True)


def unpackable(spec: JobSpec) -> str | None:
    """Why this spec cannot be a pack member (None: it can)."""
    if spec.optimizer.type == "lbfgs":
        return "optimizer.type: lbfgs re-evaluates the loss inside its step and is never packed"
    if spec.inference is not None:
        return "inference: Bayesian, Monte Carlo and ensemble runs are not packed (an ensemble is stacked already)"
    limit = stacking_limit(spec)
    return f"{limit[0]}: {limit[1]}" if limit is not None else None


def check_pack(specs: Sequence[JobSpec]) -> None:
    """Raise PackError unless every spec can train in one pack with the first."""
    if not specs:
        raise PackError("a pack needs at least one member")
    for i, spec in enumerate(specs):
        reason = unpackable(spec)
        if reason:
            raise PackError(f"member {i}: {reason}")
    first = pack_key(specs[0])
    for i, spec in enumerate(specs[1:], start=1):
        if pack_key(spec) != first:
            raise PackError(f"member {i} differs from member 0 in {_first_difference(specs[0], spec)}, which is not "
                            "packable: members may differ only in optimizer, regularization, dropout p, noise std, "
                            "seed, label smoothing, early stopping and the schedule's numbers")


def _first_difference(a: JobSpec, b: JobSpec) -> str:
    left = {path: value for path, value, _ in spec_rows(a)}
    right = {path: value for path, value, _ in spec_rows(b)}
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key) and not _packable(key):
            return key
    return "a field"


def _packable(path: str) -> bool:
    plain = re.sub(r"\[\d+\]", ".*", path)
    return any(plain == p or plain.startswith(p + ".") or plain.startswith(p + "[") for p in PACKABLE)


# Where packing stops paying on a CPU, measured on two cores (python bench/packed.py, its crossover rows): packed /
# sequential time for 4 trials was 0.41-0.50 for the digits MLP 64-64 (2 M multiply-adds per training step), 0.65-0.79
# at 256 wide (16 M) and 1.0-1.9 at 512 wide (58 M); 0.45-0.68 for the small CNN of bench/engine_speed.py (19 M),
# 0.6-1.05 at twice its channels (65 M) and 1.0-1.2 at four times (244 M). Batched matrix multiplies of wide layers
# are slower than one wide GEMM; grouped convolutions hold up longer. Below these limits a step is overhead-bound and
# packing wins; above them the CPU is busy already, and the runs moved too much between sessions to pack there.
CPU_PACK_LIMIT = {"dense": 20_000_000, "conv": 40_000_000}
MAX_PACK = 64  # members in one pack, whatever the estimates say: past this the gains were flat on both machines


def step_flops(spec: JobSpec) -> int:
    """Multiply-adds of one training step of one trial (forward and backward, ~3x the forward)."""
    return 3 * plan(spec).flops_per_example * batch_size(spec)


def worth_packing(spec: JobSpec, device: str) -> bool:
    """Whether trials of this spec train faster packed than one after another on `device` (cpu or cuda): on a GPU a
    small model leaves the device idle, so always; on a CPU only below the measured limits above."""
    if unpackable(spec) is not None:
        return False
    if device.startswith("cuda") or device == "gpu":
        return True
    convolutional = any("conv2d" in node.layer.type for node in spec.model.nodes)
    return step_flops(spec) < CPU_PACK_LIMIT["conv" if convolutional else "dense"]


def pack_size(spec: JobSpec, device: str, memory_bytes: int | None = None) -> int:
    """How many members one pack of this spec should hold: 1 where packing does not pay, else as many as fit in
    a quarter of `memory_bytes` (the device's, when known) by the dry run's estimate, at most MAX_PACK."""
    if not worth_packing(spec, device):
        return 1
    if memory_bytes is None:
        return MAX_PACK
    per_member = max(1, plan(spec).memory_bytes)
    return max(1, min(MAX_PACK, memory_bytes // 4 // per_member))
