"""Checkpoints: one safetensors file, never a pickle.

Tensors: `model.*` (the weights), `optimizer.<param>.<key>`, `best.*` (the best weights when early stopping
restores them), `rng.torch`, `rng.cuda` (runs on a GPU) and `rng.shuffle`. The header's metadata key `trainq` holds
JSON with everything else a resume needs: epoch, step, spec, optimizer hyperparameters, scheduler, callback state,
metrics history.
A user loads the weights with `safetensors.torch.load_file(path)` and keeps the `model.` keys.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainq.models.state import State

# torch is imported inside the functions that need it: the service checks uploaded checkpoints with read_meta,
# which reads only the JSON header, and must not load torch for that.

FORMAT = "trainq-checkpoint/1"


def dump(state: "State") -> bytes:
    """Serialize the whole training state to safetensors bytes."""
    import torch
    from safetensors.torch import save as save_tensors

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in state.model.state_dict().items()}
    opt = state.optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    lists: dict[str, dict[str, list[bool]]] = {}  # L-BFGS keeps lists of tensors (and Nones): which hold one
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().contiguous()
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                for i, item in enumerate(value):
                    if item is not None:
                        tensors[f"optimizer.{idx}.{key}#{i}"] = item.detach().contiguous()
                lists.setdefault(str(idx), {})[key] = [item is not None for item in value]
            elif value is not None:
                scalars.setdefault(str(idx), {})[key] = value
    if state.tracker.best_weights is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in state.tracker.best_weights.items()})
    # A pack member's dropout draws from its own generator: saved where a run alone keeps the generator it uses
    # (the CPU's, or the GPU's), so either can resume from the other's checkpoint.
    own = state.rng
    tensors["rng.torch"] = own.get_state() if own is not None and own.device.type == "cpu" else torch.get_rng_state()
    if state.device.type == "cuda":  # dropout and augmentation on a GPU draw from its own generator
        tensors["rng.cuda"] = own.get_state() if own is not None else torch.cuda.get_rng_state(state.device)
    tensors["rng.shuffle"] = state.generator.get_state()
    if state.batch_in_epoch and state.epoch_rng is not None:  # interrupted part-way: the epoch's permutation
        tensors["rng.epoch"] = state.epoch_rng
    tensors = {k: v.cpu() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "spec": state.spec.model_dump(mode="json"),
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars, "lists": lists},
        "scheduler": state.scheduler.state_dict() if state.scheduler else None,
        "callbacks": {type(cb).__name__: cb.state_dict() for cb in state.callbacks},
        "metrics": state.metrics,
        "history": state.history,
        "batch_in_epoch": state.batch_in_epoch,  # > 0: saved part-way through epoch `epoch` + 1
        "epoch_loss": state.epoch_loss,
    }
    return save_tensors(tensors, metadata={"trainq": json.dumps(meta)})


def read_meta(blob: bytes) -> dict[str, Any]:
    """Read the JSON metadata of a checkpoint without touching its tensors."""
    if len(blob) < 8:
        raise ValueError("not a safetensors file: too short")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8 or size > 100 * 1024 * 1024:
        raise ValueError("not a safetensors file: bad header length")
    try:
        header = json.loads(blob[8:8 + size])
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        raise ValueError("not a safetensors file: bad header") from None
    if max(ends, default=0) != len(blob) - 8 - size:
        raise ValueError("not a safetensors file: the tensors do not fill the file (truncated?)")
    meta = header.get("__metadata__", {}).get("trainq")
    if meta is None:
        raise ValueError("not a trainq checkpoint: no trainq metadata")
    meta = json.loads(meta)
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format {meta.get('format')!r}")
    return meta


def restore(state: "State", blob: bytes) -> None:
    """Put a checkpoint back into a freshly built state, so the run continues as if uninterrupted."""
    import torch
    from safetensors.torch import load as load_tensors

    meta = read_meta(blob)
    tensors = load_tensors(blob)
    device = next(state.model.parameters()).device
    state.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer.") and "#" not in key:
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value.to(device) if name != "step" else value
    for idx, entries in meta["optimizer"].get("lists", {}).items():
        for name, present in entries.items():
            opt_state.setdefault(int(idx), {})[name] = [tensors[f"optimizer.{idx}.{name}#{i}"].to(device)
                                                        if held else None for i, held in enumerate(present)]
    for idx, entry in meta["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(entry)
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    if state.scheduler and meta["scheduler"]:
        state.scheduler.load_state_dict(meta["scheduler"])
    for cb in state.callbacks:
        saved = meta["callbacks"].get(type(cb).__name__)
        if saved is not None:
            cb.load_state_dict(saved)
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    if best:
        state.tracker.best_weights = best
    own = state.rng
    if own is not None and own.device.type == "cpu":
        own.set_state(tensors["rng.torch"])
    else:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and state.device.type == "cuda":  # (a GPU run resumed on a CPU draws afresh there)
        if own is not None:
            own.set_state(tensors["rng.cuda"])
        else:
            torch.cuda.set_rng_state(tensors["rng.cuda"], state.device)
    state.generator.set_state(tensors["rng.shuffle"])
    state.epoch, state.step = meta["epoch"], meta["step"]
    state.metrics, state.history = meta["metrics"], meta["history"]
    state.batch_in_epoch, state.epoch_loss = meta.get("batch_in_epoch", 0), meta.get("epoch_loss", 0.0)
    state.epoch_rng = tensors.get("rng.epoch")
    state.best_epoch, state.best_score = state.tracker.best_epoch, state.tracker.best


def load_weights(blob: bytes) -> "dict[str, torch.Tensor]":
    """Return the model weights of a checkpoint, as a state dict."""
    from safetensors.torch import load as load_tensors

    return {k[6:]: v for k, v in load_tensors(blob).items() if k.startswith("model.")}
