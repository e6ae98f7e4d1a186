"""A table larger than memory, made into shards a run streams: rows assigned to train, validation and test by a hash
of their index (or by a split column), the codec fitted on the training rows in one streamed pass, then every kept row
encoded once into fixed-size shards of float32 features and targets on local disk.

An epoch visits the training shards in an order drawn from (seed, epoch), and each shard's rows in an order drawn from
(seed, epoch, shard): the batches of an epoch are a pure function of those numbers, so a run interrupted at batch k
resumes there by arithmetic (which shard, which row), without replaying anything (MosaicML Streaming's idea).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from trainq.data.codec import Codec, Fitter, encode, numbers, required_rows, strings
from trainq.data.formats import RESTART, DataError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "testing": 2}
MANIFEST = "manifest.json"


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 of unsigned 64-bit integers: neighbouring indexes land far apart."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_split(index: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each global row index, from a hash of (seed, index): the same row
    always lands in the same split, whatever else is read with it."""
    with np.errstate(over="ignore"):
        u = _mix(index.astype(np.uint64) ^ _mix(np.array([seed], dtype=np.uint64))) / np.float64(2 ** 64)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0)).astype(np.int8)


@dataclass
class Shard:
    file: str  # the .npz holding x (float32) and y
    rows: int


@dataclass
class Manifest:
    """Where a streamed table's shards are, and what they hold."""

    folder: Path
    codec: dict
    width: int
    classes: list[str] | None  # None: regression (y float32)
    shards: dict[str, list[Shard]] = field(default_factory=dict)

    def rows(self, split: str) -> int:
        return sum(s.rows for s in self.shards.get(split, []))

    def save(self) -> None:
        body = {"codec": self.codec, "width": self.width, "classes": self.classes,
                "shards": {k: [vars(s) for s in v] for k, v in self.shards.items()}}
        tmp = self.folder / (MANIFEST + ".part")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> "Manifest | None":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            return None
        body = json.loads(path.read_text())
        return cls(Path(folder), body["codec"], body["width"], body["classes"],
                   {k: [Shard(**s) for s in v] for k, v in body["shards"].items()})

    def read(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.folder / self.shards[split][i].file, allow_pickle=False) as archive:
            return archive["x"], archive["y"]


def epoch_order(manifest: Manifest, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch visits the training shards in."""
    return np.random.default_rng([seed, epoch]).permutation(len(manifest.shards["train"]))


def shard_order(rows: int, seed: int, epoch: int, shard: int) -> np.ndarray:
    """The order an epoch visits one training shard's rows in."""
    return np.random.default_rng([seed, epoch, shard + 1]).permutation(rows)


def splits_of(batch, start: int, seed: int, val_fraction: float, test_fraction: float,
               split_column: str | None) -> np.ndarray:
    if split_column is None:
        return hash_split(np.arange(start, start + batch.num_rows), seed, val_fraction, test_fraction)
    names = strings(batch.column(split_column))
    codes = np.array([SPLIT_NAMES.get(v.strip().lower(), -1) for v in names], dtype=np.int8)
    if (codes < 0).any():
        bad = names[np.flatnonzero(codes < 0)[0]]
        raise DataError(f"row {start + int(np.flatnonzero(codes < 0)[0]) + 1}, column {split_column!r}: {bad!r} is not "
                        "a split; write train, val (or validation) or test")
    return codes


def _passes(batches: Callable[[], Iterator]) -> Iterator[tuple[int, Any]]:
    """(first row's index, batch) of a table read front to back; a RESTART from the reader starts over."""
    while True:
        start, restarted = 0, False
        for batch in batches():
            if batch is RESTART:
                restarted = True
                break
            yield start, batch
            start += batch.num_rows
        if not restarted:
            return
        yield -1, RESTART


def build(batches: Callable[[], Iterator], planned: Codec, target: str, classes: list[str] | None, folder: Path, *,
          seed: int, val_fraction: float, test_fraction: float, split_column: str | None = None,
          shard_rows: int = 65_536, say: Callable[[str], None] = lambda m: None) -> Manifest:
    """Shards of a table read by `batches()` (called once per pass): pass one fits the codec on the training rows,
    pass two encodes every kept row (a target, and a value in each drop_row column) into shards of `shard_rows`."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    fitter = Fitter(planned)
    for start, batch in _passes(batches):
        if batch is RESTART:
            fitter = Fitter(planned)
            continue
        table = pa.Table.from_batches([batch])
        keep = kept_rows(table, planned, target, classes)
        split = splits_of(batch, start, seed, val_fraction, test_fraction, split_column)
        fitter.add(table, np.flatnonzero(keep & (split == 0)))
    codec = fitter.fitted()
    say("fitted the preprocessing on the training rows; writing shards")
    manifest = Manifest(folder, codec.as_dict(), codec.width, classes, {name: [] for name in SPLITS})
    buffers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in SPLITS}

    def flush(name: str, final: bool) -> None:
        while buffers[name] and (final or sum(len(x) for x, _ in buffers[name]) >= shard_rows):
            x = np.concatenate([b[0] for b in buffers[name]])
            y = np.concatenate([b[1] for b in buffers[name]])
            head, rest = (x[:shard_rows], y[:shard_rows]), (x[shard_rows:], y[shard_rows:])
            file = f"{name}-{len(manifest.shards[name]):05d}.npz"
            with open(folder / file, "wb") as f:
                np.savez(f, x=head[0], y=head[1])
            manifest.shards[name].append(Shard(file, len(head[0])))
            buffers[name] = [rest] if len(rest[0]) else []

    index = {name: i for i, name in enumerate(classes or [])}
    for start, batch in _passes(batches):
        if batch is RESTART:
            raise DataError("the table's column types changed while it was read again; upload it as Parquet")
        table = pa.Table.from_batches([batch])
        keep = kept_rows(table, planned, target, classes)
        split = splits_of(batch, start, seed, val_fraction, test_fraction, split_column)
        rows = table.filter(pa.array(keep))
        x = encode(codec, rows)
        if classes is not None:
            y = np.array([index[v] for v in strings(rows.column(target))], dtype=np.int64)
        else:
            y = numbers(rows.column(target)).astype(np.float32)
        for code, name in enumerate(SPLITS):
            mask = split[keep] == code
            if mask.any():
                buffers[name].append((x[mask], y[mask]))
                flush(name, False)
    for name in SPLITS:
        flush(name, True)
    if not manifest.rows("train"):
        raise DataError("no training rows: val_fraction and test_fraction (or the split column) leave none")
    manifest.save()
    return manifest


def kept_rows(table, planned: Codec, target: str, classes: list[str] | None) -> np.ndarray:
    """Rows with a target (one of the classes) and a value in every drop_row column."""
    keep = required_rows(planned, table)
    column = table.column(target)
    if classes is not None:
        labels = strings(column)
        known = set(classes)
        keep &= np.fromiter((v in known for v in labels), dtype=bool, count=len(labels))
    else:
        keep &= ~np.isnan(numbers(column))
    return keep
