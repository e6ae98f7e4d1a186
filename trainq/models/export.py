"""A trained model as one file anyone can run: ONNX with the preprocessing fitted on the training split inside the
graph, so raw features go in and answers come out in the data's own units, verified against torch before it is
handed over.

    raw rows (N, F) or (N, C, H, W) ──▶ (x - shift) / div, one-hot codes ──▶ the network ──▶ answers
        classification: `label` (int64) and `probabilities` (or `scores` for hinge and perceptron heads)
        regression:     `value` (N, 1), in the target's units
        mixture density: `value` and `variance` (N, 1), the mixture's analytic mean and variance, and its
                         components `pi`, `mu`, `sigma` (N, K), all in the target's units
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainq import __version__
from trainq.models.bayes import BayesModule
from trainq.models.datasets import Preprocessing, class_names, feature_names, raw, splits
from trainq.models.losses import mdn_split
from trainq.models.spec import DatasetInfo, JobSpec
from trainq.models.state import State

BATCHES = (1, 7, 256)  # the batch sizes a file is checked at: one row, an odd few, a full batch
RTOL, ATOL = 1e-3, 1e-5


class Predictor(nn.Module):
    """The network with its preprocessing in front and its answer behind, as torch sees the exported graph."""

    def __init__(self, network: nn.Module, prep: Preprocessing, state: State):
        super().__init__()
        for m in network.modules():  # a variational network answers with its posterior means (no sampling)
            if isinstance(m, BayesModule):
                m.sample = False
        self.network = network
        self.classification = state.data.classes is not None
        self.objective = state.objective
        shape = (1, -1, 1, 1) if prep.image else (1, -1)
        shift = torch.tensor(prep.shift, dtype=torch.float64)
        div = torch.tensor(prep.div, dtype=torch.float64)
        # As the engine computes it, in float32: 8-bit pixels (kept as uint8, decoded per batch) as
        # (x - shift) * (1 / div), everything else as (x - shift) / div
        self.eight_bit = state.data.train.shift is not None
        self.register_buffer("shift", shift.float().reshape(shape))
        self.register_buffer("div", div.float().reshape(shape))
        self.register_buffer("scale", (1 / div).float().reshape(shape))
        self.nominal = sorted(prep.one_hot)
        for j in self.nominal:
            self.register_buffer(f"categories_{j}", torch.tensor(prep.one_hot[j], dtype=torch.float32).reshape(1, -1))
        self.y_mean, self.y_std = prep.y_mean, prep.y_std
        last = state.spec.model.layers[-1]
        self.components = last.components if last.type == "mdn" else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows as the network's inputs."""
        if self.eight_bit:
            return (x - self.shift) * self.scale
        z = (x - self.shift) / self.div
        if not self.nominal:
            return z
        parts = []
        for j in range(z.shape[1]):
            if j in self.nominal:
                parts.append((z[:, j:j + 1] == getattr(self, f"categories_{j}")).float())
            else:
                parts.append(z[:, j:j + 1])
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(self.features(x))
        if self.components is not None:  # one target: (N, K, 1) mixture parameters
            log_pi, mu, sigma = mdn_split(out, self.components)
            pi, mu, sigma = log_pi.exp(), mu[:, :, 0] * self.y_std + self.y_mean, sigma[:, :, 0] * self.y_std
            mean = (pi * mu).sum(dim=1, keepdim=True)
            variance = (pi * (sigma ** 2 + mu ** 2)).sum(dim=1, keepdim=True) - mean ** 2
            return mean, variance.clamp_min(0), pi, mu, sigma
        if not self.classification:
            return (self.objective.point(out) * self.y_std + self.y_mean,)
        label = self.objective.predict(out)
        if self.objective.probabilities is not None:
            return label, self.objective.probabilities(out)
        return label, out

    def output_names(self) -> list[str]:
        if self.components is not None:
            return ["value", "variance", "pi", "mu", "sigma"]
        if not self.classification:
            return ["value"]
        return ["label", "probabilities" if self.objective.probabilities is not None else "scores"]


@dataclass
class Exported:
    path: Path
    inputs: dict[str, Any]  # name -> {dtype, shape}, -1 for the batch
    outputs: list[str]
    checked: dict[int, float] = field(default_factory=dict)  # batch size -> largest difference from torch


class ExportError(RuntimeError):
    """The ONNX file disagrees with torch, or could not be made; nothing is handed over."""


def raw_rows(state: State, which: str, arrays: tuple | None = None) -> np.ndarray:
    """The raw (unpreprocessed) features of a split, as the model's users will send them."""
    spec = state.spec.dataset
    x, _ = raw(spec, arrays)
    train, val, test = splits(spec, len(x))
    return x[{"train": train, "val": val, "test": test}[which]].astype(np.float32)


def export_onnx(state: State, path: str | Path, arrays: tuple | None = None, *, meta: dict[str, str] | None = None,
                written=lambda: None) -> Exported:
    """Write the run's model with its preprocessing as ONNX to `path` and check it: onnxruntime on raw validation rows
    (test rows when there is no validation split) must agree with torch at batch sizes 1, 7 and 256. `meta` joins
    the file's metadata_props; `written()` is called between writing the file and checking it."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    prep = state.data.preprocessing
    if prep is None:
        raise ExportError("the run's data carries no preprocessing record")
    predictor = Predictor(state.model, prep, state).cpu().eval()
    rows = raw_rows(state, "val" if len(state.data.val) else "test", arrays)
    if not len(rows):
        raise ExportError("no validation or test rows to check the file with")
    sample = torch.from_numpy(np.resize(rows, (7, *rows.shape[1:])))  # any batch size but 1 (it would be fixed)
    names = predictor.output_names()
    # "torchvision is not installed", optimizer passes, deprecations: nothing a user acts on
    quiet = {name: logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")}
    levels = {name: log.level for name, log in quiet.items()}
    try:
        for log in quiet.values():
            log.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(predictor, (sample,), dynamo=True, input_names=["x"], output_names=names,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the export's failure, said as such
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    finally:
        for name, log in quiet.items():
            log.setLevel(levels[name])
    model = onnx.load(str(path))
    meta = {"trainq_version": __version__, "trainq_spec": json.dumps(state.spec.model_dump(mode="json")),
            "trainq_preprocessing": json.dumps(prep.as_dict()), "trainq_outputs": json.dumps(names), **(meta or {})}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    written()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checked = {}
    for size in BATCHES:
        batch = np.resize(rows, (size, *rows.shape[1:])).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in predictor(torch.from_numpy(batch))]
        got = session.run(names, {"x": batch})
        worst = 0.0
        for name, want, have in zip(names, expected, got):
            if want.shape != have.shape:
                raise ExportError(f"{name} at batch size {size}: onnxruntime gives shape {have.shape}, "
                                  f"torch {want.shape}")
            difference = float(np.max(np.abs(have.astype(np.float64) - want)))
            if not np.allclose(have, want, rtol=RTOL, atol=ATOL):
                raise ExportError(f"{name} at batch size {size}: onnxruntime and torch disagree "
                                  f"(largest difference {difference:.3g})")
            worst = max(worst, difference)
        checked[size] = worst
    shape = [-1, *rows.shape[1:]]
    return Exported(path, {"x": {"dtype": "float32", "shape": shape}}, names, checked)


def state_from_checkpoint(blob: bytes, arrays: tuple | None = None, info: DatasetInfo | None = None) -> State:
    """A run's model on the CPU as the run ended: its best epoch's weights when early stopping restored them, so the
    answers are those its test metrics were computed from. For a run on an uploaded dataset, `arrays` (x, y) and its
    `info` refit the preprocessing on the same training split."""
    from trainq.models.checkpoint import read_meta
    from trainq.models.engine import build

    spec = JobSpec.model_validate(read_meta(blob)["spec"])
    if info is not None:
        spec.dataset._info = info
    state = build(spec, device="cpu", resume=blob, arrays=arrays)
    tracker = state.tracker
    if getattr(tracker, "restore_best", False) and tracker.best_weights is not None:
        state.model.load_state_dict(tracker.best_weights)
    return state


DATATYPES = {"float32": "FP32", "int64": "INT64"}  # numpy's names -> the Open Inference Protocol's


def signature(state: State, arrays: tuple | None = None, columns: list[str] | None = None,
              names: list[str] | None = None) -> dict[str, Any]:
    """What the model takes and gives, for a registry and for the v2 protocol's metadata: the one input tensor `x`
    (raw features; -1 for the batch), the names of its features (a CSV's columns, a built-in table's own names, else
    f0, f1, ...) with the range
    each took in the training split, the outputs with datatype and shape, and the class names."""
    train = raw_rows(state, "train", arrays)
    shape = [-1, *train.shape[1:]]
    if train.ndim == 2:
        columns = columns or feature_names(state.spec.dataset)
        features = columns if columns and len(columns) == train.shape[1] else [f"f{i}" for i in range(train.shape[1])]
        ranges = {name: [float(lo), float(hi)] for name, lo, hi in zip(features, train.min(0), train.max(0))}
    else:  # images: one range per channel
        features = []
        flat = train.reshape(len(train), train.shape[1], -1)
        ranges = {f"channel{c}": [float(flat[:, c].min()), float(flat[:, c].max())] for c in range(train.shape[1])}
    classes = state.data.classes
    labels = names if names and classes is not None and len(names) == classes else (
        class_names(state.spec.dataset) if classes is not None else None)
    predictor = Predictor(state.model, state.data.preprocessing, state)
    outputs = []
    k = predictor.components
    for name in predictor.output_names():
        if name == "label":
            outputs.append({"name": name, "datatype": "INT64", "shape": [-1]})
        elif name in ("probabilities", "scores"):
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, classes]})
        elif name in ("pi", "mu", "sigma"):
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, k]})
        else:
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, 1]})
    task = "classification" if classes is not None else ("mixture" if k is not None else "regression")
    inference = state.spec.inference
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}], "features": features, "ranges": ranges,
            "outputs": outputs, "task": task, "class_names": labels,
            # the file answers with the posterior means (variational) or dropout off (mc_dropout): no samples yet
            "trained_with": inference.method if inference is not None else None}
