"""Predictions in the service, with onnxruntime (never torch): sessions kept in an LRU, inputs checked against a
version's signature with every error listed at once, by the field's path.

Three ways in: the Open Inference Protocol's tensors (`inputs[i]` with name, shape, datatype, data), records of
raw features by name (`records[i].column`), and image files (PNG, JPEG) for a model trained on uploaded images. Each
ends as the graph's feeds, whose preprocessing is inside it: one float32 array `x`, or for a model trained on an
uploaded table one input per raw column (floats with NaN for a missing number, text for a category).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

NUMERIC = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT8": np.int8, "INT16": np.int16,
           "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
           "UINT64": np.uint64}
MAX_ERRORS = 50  # listed in one answer; more are counted


class InputError(Exception):
    """The request does not fit the signature; `errors` are [{"path", "message"}], all of them."""

    def __init__(self, errors: list[dict[str, str]], status: int = 422):
        self.errors, self.status = errors, status
        shown = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        super().__init__(shown + (f"; and {len(errors) - 5} more" if len(errors) > 5 else ""))


class Errors(list):
    def add(self, path: str, message: str) -> None:
        if len(self) < MAX_ERRORS:
            self.append({"path": path, "message": message})

    def check(self, status: int = 422) -> None:
        if self:
            raise InputError(list(self), status)


class Sessions:
    """onnxruntime sessions by version id, the least recently used dropped past `size` (TRAINQ_MODEL_CACHE)."""

    def __init__(self, size: int = 16, threads: int = 0):
        self.size, self.threads = size, threads
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # sessions created: a test and the bench read it

    def get(self, version_id: str, path: Path | Callable[[], Path]):
        """The version's session; on a miss it is loaded from `path` (or from what `path()` gives: a local copy of a
        file in an object store is fetched only then)."""
        with self._lock:
            found = self._cache.get(version_id)
            if found is not None:
                self._cache.move_to_end(version_id)
                return found
        session = self._load(path() if callable(path) else path)
        with self._lock:
            self._cache[version_id] = session
            self._cache.move_to_end(version_id)
            self.loads += 1
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return session

    def _load(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __contains__(self, version_id: str) -> bool:
        return version_id in self._cache


Feeds = dict[str, np.ndarray]


def run(session, feeds: Feeds, names: list[str], runs: int = 1) -> dict[str, np.ndarray]:
    """The graph's outputs for its inputs; a sampling graph run `runs` times and its answers pooled (`pool`)."""
    if runs == 1:
        return dict(zip(names, session.run(names, feeds)))
    return pool([dict(zip(names, session.run(names, feeds))) for _ in range(runs)])


# ---------------------------------------------------------------------------------------------------------------------
# An uploaded table's raw columns
# ---------------------------------------------------------------------------------------------------------------------


def table_model(signature: dict) -> bool:
    """Whether the model takes an uploaded table's raw columns (one input each) rather than one tensor x."""
    return "columns" in signature


def cell(column: dict, value: Any, path: str, errors: Errors) -> Any:
    """One raw value for a column: a float (NaN when missing) for a number, its text ("" when missing) for a
    category; a missing value where the column was required in training (drop_row) is an error."""
    from trainq.data.profile import label

    if value is None:
        if column["required"]:
            errors.add(path, "is required: rows without it were dropped in training (missing: drop_row)")
        return math.nan if column["kind"] == "number" else ""
    if column["kind"] == "number":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            if abs(value) > FLOAT32_MAX:
                errors.add(path, f"{value:.3g} is beyond float32's range (±{FLOAT32_MAX:.3g})")
                return math.nan
            return float(value)
        if isinstance(value, float):
            return math.nan  # NaN stands for a missing value, as it did in the table
        errors.add(path, f"{json_type(value)} where a number goes" + (
            f" ({value[:40]!r}; a number's missing value is null)" if isinstance(value, str) else ""))
        return math.nan
    if isinstance(value, (dict, list)):
        errors.add(path, f"{json_type(value)} where a category's value (text or a number) goes")
        return ""
    return label(value)


def unknown_key(name: str, signature: dict) -> str | None:
    """Why a record's key is not a model input; None for a column the table had that the model does not use (its
    target, an identifier), which may be sent and is ignored."""
    import difflib

    if name in signature.get("ignored_columns", ()):
        return None
    near = difflib.get_close_matches(name, signature["features"], n=1, cutoff=0.7)
    return ("is not a column of this model" + (f"; did you mean {near[0]!r}?" if near else
                                                 f"; its columns are {', '.join(signature['features'][:20])}"))


def table_records(rows: list, signature: dict, errors: Errors) -> Feeds:
    """Records of raw values by column name as the graph's feeds: a missing key or null is a missing value (filled
    as in training), keys in any order, the target and other unused columns of the table ignored."""
    columns = signature["columns"]
    values = {c["name"]: [] for c in columns}
    for i, record in enumerate(rows):
        if not isinstance(record, dict):
            errors.add(f"records[{i}]", "must be an object of column name -> value")
            for c in columns:
                values[c["name"]].append(math.nan if c["kind"] == "number" else "")
            continue
        for c in columns:
            values[c["name"]].append(cell(c, record.get(c["name"]), f"records[{i}].{c['name']}", errors))
        for name in record:
            if name not in values:
                problem = unknown_key(name, signature)
                if problem:
                    errors.add(f"records[{i}].{name}", problem)
    return column_feeds(columns, values)


def column_feeds(columns: list[dict], values: dict[str, list]) -> Feeds:
    """Checked raw values by column as the graph's inputs, each (N, 1)."""
    return {c["name"]: np.asarray(values[c["name"]], dtype=np.float32 if c["kind"] == "number" else object
                                  ).reshape(-1, 1) for c in columns}


def _bytes_elements(blob: bytes, count: int, path: str, errors: Errors) -> list[str] | None:
    """A BYTES tensor in the binary data extension: each element its 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(blob) and len(out) <= count:
        if at + 4 > len(blob):
            break
        size = int.from_bytes(blob[at:at + 4], "little")
        if at + 4 + size > len(blob):
            break
        out.append(blob[at + 4:at + 4 + size].decode("utf-8", errors="replace"))
        at += 4 + size
    if at != len(blob) or len(out) != count:
        errors.add(f"{path}.parameters.binary_data_size", f"not {count} length-prefixed BYTES elements")
        return None
    return out


def table_tensors(inputs: list, signature: dict, max_rows: int, binary: dict[int, bytes] | None,
                  errors: Errors) -> Feeds:
    """The v2 protocol's tensors for a table model: one per raw column, named as the column, shape [N] or [N, 1];
    BYTES (text) for a category, a numeric datatype for a number. A column not sent is missing in every row."""
    columns = {c["name"]: c for c in signature["columns"]}
    got: dict[str, list] = {}
    rows = None
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            errors.add(where, "must be an object with name, shape, datatype and data")
            continue
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        column = columns.get(name)
        if column is None:
            problem = unknown_key(str(name), signature)
            if problem:
                errors.add(f"{where}.name", f"{name!r} {problem}")
            continue
        if not (isinstance(shape, list) and len(shape) in (1, 2) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                        and d >= 0 for d in shape)
                and (len(shape) == 1 or shape[1] == 1)):
            errors.add(f"{where}.shape", "must be [N] or [N, 1]: one value per row")
            continue
        if rows is not None and shape[0] != rows:
            errors.add(f"{where}.shape", f"{shape[0]} rows; the inputs before it have {rows}")
            continue
        rows = shape[0]
        if rows > max_rows:
            errors.add(f"{where}.shape", f"{rows} rows, over the limit of {max_rows} a request "
                                         "(TRAINQ_MAX_PREDICT_ROWS)")
            continue
        wanted = "BYTES" if column["kind"] == "category" else "a numeric datatype (FP32)"
        if (column["kind"] == "category") != (datatype == "BYTES") or (datatype != "BYTES" and datatype not in NUMERIC):
            errors.add(f"{where}.datatype", f"{datatype!r}; column {name!r} takes {wanted}")
            continue
        blob = binary.get(i) if binary else None
        if datatype == "BYTES":
            data = _bytes_elements(blob, rows, where, errors) if blob is not None else tensor.get("data")
            if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
                data = data[0]
        elif blob is not None:
            flat = _binary(blob, datatype, rows, where, errors, missing=True)
            data = None if flat is None else flat.tolist()
        else:
            data = tensor.get("data")
            if isinstance(data, list) and data and isinstance(data[0], list):
                data = [v for row in data for v in (row if isinstance(row, list) else [row])]
        if not isinstance(data, list) or len(data) != rows:
            if data is not None:
                errors.add(f"{where}.data", f"must hold {rows} values, one per row")
            continue
        got[name] = [cell(column, v, f"{where}.data[{k}]", errors) for k, v in enumerate(data)]
    if errors:
        return {}
    if not got:
        errors.add("inputs", "no column of this model was sent; its columns are " + ", ".join(columns))
    for name, c in columns.items():
        if name not in got and c["required"]:
            errors.add("inputs", f"column {name!r} is required: rows without it were dropped in training")
    missing = {"number": math.nan, "category": ""}
    values = {name: got.get(name) or [missing[c["kind"]]] * (rows or 0) for name, c in columns.items()}
    return column_feeds(signature["columns"], values)


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg"}


def image_inputs(blobs: list[tuple[str, bytes]], signature: dict, max_rows: int, max_pixels: int) -> Feeds:
    """Image files (name, bytes) as `x`: each decoded and resized as the model's training images were."""
    from trainq.data.formats import DataError
    from trainq.data.images import Target, decode

    spec = signature.get("image")
    if spec is None:
        raise InputError([{"path": "(body)", "message": "this model was not trained on image files; send JSON "
                                                        "records or inputs"}], 415)
    if len(blobs) > max_rows:
        raise InputError([{"path": "(body)", "message": f"{len(blobs)} images, over the limit of {max_rows} a "
                                                        "request (TRAINQ_MAX_PREDICT_ROWS)"}])
    errors, rows = Errors(), []
    target = Target(tuple(spec["size"]), spec["resize"], spec["channels"])
    for name, blob in blobs:
        try:
            rows.append(decode(blob, target, max_pixels))
        except DataError as exc:
            errors.add(name, str(exc))
    errors.check()
    return {"x": np.stack(rows).astype(np.float32)}


MAX_SAMPLE_RUNS = 20  # a request's samples: at most this many runs of the graph's own draws


def sample_runs(parameters: Any, signature: dict, path: str = "parameters.samples") -> int:
    """How many runs of a sampling graph (each draws the samples it was exported with) give the samples a request
    asks for in `parameters.samples`; 1 when it asks for none. Only a multiple of the graph's own draws can be
    pooled exactly, so other counts are refused, saying which to ask for."""
    asked = parameters.get("samples") if isinstance(parameters, dict) else None
    if asked is None:
        return 1
    uncertainty = signature.get("uncertainty") or {}
    base = uncertainty.get("samples")
    if not base or uncertainty.get("method") == "ensemble":
        what = (f"an ensemble answers with its {base} members" if base else "this model draws no samples")
        raise InputError([{"path": path, "message": f"{what}; leave samples out"}], 400)
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise InputError([{"path": path, "message": f"{asked!r} is not a number of samples: a whole number, a "
                                                    f"multiple of {base}"}], 400)
    if asked % base or asked > base * MAX_SAMPLE_RUNS:
        raise InputError([{"path": path, "message": f"{asked}: this model draws {base} samples per run and pools "
                                                    f"whole runs; ask for a multiple of {base} up to "
                                                    f"{base * MAX_SAMPLE_RUNS}"}], 422)
    return asked // base


def pool(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pool the answers of runs that each averaged T samples of one posterior into the answer over all of them:
    probabilities averaged, entropy of the average, mutual information = that entropy minus the mean per-sample
    entropy (each run's entropy minus its mutual information); a regression's mean averaged, its epistemic variance
    by the law of total variance, its noise variance (std² - epistemic_std²) averaged."""
    k = len(parts)
    out: dict[str, np.ndarray] = {}
    if "probabilities" in parts[0]:
        probs = sum(p["probabilities"].astype(np.float64) for p in parts) / k
        total = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
        expected = sum(p["entropy"].astype(np.float64) - p["mutual_information"] for p in parts) / k
        out = {"label": probs.argmax(1).astype(parts[0]["label"].dtype),
               "probabilities": probs.astype(np.float32), "entropy": total.astype(np.float32),
               "mutual_information": np.clip(total - expected, 0, None).astype(np.float32)}
    else:
        values = np.stack([p["value"].astype(np.float64) for p in parts])
        epistemic = np.stack([p["epistemic_std"].astype(np.float64) ** 2 for p in parts])
        noise = np.stack([p["std"].astype(np.float64) ** 2 for p in parts]) - epistemic
        mean = values.mean(0)
        spread = epistemic.mean(0) + values.var(0)
        out = {"value": mean.astype(np.float32), "std": np.sqrt(spread + noise.mean(0).clip(0)).astype(np.float32),
               "epistemic_std": np.sqrt(spread).astype(np.float32)}
    return {name: out[name] for name in parts[0]}


def _nested_shape(data: Any) -> list[int] | None:
    """The shape of a nested list of numbers (None if ragged)."""
    shape = []
    node = data
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    return shape


def _flatten(data: Any, path: str, errors: Errors) -> list | None:
    """A flat list of the values in `data` (flat or nested lists), or None with the reason in `errors`."""
    if not isinstance(data, list):
        errors.add(path, "must be a list of numbers (flat, or nested as the shape)")
        return None
    try:
        array = np.asarray(data, dtype=object)
    except ValueError:
        errors.add(path, "is ragged: every row must have the same length")
        return None
    if array.dtype != object or any(isinstance(v, list) for v in array.ravel()):
        errors.add(path, "is ragged: every row must have the same length")
        return None
    return list(array.ravel())


def _fast(data: list, integer: bool) -> np.ndarray | None:
    """The common case at numpy's speed: a flat (or two-level) list of finite JSON numbers as float64; None for
    anything else, which the slow path then explains value by value."""
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        return None
    if array.ndim == 1:
        kinds = set(map(type, data))
    elif array.ndim == 2:
        kinds = set(map(type, itertools.chain.from_iterable(data)))
    else:
        return None
    if not kinds <= {int, float} or not np.isfinite(array).all():  # "1" and True convert, and must not
        return None
    if integer and not np.array_equal(array, np.round(array)):
        return None
    return array.ravel()


def values_of(data: Any, path: str, errors: Errors, integer: bool = False) -> np.ndarray | None:
    """`data` (flat or nested lists of numbers) as a flat float64 array, or None with every bad value in `errors`."""
    if isinstance(data, list):
        fast = _fast(data, integer)
        if fast is not None:
            return fast
    flat = _flatten(data, path, errors)
    return None if flat is None else numbers(flat, path, errors, integer)


def _binary(blob: bytes, datatype: str, count: int, path: str, errors: Errors,
            missing: bool = False) -> np.ndarray | None:
    """A tensor sent in the binary data extension: little-endian values, as many as the shape says (`missing`: NaN
    stands for a missing value, as in a table's number column)."""
    dtype = np.dtype(NUMERIC[datatype]).newbyteorder("<")
    if len(blob) != count * dtype.itemsize:
        errors.add(f"{path}.parameters.binary_data_size", f"{len(blob)} bytes; shape and {datatype} need "
                                                         f"{count * dtype.itemsize}")
        return None
    array = np.frombuffer(blob, dtype=dtype).astype(np.float64)
    if not missing and not np.isfinite(array).all():
        errors.add(f"{path}.data", "NaN and Infinity are not accepted")
        return None
    return array


def finite(v: Any, integer: bool = False) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (not integer or float(v).is_integer()))


def not_a_number(v: Any, integer: bool = False) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN and Infinity are not accepted"
    if integer and isinstance(v, float):
        return f"{v!r} is not a whole number, and the datatype is an integer type"
    return f"{json_type(v)} where a{'n integer' if integer else ' number'} goes"


def numbers(values: list, path: str, errors: Errors, integer: bool = False) -> np.ndarray | None:
    """The values as an array if each is a finite number; else None, each bad one in `errors` by index."""
    bad = [i for i, v in enumerate(values) if not finite(v, integer)]
    for i in bad:
        errors.add(f"{path}[{i}]", not_a_number(values[i], integer))
    return None if bad else np.asarray(values, dtype=np.float64)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float32(values: np.ndarray, path: str, errors: Errors, names=None) -> np.ndarray | None:
    """The values as float32, the model's dtype; one past float32's range (about 3.4e38) would become infinity, so
    it is an error naming its place (`names(i)` gives the path of flat index i, else path[i])."""
    too_big = np.flatnonzero(np.abs(values.reshape(-1)) > FLOAT32_MAX)
    for i in too_big:
        errors.add(names(int(i)) if names else f"{path}[{i}]", f"{values.reshape(-1)[i]:.3g} is beyond float32's range "
                                                                f"(±{FLOAT32_MAX:.3g})")
    return None if len(too_big) else values.astype(np.float32)


def json_type(v: Any) -> str:
    return {bool: "a boolean", str: "a string", type(None): "null", dict: "an object", list: "a list"}.get(
        type(v), type(v).__name__)


def v2_inputs(body: Any, signature: dict, max_rows: int, binary: dict[int, bytes] | None = None
              ) -> tuple[Feeds, list[str] | None, dict]:
    """An Open Inference Protocol request as the graph's feeds, the outputs asked for (None: all), and its id and
    parameters.
    `binary`: input index -> its bytes, for tensors sent in the binary data extension."""
    errors = Errors()
    if not isinstance(body, dict):
        raise InputError([{"path": "(body)", "message": "must be a JSON object with 'inputs'"}], 400)
    declared = signature["inputs"][0]
    want = declared["shape"][1:]
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        what = (f"one tensor per column ({', '.join(i['name'] for i in signature['inputs'][:8])}"
                f"{', ...' if len(signature['inputs']) > 8 else ''})" if table_model(signature) else
                f"one tensor named {declared['name']!r} of shape {declared['shape']}")
        raise InputError([{"path": "inputs", "message": f"must be a list holding {what}"}], 400)
    x = None
    if table_model(signature):
        feeds = table_tensors(inputs, signature, max_rows, binary, errors)
        inputs = []
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            errors.add(where, "must be an object with name, shape, datatype and data")
            continue
        name = tensor.get("name")
        if name != declared["name"]:
            errors.add(f"{where}.name", f"{name!r} is not an input of this model; its one input is "
                                        f"{declared['name']!r}")
            continue
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                                               and d >= 0 for d in shape):
            errors.add(f"{where}.shape", f"must be a list of sizes, e.g. [N, {', '.join(map(str, want))}]")
            shape = None
        elif shape[1:] != want:
            errors.add(f"{where}.shape", f"{shape} does not fit the model's input {declared['shape']} (-1 is any "
                                         f"number of rows): each row has shape {want}")
            shape = None
        elif shape[0] > max_rows:
            errors.add(f"{where}.shape", f"{shape[0]} rows, over the limit of {max_rows} a request "
                                         "(TRAINQ_MAX_PREDICT_ROWS); send them in several requests, or score a "
                                         "dataset with POST /api/v1/models/{ref}/batch")
            shape = None
        if not isinstance(datatype, str) or datatype not in NUMERIC:
            errors.add(f"{where}.datatype", f"{datatype!r} is not a numeric datatype; the model takes "
                                            f"{declared['datatype']} (FP64 and integer types are converted)")
            datatype = None
        integer = datatype is not None and datatype.startswith(("INT", "UINT"))
        blob = binary.get(i) if binary else None
        if blob is not None:
            values = (_binary(blob, datatype, int(np.prod(shape)), where, errors)
                      if shape is not None and datatype is not None else None)
        else:
            values = values_of(tensor.get("data"), f"{where}.data", errors, integer)
        if values is None or shape is None or datatype is None:
            continue
        if len(values) != int(np.prod(shape)):
            errors.add(f"{where}.data", f"holds {len(values)} values; shape {shape} needs {int(np.prod(shape))}")
            continue
        values = as_float32(values, f"{where}.data", errors)
        if x is None and values is not None:
            x = values.reshape(shape)
    wanted = None
    if "outputs" in body:
        outputs = body["outputs"]
        names = [o["name"] for o in signature["outputs"]]
        if not isinstance(outputs, list):
            errors.add("outputs", "must be a list of {\"name\": ...}")
        else:
            wanted = []
            for i, o in enumerate(outputs):
                name = o.get("name") if isinstance(o, dict) else None
                if name not in names:
                    errors.add(f"outputs[{i}].name", f"{name!r} is not an output; this model gives "
                                                     f"{', '.join(names)}")
                else:
                    wanted.append(name)
    if "id" in body and not isinstance(body["id"], str):
        errors.add("id", "must be a string")
    if "parameters" in body and not isinstance(body["parameters"], dict):
        errors.add("parameters", "must be an object")
    errors.check()
    if not table_model(signature):
        feeds = {"x": x}
    return feeds, wanted, {"id": body.get("id"), "parameters": body.get("parameters") or {}}


def record_inputs(body: Any, signature: dict, max_rows: int) -> Feeds:
    """`{"records": [{"column": value}]}` or `{"inputs": [[...], ...]}` as the graph's feeds, every mistake
    listed."""
    errors = Errors()
    if not isinstance(body, dict) or ("records" in body) == ("inputs" in body):
        raise InputError([{"path": "(body)", "message": "send either 'records' (a list of objects, raw features by "
                                                        "name) or 'inputs' (a list of rows)"}], 400)
    if "parameters" in body and not isinstance(body["parameters"], dict):
        raise InputError([{"path": "parameters", "message": "must be an object, e.g. {\"samples\": 100}"}], 400)
    declared = signature["inputs"][0]["shape"][1:]
    features = signature.get("features") or []
    key = "records" if "records" in body else "inputs"
    rows = body[key]
    if not isinstance(rows, list) or not rows:
        raise InputError([{"path": key, "message": "must be a non-empty list"}], 400)
    if len(rows) > max_rows:
        raise InputError([{"path": key, "message": f"{len(rows)} rows, over the limit of {max_rows} a request "
                                                   "(TRAINQ_MAX_PREDICT_ROWS); send them in several requests"}])
    if table_model(signature):
        if key != "records":
            raise InputError([{"path": "inputs", "message": "this model takes its table's raw columns by name: send "
                                                            "'records', e.g. [{" + ", ".join(
                                                                f'"{c}": ...' for c in features[:3]) + "}]"}], 400)
        feeds = table_records(rows, signature, errors)
        errors.check()
        return feeds
    if key == "records":
        if not features:
            raise InputError([{"path": "records", "message": "this model takes images, not named features: send "
                                                             f"'inputs' as rows of shape {declared}"}], 400)
        known = set(features)
        x = np.zeros((len(rows), len(features)), dtype=np.float64)
        for i, record in enumerate(rows):
            if not isinstance(record, dict):
                errors.add(f"records[{i}]", "must be an object of feature name -> number")
                continue
            for j, name in enumerate(features):
                if name not in record:
                    errors.add(f"records[{i}].{name}", "is missing")
                elif finite(record[name]):
                    x[i, j] = record[name]
                else:
                    errors.add(f"records[{i}].{name}", not_a_number(record[name]))
            for name in record:
                if name not in known:
                    errors.add(f"records[{i}].{name}", "is not a feature of this model; its features are "
                                                       + ", ".join(features))
        x = as_float32(x, "records", errors, lambda k: f"records[{k // len(features)}].{features[k % len(features)]}")
        errors.check()
        return {"x": x}
    shape = _nested_shape(rows)
    if shape is None or shape[1:] != declared:
        raise InputError([{"path": "inputs", "message": f"rows must each have shape {declared}"
                                                        + (f" ({len(features)} features: {', '.join(features[:8])}"
                                                           f"{', ...' if len(features) > 8 else ''})"
                                                           if features else "")}])
    values = values_of(rows, "inputs", errors)
    errors.check()
    width = int(np.prod(declared))
    values = as_float32(values, "inputs", errors, lambda k: f"inputs[{k // width}][{k % width}]")
    errors.check()
    return {"x": values.reshape([len(rows), *declared])}


def v2_outputs(results: dict[str, np.ndarray], signature: dict, binary: set[str] = frozenset()
               ) -> tuple[list[dict], list[bytes]]:
    """The answer's output tensors (data as flat numpy arrays, for orjson), and the bytes of those asked for in the
    binary data extension, in order."""
    types = {o["name"]: o["datatype"] for o in signature["outputs"]}
    tensors, blobs = [], []
    for name, value in results.items():
        tensor = {"name": name, "shape": list(value.shape), "datatype": types[name]}
        flat = np.ascontiguousarray(value.reshape(-1), dtype=NUMERIC[types[name]])
        if name in binary:
            blob = flat.astype(flat.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = flat
        tensors.append(tensor)
    return tensors, blobs


def friendly(results: dict[str, np.ndarray], signature: dict) -> list[dict]:
    """Per row: the label and probabilities by class name, or the value (and a mixture's variance and components);
    a Bayesian model's entropy and mutual information, or its predictive and epistemic standard deviation."""
    names = signature.get("class_names")
    rows = []
    count = len(next(iter(results.values())))
    for i in range(count):
        row: dict[str, Any] = {}
        if "label" in results:
            label = int(results["label"][i])
            row["label"] = names[label] if names else label
            row["class_index"] = label
            scores = results.get("probabilities", results.get("scores"))
            if scores is not None:
                key = "probabilities" if "probabilities" in results else "scores"
                row[key] = {(names[j] if names else str(j)): float(p) for j, p in enumerate(scores[i])}
            for key in ("entropy", "mutual_information"):  # a Bayesian model's: total and epistemic uncertainty
                if key in results:
                    row[key] = float(results[key][i])
        else:
            row["value"] = float(results["value"][i, 0])
            for key in ("std", "epistemic_std"):
                if key in results:
                    row[key] = float(results[key][i, 0])
            if "variance" in results:
                row["variance"] = float(results["variance"][i, 0])
                row["mixture"] = {k: results[k][i].tolist() for k in ("pi", "mu", "sigma")}
        rows.append(row)
    return rows
