"""Splits streamed from shards on disk (trainq.data.shards), for tables larger than memory: one shard in memory at a
time, batches in an order that is a pure function of (seed, epoch), so a resume jumps to its batch by arithmetic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from trainq.data.shards import Manifest, epoch_order, shard_order


@dataclass
class Streamed:
    """What a worker hands the engine for a streamed table: its shards, and the raw file they were made from (the
    export checks the graph on raw validation rows)."""

    manifest: Manifest
    raw: Path
    fmt: str
    split_seed: int


class ShardedSplit:
    """A split of a streamed table: its length and labels known, its features read a shard at a time."""

    shift = scale = None  # features are float32 already encoded: nothing to decode per batch

    def __init__(self, manifest: Manifest, name: str, y_mean: float = 0.0, y_std: float = 1.0):
        self.manifest, self.name = manifest, name
        self.y_mean, self.y_std = y_mean, y_std
        self.regression = manifest.classes is None
        self._y: torch.Tensor | None = None
        # no rows: the features' shape and dtype alone, for what builds the model (rows come from the shards)
        self.x = torch.empty((0, manifest.width), dtype=torch.float32)

    def __len__(self) -> int:
        return self.manifest.rows(self.name)

    def to(self, device) -> "ShardedSplit":
        return self  # batches go to the device as they are read

    pinned = to

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _targets(self, y: np.ndarray) -> torch.Tensor:
        if self.regression:
            return torch.from_numpy(((y - self.y_mean) / self.y_std).reshape(-1, 1).astype(np.float32))
        return torch.from_numpy(y.astype(np.int64))

    @property
    def y(self) -> torch.Tensor:
        """Every label of the split (small beside the features), for its metrics."""
        if self._y is None:
            parts = [self._labels(i) for i in range(len(self.manifest.shards[self.name]))]
            self._y = self._targets(np.concatenate(parts)) if parts else torch.empty(0)
        return self._y

    def _labels(self, i: int) -> np.ndarray:
        with np.load(self.manifest.folder / self.manifest.shards[self.name][i].file, allow_pickle=False) as archive:
            return archive["y"]

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """The split's features in order, `size` rows at a time, one shard in memory."""
        for i in range(len(self.manifest.shards[self.name])):
            x, _ = self.manifest.read(self.name, i)
            for start in range(0, len(x), size):
                yield torch.from_numpy(x[start:start + size])

    def features(self) -> torch.Tensor:
        return torch.cat(list(self.chunks(1 << 16)))

    def batches(self, seed: int, epoch: int, size: int, start_batch: int = 0
                ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(batch number, x, y) of an epoch from batch `start_batch` on: the shards in the epoch's order, each one's
        rows in its own order, cut into batches across shard boundaries. Resuming at batch k opens the shard that
        holds row k * size and starts at its offset there: no earlier batch is read again."""
        shards = self.manifest.shards[self.name]
        order = epoch_order(self.manifest, seed, epoch)
        skip = start_batch * size  # rows of this epoch already trained on
        batch, pending_x, pending_y = start_batch, [], []
        held = 0
        for i in order:
            rows = shards[i].rows
            if skip >= rows:
                skip -= rows
                continue
            x, y = self.manifest.read(self.name, int(i))
            perm = shard_order(rows, seed, epoch, int(i))[skip:]
            skip = 0
            at = 0
            while at < len(perm):
                take = perm[at:at + size - held]
                pending_x.append(x[take])
                pending_y.append(y[take])
                held += len(take)
                at += len(take)
                if held == size:
                    yield batch, torch.from_numpy(np.concatenate(pending_x)), self._targets(np.concatenate(pending_y))
                    batch, pending_x, pending_y, held = batch + 1, [], [], 0
        if held:
            yield batch, torch.from_numpy(np.concatenate(pending_x)), self._targets(np.concatenate(pending_y))


def regression_scale(manifest: Manifest) -> tuple[float, float]:
    """The training targets' mean and standard deviation, from the train shards' labels alone."""
    split = ShardedSplit(manifest, "train")
    y = np.concatenate([split._labels(i) for i in range(len(manifest.shards["train"]))]).astype(np.float64)
    return float(y.mean()), float(y.std() or 1.0)
