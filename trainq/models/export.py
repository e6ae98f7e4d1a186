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
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainq import __version__
from trainq.models.bayes import BayesModule
from trainq.models.datasets import (Preprocessing, class_names, feature_names, is_table, raw, split_indices, splits,
                                    streamed, table_rows)
from trainq.models.losses import gaussian_split, mdn_split
from trainq.models.spec import JobSpec, Uploaded, target_of
from trainq.models.state import State

BATCHES = (1, 7, 256)  # the batch sizes a file is checked at: one row, an odd few, a full batch
RTOL, ATOL = 1e-3, 1e-5


class SampledDropout(nn.Module):
    """Dropout that samples whatever the mode, written out as a uniform draw and a mask: ONNX's Dropout op would do,
    but onnxruntime's graph optimizer removes Dropout nodes (as it should for inference), masks and all."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p)


def with_sampled_dropout(network: nn.Module) -> nn.Module:
    """A copy of the network whose dropout layers always sample (the run's own network is left as it is)."""
    import copy

    network = copy.deepcopy(network)
    for parent in network.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, SampledDropout(child.p))
    return network


class Predictor(nn.Module):
    """The network with its preprocessing in front and its answer behind, as torch sees the exported graph."""

    def __init__(self, network: nn.Module, prep: Preprocessing, state: State, samples: int = 0,
                 noise_var: float = 0.0):
        super().__init__()
        self.method = state.spec.inference.method if state.spec.inference is not None else None
        self.network = with_sampled_dropout(network) if samples and self.method == "mc_dropout" else network
        # samples > 0: the graph draws that many posterior samples per row (the Bayesian layers' weights, or the
        # dropout masks) and answers with their mean and spread; 0: the posterior means, or dropout off
        self.samples, self.noise_var = samples, noise_var
        self.learned_noise = state.spec.inference is not None and state.spec.inference.noise == "learned"
        self.classification = state.data.classes is not None
        self.objective = state.objective
        dims = len(state.data.train.x.shape)  # a sequence's (N, T, F): per feature, over every step
        shape = (1, -1, 1, 1) if prep.image else (1, 1, -1) if dims == 3 else (1, -1)
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
        last = state.spec.model.output_layer
        self.components = last.components if last.type == "mdn" else None

    def modes(self) -> "Predictor":
        """Bayesian layers sample only in a sampling graph (mc_dropout's copy samples its dropout layers)."""
        for m in self.network.modules():
            if isinstance(m, BayesModule):
                m.sample = bool(self.samples)
        return self

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
        if self.samples:
            return self.sampled(self.features(x))
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

    def sampled(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """T samples of every row in one batch: classification answers the mean probabilities (and their label),
        the predictive entropy and the mutual information; regression the mean, the predictive std (epistemic plus
        the noise fitted on the validation split) and the epistemic std, in the target's units."""
        t, n = self.samples, z.shape[0]
        if self.method == "ensemble":  # the members' answers, (M, N, outputs) as (M * N, outputs), as samples are
            out = self.network(z).flatten(0, 1)
        else:
            out = self.network(z.repeat(t, *([1] * (z.dim() - 1))))
        if self.classification:
            p = self.objective.probabilities(out).reshape(t, n, -1)
            mean = p.mean(0)
            entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(1)
            expected = -(p * torch.log(p.clamp_min(1e-12))).sum(2).mean(0)
            return mean.argmax(1), mean, entropy, (entropy - expected).clamp_min(0)
        values = (self.objective.point(out) * self.y_std + self.y_mean).reshape(t, n, 1)
        mean, epistemic = values.mean(0), values.var(0, unbiased=False)
        noise = self.noise_var
        if self.learned_noise:  # a gaussian_nll head's own noise per row: the samples' mean
            noise = (gaussian_split(out)[1] * self.y_std ** 2).reshape(t, n, 1).mean(0)
        return mean, torch.sqrt(epistemic + noise), torch.sqrt(epistemic)

    def output_names(self) -> list[str]:
        if self.samples:
            return (["label", "probabilities", "entropy", "mutual_information"] if self.classification
                    else ["value", "std", "epistemic_std"])
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


Rows = np.ndarray | dict  # raw rows: one array (N, ...) , or an uploaded table's columns by name, each (N, 1)


def raw_rows(state: State, which: str, arrays=None) -> Rows:
    """The raw (unpreprocessed) features of a split, as the model's users will send them: an array, or for an
    uploaded table its raw columns (numbers with NaN for missing, text)."""
    spec = state.spec.dataset
    if streamed(arrays):
        return streamed_rows(state, which, arrays)
    if is_table(arrays):
        from trainq.data.codec import Codec, feeds_of

        table, _ = table_rows(spec, arrays)
        parts = dict(zip(("train", "val", "test"), split_indices(table.num_rows, spec.val_fraction,
                                                                  spec.test_fraction, spec.seed)))
        return feeds_of(Codec.from_dict(state.data.preprocessing.table), table.take(parts[which]))
    x, _ = raw(spec, arrays)
    train, val, test = splits(spec, len(x))
    return x[{"train": train, "val": val, "test": test}[which]].astype(np.float32)


STREAMED_ROWS = 4096  # raw rows of a streamed table's split read to check and describe its export


def streamed_rows(state: State, which: str, source) -> dict:
    """The first STREAMED_ROWS raw rows of a streamed table's split, read from its file front to back, as the shards
    assigned them (a hash of each row's index, or the split column)."""
    import pyarrow as pa

    from trainq.data.codec import Codec, feeds_of
    from trainq.data.formats import RESTART, batches
    from trainq.data.shards import SPLITS, kept_rows, splits_of

    spec = state.spec.dataset
    codec = Codec.from_dict(state.data.preprocessing.table)
    classes = state.data.classes and class_names(spec)
    wanted, parts, start, got = SPLITS.index(which), [], 0, 0
    for batch in batches(source.raw, source.fmt):
        if batch is RESTART:
            parts, start, got = [], 0, 0
            continue
        table = pa.Table.from_batches([batch])
        keep = kept_rows(table, codec, target_of(spec), classes)
        split = splits_of(batch, start, spec.seed, spec.val_fraction, spec.test_fraction, spec.split_column)
        start += batch.num_rows
        chosen = np.flatnonzero(keep & (split == wanted))[:STREAMED_ROWS - got]
        if len(chosen):
            parts.append(table.take(chosen))
            got += len(chosen)
        if got >= STREAMED_ROWS:
            break
    return feeds_of(codec, pa.concat_tables(parts)) if parts else {f.name: np.empty((0, 1)) for f in codec.features}


def count(rows: Rows) -> int:
    return len(next(iter(rows.values()))) if isinstance(rows, dict) else len(rows)


def resized(rows: Rows, size: int) -> Rows:
    """`size` rows, repeating the given ones as needed (np.resize)."""
    if isinstance(rows, dict):
        return {name: np.resize(column, (size, 1)) for name, column in rows.items()}
    return np.resize(rows, (size, *rows.shape[1:])).astype(np.float32)


def encoded(state: State, rows: Rows) -> torch.Tensor:
    """Raw rows as the Predictor's input: an uploaded table's columns through its fitted codec, else as they are."""
    if isinstance(rows, dict):
        from trainq.data.codec import Codec, encode_feeds

        return torch.from_numpy(encode_feeds(Codec.from_dict(state.data.preprocessing.table), rows))
    return torch.from_numpy(rows)


def feeds(rows: Rows) -> dict[str, np.ndarray]:
    """Raw rows as the exported graph's inputs."""
    return rows if isinstance(rows, dict) else {"x": rows}


SAMPLED_TOLERANCE = 0.1  # a sampling classifier's mean probabilities against torch's own Monte Carlo mean


def export_onnx(state: State, path: str | Path, arrays: tuple | None = None, *, meta: dict[str, str] | None = None,
                written=lambda: None) -> Exported:
    """Write the run's model with its preprocessing as ONNX to `path` and check it: onnxruntime on raw validation rows
    (test rows when there is no validation split) must agree with torch at batch sizes 1, 7 and 256. `meta` joins
    the file's metadata_props; `written()` is called between writing the file and checking it.

    A run with an inference block gets a graph that draws `inference.samples` posterior samples per row and answers
    with their mean and spread. Random draws cannot match torch's, so its posterior-mean twin (the same graph without
    sampling) is checked exactly first, then the sampling graph's mean against torch's Monte Carlo mean. An
    ensemble's graph computes every member and answers as their mixture: no draws, so it is checked exactly."""
    path = Path(path)
    prep = state.data.preprocessing
    if prep is None:
        raise ExportError("the run's data carries no preprocessing record")
    rows = raw_rows(state, "val" if len(state.data.val) else "test", arrays)
    if not count(rows):
        raise ExportError("no validation or test rows to check the file with")
    inference = state.spec.inference
    if inference is None:
        predictor = Predictor(state.model, prep, state).cpu().eval().modes()
        _write(state, predictor, path, rows, meta, written)
        checked = _check_exact(predictor, path, rows, state)
    elif inference.method == "ensemble":  # deterministic: the mixture of the members, checked exactly
        predictor = Predictor(state.model, prep, state, inference.members, _noise(state)).cpu().eval()
        _write(state, predictor, path, rows, {"trainq_samples": str(inference.members),
                                              "trainq_noise_var": repr(predictor.noise_var), **(meta or {})}, written)
        checked = _check_exact(predictor, path, rows, state)
    else:
        import tempfile

        twin = Predictor(state.model, prep, state).cpu().eval().modes()
        with tempfile.TemporaryDirectory(prefix="trainq-twin-") as folder:
            _write(state, twin, Path(folder) / "twin.onnx", rows, None, lambda: None)
            _check_exact(twin, Path(folder) / "twin.onnx", rows, state)
        noise = _noise(state)
        predictor = Predictor(state.model, prep, state, inference.samples, noise).cpu().eval().modes()
        _write(state, predictor, path, rows, {"trainq_samples": str(inference.samples),
                                              "trainq_noise_var": repr(noise), **(meta or {})}, written)
        checked = _check_sampled(predictor, path, rows, state)
        twin.modes()  # the run's own modules back to their posterior means / dropout off
    if isinstance(rows, dict):
        inputs = {name: {"dtype": "float32" if column.dtype != object else "string", "shape": [-1, 1]}
                  for name, column in rows.items()}
    else:
        inputs = {"x": {"dtype": "float32", "shape": [-1, *rows.shape[1:]]}}
    return Exported(path, inputs, predictor.output_names(), checked)


def _noise(state: State) -> float:
    """A regression's noise variance for the predictive std (fitted on the validation split); 0 for classification."""
    if state.data.classes is not None:
        return 0.0
    from trainq.models.engine import noise_variance

    return noise_variance(state)


def _write(state: State, predictor: Predictor, path: Path, rows: Rows, meta: dict[str, str] | None,
           written) -> None:
    import onnx

    sample = encoded(state, resized(rows, 7))  # any batch size but 1 (it would be fixed)
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
    if state.data.preprocessing.table is not None:  # an uploaded table: its raw columns in, the codec in the graph
        from trainq.data.codec import Codec, graft

        model = graft(model, Codec.from_dict(state.data.preprocessing.table))
    meta = {"trainq_version": __version__, "trainq_spec": json.dumps(state.spec.model_dump(mode="json")),
            "trainq_preprocessing": json.dumps(state.data.preprocessing.as_dict()),
            "trainq_outputs": json.dumps(names), **(meta or {})}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    written()


def _runs(predictor: Predictor, path: Path, rows: Rows, state: State):
    """(batch size, torch's answers, onnxruntime's answers) at each size checked."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = predictor.output_names()
    for size in BATCHES:
        batch = resized(rows, size)
        with torch.no_grad():
            expected = [t.numpy() for t in predictor(encoded(state, batch))]
        got = session.run(names, feeds(batch))
        for name, want, have in zip(names, expected, got):
            if want.shape != have.shape:
                raise ExportError(f"{name} at batch size {size}: onnxruntime gives shape {have.shape}, "
                                  f"torch {want.shape}")
        yield size, dict(zip(names, expected)), dict(zip(names, got))


def _check_exact(predictor: Predictor, path: Path, rows: Rows, state: State) -> dict[int, float]:
    checked = {}
    for size, expected, got in _runs(predictor, path, rows, state):
        worst = 0.0
        for name, want in expected.items():
            have = got[name]
            difference = float(np.max(np.abs(have.astype(np.float64) - want)))
            if not np.allclose(have, want, rtol=RTOL, atol=ATOL):
                raise ExportError(f"{name} at batch size {size}: onnxruntime and torch disagree "
                                  f"(largest difference {difference:.3g})")
            worst = max(worst, difference)
        checked[size] = worst
    return checked


def _check_sampled(predictor: Predictor, path: Path, rows: Rows, state: State) -> dict[int, float]:
    """Both draw their own samples, so their means differ by Monte Carlo error: on the full batch, the mean absolute
    difference must stay within SAMPLED_TOLERANCE of a probability (classification), or within four standard errors
    of the difference of two T-sample means (regression: 4 sqrt(2/T) times the epistemic std); every answer must be
    finite."""
    checked = {}
    for size, expected, got in _runs(predictor, path, rows, state):
        if not all(np.isfinite(v).all() for v in got.values()):
            raise ExportError(f"the sampling graph gives a value that is not finite at batch size {size}")
        if "probabilities" in got:
            difference = float(np.abs(got["probabilities"] - expected["probabilities"]).mean())
            bound = SAMPLED_TOLERANCE
        else:
            difference = float(np.abs(got["value"] - expected["value"]).mean())
            bound = 4 * math.sqrt(2 / predictor.samples) * float(np.mean(expected["epistemic_std"])) + 1e-5
        if size == BATCHES[-1] and difference > bound:
            raise ExportError(f"the sampling graph's mean and torch's differ by {difference:.3g} on average, more "
                              f"than Monte Carlo error explains ({bound:.3g})")
        checked[size] = difference
    return checked


def state_from_checkpoint(blob: bytes, arrays=None, uploaded: Uploaded | None = None) -> State:
    """A run's model on the CPU as the run ended: its best epoch's weights when early stopping restored them, so the
    answers are those its test metrics were computed from. For a run on an uploaded dataset, its data (`arrays`:
    x and y, or a table) and what the service knows of it (`uploaded`) refit the preprocessing on the same training
    split."""
    from trainq.models.checkpoint import read_meta
    from trainq.models.engine import build

    spec = JobSpec.model_validate(read_meta(blob)["spec"])
    if uploaded is not None:
        spec.dataset.resolve(uploaded)
    state = build(spec, device="cpu", resume=blob, arrays=arrays)
    tracker = state.tracker
    if getattr(tracker, "restore_best", False) and tracker.best_weights is not None:
        state.model.load_state_dict(tracker.best_weights)
    return state


DATATYPES = {"float32": "FP32", "int64": "INT64"}  # numpy's names -> the Open Inference Protocol's


def signature(state: State, arrays=None, columns: list[str] | None = None,
              names: list[str] | None = None) -> dict[str, Any]:
    """What the model takes and gives, for a registry and for the v2 protocol's metadata: its inputs (the one tensor
    `x` of raw features, -1 for the batch; or an uploaded table's raw columns, one input each, `columns` saying their
    kinds and vocabularies), the names of its features (a table's columns, a built-in table's own names, else f0,
    f1, ...) with the range each took in the training split, the outputs with datatype and shape, the class names,
    and for uploaded images how an image file becomes a row (`image`: size, resize, channels)."""
    train = raw_rows(state, "train", arrays)
    extra: dict[str, Any] = {}
    if isinstance(train, dict):  # an uploaded table: one input per raw column, named as the column
        from trainq.data.codec import Codec

        codec = Codec.from_dict(state.data.preprocessing.table)
        inputs = [{"name": f.name, "datatype": "FP32" if f.kind == "number" else "BYTES", "shape": [-1, 1]}
                  for f in codec.features]
        features = [f.name for f in codec.features]
        ranges = {name: [float(np.nanmin(column)), float(np.nanmax(column))] for name, column in train.items()
                  if column.dtype != object and not np.isnan(column).all()}
        extra["columns"] = codec.columns()
        profile = state.spec.dataset.uploaded.profile  # the table's other columns: sent along, they are ignored
        extra["ignored_columns"] = [c["name"] for c in profile["columns"] if c["name"] not in features]
    elif train.ndim == 2:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, *train.shape[1:]]}]
        columns = columns or feature_names(state.spec.dataset)
        features = columns if columns and len(columns) == train.shape[1] else [f"f{i}" for i in range(train.shape[1])]
        ranges = {name: [float(lo), float(hi)] for name, lo, hi in zip(features, train.min(0), train.max(0))}
    else:  # images: one range per channel
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, *train.shape[1:]]}]
        if state.spec.dataset.table_kind() == "images":  # how an image file becomes a row of x
            from trainq.models.spec import image_target

            target = image_target(state.spec.dataset)
            extra["image"] = {"size": list(target.size), "resize": target.resize, "channels": target.channels}
        features = []
        flat = train.reshape(len(train), train.shape[1], -1)
        ranges = {f"channel{c}": [float(flat[:, c].min()), float(flat[:, c].max())] for c in range(train.shape[1])}
    classes = state.data.classes
    labels = names if names and classes is not None and len(names) == classes else (
        class_names(state.spec.dataset) if classes is not None else None)
    inference = state.spec.inference
    predictor = Predictor(state.model, state.data.preprocessing, state, inference.draws if inference else 0)
    outputs = []
    k = predictor.components
    for name in predictor.output_names():
        if name in ("label", "entropy", "mutual_information"):
            outputs.append({"name": name, "datatype": "INT64" if name == "label" else "FP32", "shape": [-1]})
        elif name in ("probabilities", "scores"):
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, classes]})
        elif name in ("pi", "mu", "sigma"):
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, k]})
        else:
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, 1]})
    task = "classification" if classes is not None else ("mixture" if k is not None else "regression")
    return {"inputs": inputs, "features": features, "ranges": ranges,
            "outputs": outputs, "task": task, "class_names": labels,
            "uncertainty": {"method": inference.method, "samples": inference.draws} if inference else None, **extra}
