"""Built-in datasets as in-memory tensors: logic gates, generators and scikit-learn's bundled sets.

Nothing is downloaded. A dataset is split by its seed into train, validation and test; preprocessing
statistics come from the training split only and are applied to all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainq.models.spec import LOGIC_GATES, DatasetSpec


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor  # int64 class labels, or float32 (N, 1) targets standardized by the training split

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    classes: int | None  # None for regression
    y_mean: float = 0.0  # regression targets are trained standardized; metrics are reported in the original units
    y_std: float = 1.0

    def to(self, device: torch.device | str) -> "Data":
        return Data(self.train.to(device), self.val.to(device), self.test.to(device), self.classes, self.y_mean, self.y_std)


def _logic_gate(name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    a, b = x[:, 0].astype(bool), x[:, 1].astype(bool)
    y = {"or": a | b, "and": a & b, "xor": a ^ b}[name]
    return x, y.astype(np.int64)


def _spirals(n: int, classes: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    per = n // classes
    xs, ys = [], []
    for k in range(classes):
        r = np.linspace(0.05, 1.0, per)
        theta = np.linspace(k * 2 * np.pi / classes, k * 2 * np.pi / classes + 3 * np.pi, per)
        theta = theta + rng.normal(0, noise, per)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(per, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def raw(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return the whole dataset as (features, targets) arrays, before splitting."""
    from sklearn import datasets as sk

    name, n, seed = spec.name, spec.n_samples, spec.seed
    if name in LOGIC_GATES:
        return _logic_gate(name)
    if name == "moons":
        x, y = sk.make_moons(n, noise=spec.noise, random_state=seed)
    elif name == "circles":
        x, y = sk.make_circles(n, noise=spec.noise, factor=0.5, random_state=seed)
    elif name == "blobs":
        x, y = sk.make_blobs(n, n_features=spec.features, centers=spec.classes, cluster_std=1.0 + spec.noise,
                             random_state=seed)
    elif name == "spirals":
        x, y = _spirals(n, spec.classes, spec.noise, np.random.default_rng(seed))
    else:
        loader = {"digits": sk.load_digits, "iris": sk.load_iris, "wine": sk.load_wine,
                  "breast_cancer": sk.load_breast_cancer, "diabetes": sk.load_diabetes}[name]
        x, y = loader(return_X_y=True)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32 if spec.info().classes is None else np.int64)
    return x, y


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Return shuffled (train, val, test) index arrays; the same seed gives the same split."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def load(spec: DatasetSpec) -> Data:
    """Load, split and preprocess a dataset; statistics come from the training split only."""
    x, y = raw(spec)
    if spec.name in LOGIC_GATES:
        # A truth table has nothing to hold out: every split is the whole table.
        train = val = test = np.arange(len(x))
    else:
        train, val, test = split_indices(len(x), spec.val_fraction, spec.test_fraction, spec.seed)

    scale = spec.preprocess.scale
    if scale == "zscore":
        shift, div = x[train].mean(axis=0), x[train].std(axis=0)
    elif scale == "minmax":
        shift, div = x[train].min(axis=0), x[train].max(axis=0) - x[train].min(axis=0)
    else:
        shift, div = np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    div = np.where(div > 1e-12, div, 1.0)  # a constant column stays constant instead of dividing by zero
    x = ((x - shift) / div).astype(np.float32)

    classes = spec.info().classes
    y_mean, y_std = 0.0, 1.0
    if classes is None:
        y_mean, y_std = float(y[train].mean()), float(y[train].std() or 1.0)
        y = ((y - y_mean) / y_std).reshape(-1, 1).astype(np.float32)

    def part(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))

    return Data(part(train), part(val), part(test), classes, y_mean, y_std)
