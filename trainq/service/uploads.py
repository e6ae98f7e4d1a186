"""An uploaded file becomes a dataset version: its format read from its first bytes, its content checked and profiled
in a streamed pass (bounded memory), then stored as it came (a table, an archive of images) or, for NPZ, as numeric
arrays x and y that np.load reads without pickle. Nothing is stored for a file that does not parse; the error names
the row, column or file at fault.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from trainq.data.archive import Limits
from trainq.data.formats import TABLES, DataError, batches, prefetched, sniff_file, zip_kind
from trainq.data.images import profile_images
from trainq.data.profile import MAX_CLASSES, class_order, profile_table

UploadError = DataError  # the name the blueprints catch
RECEIVE_BYTES = 8 << 20


@dataclass
class Examined:
    """What an upload holds, ready to become a dataset version's row and stored file."""

    kind: str  # arrays | table | images
    source: str  # the format as uploaded
    rows: int
    shape: list[int]
    classes: int | None
    class_names: list[str] | None
    columns: list[str] | None = None
    target: str | None = None
    profile: dict[str, Any] | None = None
    stored: Path | None = None  # the file to store (the upload itself, or the re-written NPZ)


@dataclass(frozen=True)
class Received:
    path: Path
    size: int
    sha256: str


def receive(stream: BinaryIO, folder: Path) -> Received:
    """Copy a stream into a temporary file under `folder`, hashing it on the way: memory stays bounded."""
    return receive_all([stream], folder)


def receive_all(streams, folder: Path) -> Received:
    """receive() of several streams one after the other (an upload's parts, in order), as one file. A stream that
    breaks off (a client gone midway) leaves no file behind."""
    from concurrent.futures import ThreadPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    # 8 MiB at a time, each hashed on a thread (hashlib frees the GIL) while it is written and the next one read:
    # a 1 GB upload took 2.7 s to disk in 1 MiB steps one after the other, 1.1 s this way
    with tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", delete=False) as out, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainq-sha256") as hasher:
        hashed = None
        try:
            for stream in streams:
                while chunk := stream.read(RECEIVE_BYTES):
                    if hashed is not None:
                        hashed.result()
                    hashed = hasher.submit(digest.update, chunk)
                    out.write(chunk)
                    size += len(chunk)
            if hashed is not None:
                hashed.result()
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    return Received(Path(out.name), size, digest.hexdigest())


def examine(path: Path, *, target: str | None, task: str | None, max_rows: int, limits: Limits,
            max_pixels: int, budget_bytes: int | None = None) -> Examined:
    """Read an uploaded file by its content and profile it; DataError says what is wrong and where."""
    fmt = sniff_file(path)
    if fmt == "zip" and zip_kind(path) == "npz":
        return _npz(path, task, max_rows)
    if fmt in ("zip", "tar"):
        if task == "regression":
            raise DataError("an archive of images is classified by its folders; leave task out")
        profile = profile_images(path, fmt, limits, target, max_pixels)
        if max_rows and profile["rows"] > max_rows:
            raise DataError(f"{profile['rows']} images, more than the limit of {max_rows} (TRAINQ_MAX_DATASET_ROWS)")
        names = list(profile["target"]["classes"])
        return Examined("images", fmt, profile["rows"], [], len(names), names, profile=profile, stored=path)
    assert fmt in TABLES
    profile = profile_table(prefetched(batches(path, fmt, budget_bytes)), fmt, target, task, max_rows or None)
    goal = profile["target"]
    names = list(goal["classes"]) if goal["task"] == "classification" else None
    columns = [c["name"] for c in profile["columns"]]
    return Examined("table", fmt, profile["rows"], [len(columns) - 1], len(names) if names else None, names,
                    columns=columns, target=goal["name"], profile=profile, stored=path)


def _enough(rows: int) -> None:
    if rows < 8:
        raise DataError(f"{rows} rows: at least 8 are needed to split train, validation and test")


def _classes(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names = class_order(map(str, labels.tolist()))
    if len(names) > MAX_CLASSES:
        raise DataError(f"{len(names)} classes, more than {MAX_CLASSES}; upload it as regression (task=regression)")
    if len(names) < 2:
        raise DataError("classification needs at least two classes in the target")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in labels.tolist()], dtype=np.int64), names


def _npz(path: Path, task: str | None, max_rows: int) -> Examined:
    """Arrays x (N x features, N x T x F sequences, or N x C x H x W images) and y, checked and re-written with
    only those two arrays as float32 (labels as int64)."""
    try:
        archive = np.load(path, allow_pickle=False)
        names = set(archive.files)
        if not {"x", "y"} <= names:
            raise DataError(f"an NPZ needs arrays named x and y; it has {sorted(names)[:10]}")
        x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except ValueError as exc:  # raised for object arrays, which only a pickle could hold
        if "pickle" in str(exc).lower():
            raise DataError("the file holds Python objects (a pickle); only numeric arrays are accepted") from None
        raise DataError(f"not a readable NPZ file: {str(exc)[:200]}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"not a readable NPZ file: {str(exc)[:200]}") from None
    _enough(len(x))
    if max_rows and len(x) > max_rows:
        raise DataError(f"{len(x)} rows, more than the limit of {max_rows} (TRAINQ_MAX_DATASET_ROWS)")
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise DataError("x and y must be numeric arrays")
    if x.ndim not in (2, 3, 4):
        raise DataError(f"x must be N x features, N x steps x features (sequences) or N x C x H x W (images), got "
                        f"{x.ndim} dimensions")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"y must be one value per row of x: x has {len(x)} rows, y has shape {list(y.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError("x holds a value that is not finite")
    if task is None:
        task = "classification" if y.dtype.kind in "iub" else "regression"
    names: list[str] | None = None
    if task == "classification":
        if y.dtype.kind == "f" and not np.equal(np.mod(y, 1), 0).all():
            raise DataError("classification labels in y must be whole numbers")
        y, names = _classes(y.astype(np.int64))
    else:
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            raise DataError("y holds a value that is not finite")
    out = path.with_name(path.name + ".npz")
    with open(out, "wb") as f:
        np.savez(f, x=x, y=y)
    return Examined("arrays", "npz", len(x), list(x.shape[1:]), len(names) if names else None, names, stored=out)


def discard(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            Path(path).unlink(missing_ok=True)
