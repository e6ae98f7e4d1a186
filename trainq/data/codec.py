"""The preprocessing of a table, planned from its profile and fitted on the training split: how each raw column
becomes the model's input columns. The same codec encodes the training data (numpy, here) and is written into the
exported ONNX graph (`onnx_graph`), so a model takes the raw columns: strings for categories, floats with NaN for
missing numbers.

    number     fill the missing values (mean, median, most frequent or a constant), then scale (z-score, min-max)
    category   a vocabulary of the training split's most frequent values (at most max_categories, each seen at least
               min_frequency times); index 0 is the unknown bucket (unseen, rare). One-hot coded (slots + 1 columns),
               or passed as the index for a learned embedding (the model embeds it)
    indicator  optionally a 0/1 column saying the value was missing

A column's width is fixed when it is planned, from the profile alone (a category has min(max_categories, distinct)
slots), so the service's dry run knows the model's input width before any worker reads the data; a slot the training
split does not fill stays zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from trainq.data.formats import DataError
from trainq.data.profile import LEFT_OUT, label

KINDS = ("number", "category", "binary", "ignore")  # what a spec may call a column (besides the inferred types)
MISSING = ("mean", "median", "most_frequent", "constant", "drop_row")


@dataclass(frozen=True)
class Rule:
    """What the spec says of one column, defaults filled in."""

    type: str | None = None  # None: as inferred
    encoding: str = "one_hot"  # categories: one_hot | embedding
    dim: int = 4  # embedding width
    max_categories: int = 50
    min_frequency: int = 1
    missing: str = "mean"  # numbers; a category's mean or median is its most frequent value
    fill_value: float | str | None = None  # missing: constant
    indicator: bool = False


@dataclass
class Feature:
    """One raw column as the model sees it: planned from the profile, then fitted on the training split."""

    name: str
    kind: str  # number | category
    encoding: str  # scale | one_hot | embedding
    missing: str
    indicator: bool
    slots: int = 0  # category: vocabulary entries at most (index 0 is the unknown bucket besides them)
    dim: int = 0  # embedding: its width in the model
    min_frequency: int = 1
    fill_value: float | str | None = None
    # fitted
    fill: float | str | None = None
    shift: float = 0.0
    div: float = 1.0
    vocab: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Columns of the encoded input this feature takes (an embedded category: its index, one column)."""
        body = self.slots + 1 if self.encoding == "one_hot" else 1
        return body + int(self.indicator)

    @property
    def model_width(self) -> int:
        """Columns of the model's first layer's input this feature takes (an embedding: its vectors)."""
        return (self.dim if self.encoding == "embedding" else self.width - int(self.indicator)) + int(self.indicator)


@dataclass
class Codec:
    features: list[Feature]
    scale: str  # zscore | minmax | none, for numbers

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def model_width(self) -> int:
        return sum(f.model_width for f in self.features)

    def embeddings(self) -> list[tuple[int, int, int]]:
        """(column of the encoded input, rows of the table: slots + 1, dim) for each embedded category."""
        out, at = [], 0
        for f in self.features:
            if f.encoding == "embedding":
                out.append((at, f.slots + 1, f.dim))
            at += f.width
        return out

    def columns(self) -> list[dict[str, Any]]:
        """The raw inputs a model of this codec takes, in order: name, kind (number or category), whether a missing
        value is refused (drop_row) and the vocabulary of a category."""
        return [{"name": f.name, "kind": f.kind, "required": f.missing == "drop_row",
                 **({"categories": f.vocab} if f.kind == "category" else {})} for f in self.features]

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Codec":
        return cls([Feature(**f) for f in data["features"]], data["scale"])


# ---------------------------------------------------------------------------------------------------------------------
# Plan: from the profile and the spec's rules, before any data is read
# ---------------------------------------------------------------------------------------------------------------------


def plan(profile: Mapping[str, Any], rules: Mapping[str, Rule], default: Rule, scale: str,
         target: str | None = None) -> Codec:
    """The codec's columns and widths for a table of this profile (unfitted). Raises DataError naming a column the
    rules name that the table lacks, or a type a column cannot take."""
    target = target or profile["target"]["name"]
    by_name = {c["name"]: c for c in profile["columns"]}
    for name in rules:
        if name not in by_name:
            raise DataError(f"no column {name!r}; the table's columns are {', '.join(list(by_name)[:30])}")
    features = []
    for column in profile["columns"]:
        name = column["name"]
        if name == target:
            continue
        rule = rules.get(name, default)
        kind = rule.type or column["type"]
        if kind == "ignore" or (rule.type is None and kind in LEFT_OUT):
            continue
        if kind in ("text", "identifier", "datetime", "empty"):
            raise DataError(f"column {name!r}: {kind} columns cannot be trained on yet; leave it out (ignore) or "
                            "call it category")
        numeric = column["dtype"].startswith(("int", "uint", "double", "float", "halffloat", "bool"))
        if kind == "binary":
            kind = "number" if numeric else "category"
        if kind == "number" and not numeric:
            examples = ", ".join(repr(v) for v in column["examples"][:3])
            raise DataError(f"column {name!r} holds text ({examples}), not numbers; call it category")
        missing = rule.missing
        if kind == "category" and missing in ("mean", "median"):
            missing = "most_frequent"
        if missing == "constant" and rule.fill_value is None:
            raise DataError(f"column {name!r}: missing: constant needs a fill_value")
        if kind == "number" and missing == "constant" and not isinstance(rule.fill_value, (int, float)):
            raise DataError(f"column {name!r}: the fill_value of a number column must be a number")
        if kind == "number":
            features.append(Feature(name, "number", "scale", missing, rule.indicator, fill_value=rule.fill_value))
            continue
        distinct = column["distinct"] if not column.get("many_values") else rule.max_categories
        slots = max(1, min(rule.max_categories, distinct))
        features.append(Feature(name, "category", rule.encoding, missing, rule.indicator, slots=slots,
                                dim=rule.dim if rule.encoding == "embedding" else 0,
                                min_frequency=rule.min_frequency,
                                fill_value=None if rule.fill_value is None else label(rule.fill_value)))
    if not features:
        raise DataError("no feature column is left to train on; name the columns to use in dataset.columns")
    return Codec(features, scale)


# ---------------------------------------------------------------------------------------------------------------------
# Fit and encode (numpy)
# ---------------------------------------------------------------------------------------------------------------------


def strings(array) -> np.ndarray:
    """A pyarrow column as an object array of the text each value is known by, "" for a missing value."""
    import pyarrow as pa

    if pa.types.is_floating(array.type):  # 1.0 -> "1", as JSON's 1 and 1.0 both arrive
        return np.array(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else label(v)
                         for v in array.to_pylist()], dtype=object)
    text = array.cast(pa.string()).fill_null("")
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def numbers(array) -> np.ndarray:
    """A pyarrow column as float64, NaN for a missing or infinite value."""
    import pyarrow as pa

    values = array.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    values[~np.isfinite(values)] = math.nan
    return values


RESERVOIR = 1_000_000  # values kept for a median: exact up to this many training values, a uniform sample past it
MAX_COUNTED = 1_000_000  # distinct values counted for a vocabulary or a mode; past it, new values go uncounted


class _Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.): precise where sums of squares
    are not."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, n: int, mean: float, m2: float) -> None:
        if not n:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total


class Fitter:
    """Fits a planned codec on training rows handed over batch by batch (a table in memory is one batch), so a table
    larger than memory is fitted in one streamed pass: means and spreads merged exactly, minima and maxima, value
    counts, and a median from at most RESERVOIR values."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.rng = np.random.default_rng(0)
        self.stats: list[dict[str, Any]] = [
            {"moments": _Moments(), "missing": 0, "low": math.inf, "high": -math.inf, "counts": {},
             "kept": np.empty(0), "seen": 0} for _ in codec.features]

    def add(self, table, rows: np.ndarray | None = None) -> None:
        """Count the table's rows `rows` (all of them when None)."""
        for f, st in zip(self.codec.features, self.stats):
            column = table.column(f.name) if rows is None else table.column(f.name).take(rows)
            if f.kind == "number":
                x = numbers(column)
                present = x[~np.isnan(x)]
                st["missing"] += len(x) - len(present)
                if len(present):
                    st["moments"].add(len(present), float(present.mean()),
                                      float(((present - present.mean()) ** 2).sum()))
                    st["low"], st["high"] = min(st["low"], float(present.min())), max(st["high"], float(present.max()))
                    if f.missing == "most_frequent":
                        self._count(st["counts"], *np.unique(present, return_counts=True))
                    if f.missing == "median":
                        self._keep(st, present)
            else:
                text = strings(column)
                self._count(st["counts"], *np.unique(text[text != ""], return_counts=True))

    @staticmethod
    def _count(counts: dict, values: np.ndarray, times: np.ndarray) -> None:
        for value, count in zip(values.tolist(), times.tolist()):
            if value in counts or len(counts) < MAX_COUNTED:
                counts[value] = counts.get(value, 0) + count

    def _keep(self, st: dict, values: np.ndarray) -> None:
        """Every value up to RESERVOIR, then a uniform sample of that many (reservoir sampling, a batch at a time),
        in a float64 array that grows to at most RESERVOIR values (8 MB)."""
        kept, held = st["kept"], st["seen"] if st["seen"] < RESERVOIR else RESERVOIR
        room = min(RESERVOIR - held, len(values))
        if room:
            if len(kept) < held + room:
                grown = np.empty(min(RESERVOIR, max(2 * len(kept), held + room)))
                grown[:held] = kept[:held]
                st["kept"] = kept = grown
            kept[held:held + room] = values[:room]
        rest = values[room:]
        seen = st["seen"] + room
        if len(rest):  # each later value replaces a kept one with probability RESERVOIR / (values seen so far)
            slots = self.rng.integers(0, np.arange(seen + 1, seen + len(rest) + 1))
            chosen = slots < RESERVOIR
            kept[slots[chosen]] = rest[chosen]
        st["seen"] = seen + len(rest)

    def fitted(self) -> Codec:
        out = []
        for f, st in zip(self.codec.features, self.stats):
            if f.kind == "category":
                order = sorted(st["counts"].items(), key=lambda kv: (-kv[1], kv[0]))
                vocab = [str(v) for v, c in order if c >= f.min_frequency][:f.slots]
                out.append(replace(f, fill=f.fill_value if f.missing == "constant" else (vocab[0] if vocab else ""),
                                   vocab=vocab))
                continue
            moments, missing = st["moments"], st["missing"]
            if f.missing == "constant":
                fill = float(f.fill_value)
            elif not moments.n:
                fill = 0.0
            elif f.missing == "median":
                fill = float(np.median(st["kept"][:min(st["seen"], RESERVOIR)]))
            elif f.missing == "most_frequent":
                fill = float(min(st["counts"].items(), key=lambda kv: (-kv[1], kv[0]))[0])
            else:
                fill = moments.mean
            filled = _Moments()  # the present values and `missing` copies of the fill
            filled.add(moments.n, moments.mean, moments.m2)
            filled.add(missing, fill, 0.0)
            shift, div = 0.0, 1.0
            if self.codec.scale == "zscore" and filled.n:
                shift, div = filled.mean, math.sqrt(filled.m2 / filled.n)
            elif self.codec.scale == "minmax" and filled.n:
                low, high = min(st["low"], fill) if missing else st["low"], max(st["high"], fill) if missing else \
                    st["high"]
                shift, div = low, high - low
            out.append(replace(f, fill=fill, shift=shift, div=div if div > 1e-12 else 1.0))
        return Codec(out, self.codec.scale)


def fit(codec: Codec, table, rows: np.ndarray) -> Codec:
    """A copy of the planned codec fitted on the table's rows `rows` (the training split)."""
    fitter = Fitter(codec)
    fitter.add(table, rows if len(rows) != table.num_rows else None)
    return fitter.fitted()


def index_of(f: Feature, text: np.ndarray) -> np.ndarray:
    """Each value's vocabulary index (1-based; 0 for an unseen or rare value), a missing one ("") as its fill's."""
    lookup = {v: i + 1 for i, v in enumerate(f.vocab)}
    filled = lookup.get(f.fill, 0)
    return np.fromiter((lookup.get(v, 0) if v != "" else filled for v in text), dtype=np.int64, count=len(text))


def encode_feeds(codec: Codec, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Raw columns (as `feeds` gives them: float64 with NaN, or text with "" for missing) as the encoded input,
    float32 (N, width): what the ONNX graph computes from the same columns."""
    parts = []
    for f in codec.features:
        raw = np.asarray(feeds[f.name]).reshape(-1)
        if f.kind == "number":
            x = raw.astype(np.float64)
            missing = ~np.isfinite(x)
            parts.append(((np.where(missing, f.fill, x) - f.shift) / f.div)[:, None])
        else:
            missing = raw == ""
            idx = index_of(f, raw)
            if f.encoding == "one_hot":
                parts.append((idx[:, None] == np.arange(f.slots + 1)[None, :]).astype(np.float64))
            else:
                parts.append(idx[:, None].astype(np.float64))
        if f.indicator:
            parts.append(missing[:, None].astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


def feeds_of(codec: Codec, table) -> dict[str, np.ndarray]:
    """A table's raw columns as a model of this codec takes them (the ONNX inputs): numbers as float32 (N, 1) with
    NaN for missing, categories as text (N, 1) with "" for missing."""
    feeds = {}
    for f in codec.features:
        if f.name not in table.column_names:
            raise DataError(f"no column {f.name!r}; the model takes {', '.join(c.name for c in codec.features)}")
        column = table.column(f.name)
        feeds[f.name] = (numbers(column).astype(np.float32) if f.kind == "number" else strings(column))[:, None]
    return feeds


def encode(codec: Codec, table) -> np.ndarray:
    """A table's rows as the encoded input, float32 (N, width)."""
    return encode_feeds(codec, feeds_of(codec, table))


def required_rows(codec: Codec, table) -> np.ndarray:
    """The rows to keep: those with a value in every drop_row column (and in the target, checked by the caller)."""
    keep = np.ones(table.num_rows, dtype=bool)
    for f in codec.features:
        if f.missing == "drop_row":
            column = table.column(f.name)
            keep &= ~np.isnan(numbers(column)) if f.kind == "number" else strings(column) != ""
    return keep


# ---------------------------------------------------------------------------------------------------------------------
# The same in an ONNX graph
# ---------------------------------------------------------------------------------------------------------------------

ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 3


def onnx_graph(codec: Codec, output: str = "x"):
    """(inputs, nodes, initializers) computing `output`, the encoded input (float32, (N, width)), from one input per
    raw column, named as the column: float (N, 1) with NaN for a missing number, string (N, 1) with "" for a missing
    category. Nodes use the default domain and ai.onnx.ml's LabelEncoder."""
    from onnx import TensorProto, helper, numpy_helper

    inputs, nodes, inits, parts = [], [], [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    for i, f in enumerate(codec.features):
        p = f"prep{i}_"
        if f.kind == "number":
            inputs.append(helper.make_tensor_value_info(f.name, TensorProto.FLOAT, ["N", 1]))
            nodes += [helper.make_node("IsNaN", [f.name], [p + "nan"]),
                      helper.make_node("IsInf", [f.name], [p + "inf"]),
                      helper.make_node("Or", [p + "nan", p + "inf"], [p + "missing"]),
                      helper.make_node("Where", [p + "missing", const(p + "fill", np.array(f.fill, np.float32)),
                                                 f.name], [p + "filled"]),
                      helper.make_node("Sub", [p + "filled", const(p + "shift", np.array(f.shift, np.float32))],
                                       [p + "centred"]),
                      helper.make_node("Div", [p + "centred", const(p + "div", np.array(f.div, np.float32))],
                                       [p + "value"])]
            parts.append(p + "value")
        else:
            inputs.append(helper.make_tensor_value_info(f.name, TensorProto.STRING, ["N", 1]))
            lookup = {v: k + 1 for k, v in enumerate(f.vocab)}
            keys = [*f.vocab, ""]
            nodes.append(helper.make_node("LabelEncoder", [f.name], [p + "index"], domain=ML_DOMAIN,
                                          keys_strings=keys, values_int64s=[*range(1, len(f.vocab) + 1),
                                                                           lookup.get(f.fill, 0)],
                                          default_int64=0))
            if f.indicator:  # onnxruntime compares no strings with Equal: a second lookup marks ""
                nodes.append(helper.make_node("LabelEncoder", [f.name], [p + "missing"], domain=ML_DOMAIN,
                                              keys_strings=[""], values_int64s=[1], default_int64=0))
            if f.encoding == "one_hot":
                slots = const(p + "slots", np.arange(f.slots + 1, dtype=np.int64).reshape(1, -1))
                nodes += [helper.make_node("Equal", [p + "index", slots], [p + "hot"]),
                          helper.make_node("Cast", [p + "hot"], [p + "value"], to=TensorProto.FLOAT)]
            else:
                nodes.append(helper.make_node("Cast", [p + "index"], [p + "value"], to=TensorProto.FLOAT))
            parts.append(p + "value")
        if f.indicator:
            nodes.append(helper.make_node("Cast", [p + "missing"], [p + "indicator"], to=TensorProto.FLOAT))
            parts.append(p + "indicator")
    nodes.append(helper.make_node("Concat", parts, [output], axis=1))
    return inputs, nodes, inits


def graft(model, codec: Codec, input_name: str = "x"):
    """The ONNX model with the codec's graph in front of it: its input `input_name` is computed from the raw
    columns, which become the model's inputs."""
    from onnx import helper

    graph = model.graph
    inner = f"{input_name}__encoded"
    inputs, nodes, inits = onnx_graph(codec, inner)
    for node in graph.node:
        node.input[:] = [inner if name == input_name else name for name in node.input]
    kept = [i for i in graph.input if i.name != input_name]
    del graph.input[:]
    graph.input.extend(inputs + kept)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.initializer.extend(inits)
    if not any(o.domain == ML_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    return model
