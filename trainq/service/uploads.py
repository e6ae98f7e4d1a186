"""Uploaded datasets: CSV with a target column, or NPZ with arrays x and y, parsed without pickle.

Whatever is uploaded is turned into two numeric arrays and stored as an .npz that np.load reads with
allow_pickle=False. A file that does not parse gets a 4xx naming the row and column at fault, and nothing
is stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainq.service.objects import dataset_key

MAX_CLASSES = 1000


class UploadError(ValueError):
    """The file is not a dataset trainq can use; the message says where and why."""


@dataclass
class Parsed:
    x: np.ndarray  # float32, (N, F) or (N, C, H, W)
    y: np.ndarray  # int64 class indexes, or float32 targets
    classes: int | None
    class_names: list[str] | None
    columns: list[str] | None
    source: str


def parse(raw: bytes, *, target: str | None, task: str | None, max_rows: int) -> Parsed:
    """Parse an upload by its content: a zip archive is NPZ, anything else is CSV."""
    parsed = _npz(raw, task) if raw[:4] == b"PK\x03\x04" else _csv(raw, target, task)
    if len(parsed.x) > max_rows:
        raise UploadError(f"{len(parsed.x)} rows, more than the limit of {max_rows}")
    return parsed


def _enough(rows: int) -> None:
    if rows < 8:
        raise UploadError(f"{rows} rows: at least 8 are needed to split train, validation and test")


def _classes(labels: list[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(map(str, labels)), key=lambda v: (len(v), v) if v.lstrip("-").isdigit() else (math.inf, v))
    if len(names) > MAX_CLASSES:
        raise UploadError(f"{len(names)} classes, more than {MAX_CLASSES}; upload it as regression (task=regression)")
    if len(names) < 2:
        raise UploadError("classification needs at least two classes in the target")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in labels], dtype=np.int64), names


def _csv(raw: bytes, target: str | None, task: str | None) -> Parsed:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError(f"not UTF-8 text (byte {exc.start}); upload CSV in UTF-8 or an NPZ file") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise UploadError("a CSV needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise UploadError("the header repeats a column name")
    column = target if target is not None else header[-1]
    if column not in header:
        raise UploadError(f"no column named {column!r} for the target; the columns are {header[:20]}")
    t = header.index(column)
    features, labels = [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UploadError(f"row {number}: {len(row)} fields, the header has {len(header)}")
        values = []
        for j, cell in enumerate(row):
            if j == t:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise UploadError(f"row {number}, column {header[j]!r}: {cell[:40]!r} is not a number") from None
            if not math.isfinite(value):
                raise UploadError(f"row {number}, column {header[j]!r}: {cell[:40]!r} is not finite")
            values.append(value)
        features.append(values)
        labels.append(row[t].strip())
    x = np.asarray(features, dtype=np.float32)
    _enough(len(x))
    if task is None:
        task = "classification" if all(v.lstrip("-").isdigit() or not _is_number(v) for v in labels) \
            and len(set(labels)) <= 50 else "regression"
    columns = [h for j, h in enumerate(header) if j != t]
    if task == "classification":
        y, names = _classes(labels)
        return Parsed(x, y, len(names), names, columns, "csv")
    try:
        y = np.asarray([float(v) for v in labels], dtype=np.float32)
    except ValueError:
        raise UploadError(f"column {column!r} must hold numbers for regression") from None
    if not np.isfinite(y).all():
        raise UploadError(f"column {column!r} holds a value that is not finite")
    return Parsed(x, y, None, None, columns, "csv")


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _npz(raw: bytes, task: str | None) -> Parsed:
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
        names = set(archive.files)
        if not {"x", "y"} <= names:
            raise UploadError(f"an NPZ needs arrays named x and y; it has {sorted(names)[:10]}")
        x, y = archive["x"], archive["y"]
    except UploadError:
        raise
    except ValueError as exc:  # raised for object arrays, which only a pickle could hold
        if "pickle" in str(exc).lower():
            raise UploadError("the file holds Python objects (a pickle); only numeric arrays are accepted") from None
        raise UploadError(f"not a readable NPZ file: {str(exc)[:200]}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise UploadError(f"not a readable NPZ file: {str(exc)[:200]}") from None
    _enough(len(x))
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise UploadError("x and y must be numeric arrays")
    if x.ndim not in (2, 4):
        raise UploadError(f"x must be N x features or N x C x H x W, got {x.ndim} dimensions")
    if y.ndim != 1 or len(y) != len(x):
        raise UploadError(f"y must be one value per row of x: x has {len(x)} rows, y has shape {list(y.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UploadError("x holds a value that is not finite")
    if task is None:
        task = "classification" if y.dtype.kind in "iub" else "regression"
    if task == "classification":
        if y.dtype.kind == "f" and not np.equal(np.mod(y, 1), 0).all():
            raise UploadError("classification labels in y must be whole numbers")
        labels, names = _classes(y.astype(np.int64))
        return Parsed(x, labels, len(names), names, None, "npz")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise UploadError("y holds a value that is not finite")
    return Parsed(x, y, None, None, None, "npz")


def store(parsed: Parsed, objects, key: str) -> tuple[int, str]:
    """Write the arrays as an .npz readable without pickle to the object store (atomically); return (size, sha256)."""
    buffer = io.BytesIO()
    np.savez(buffer, x=parsed.x, y=parsed.y)
    blob = buffer.getvalue()
    objects.put(key, blob)
    return len(blob), hashlib.sha256(blob).hexdigest()


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def dataset_path(objects, dataset_id: str) -> Path:
    """A local file holding the uploaded dataset (FileNotFoundError if it is gone)."""
    return objects.local(dataset_key(dataset_id))
