"""Built-in datasets as in-memory tensors: logic gates, generators and scikit-learn's bundled sets.

Nothing is downloaded. A dataset is split by its seed into train, validation and test; preprocessing
statistics come from the training split only and are applied to all three.

Images whose pixels are whole numbers in 0..255 (the shapes generator, digits as images, 8-bit uploads) are kept
as uint8, a quarter of the memory of float32, and scaled to float when a batch is taken (`Split.take`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from trainq.models.spec import LOGIC_GATES, SHAPE_CLASSES, DatasetSpec, class_names_of, planned_codec, table_target


@dataclass
class Split:
    x: torch.Tensor  # features as stored: float32, preprocessed; or raw uint8 pixels, scaled by `take`
    y: torch.Tensor  # int64 class labels, or float32 (N, 1) targets standardized by the training split
    shift: torch.Tensor | None = None  # uint8 pixels only: per channel, (1, C, 1, 1): x_float = (x - shift) * scale
    scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device), *self._codec(device))

    def pinned(self, device: torch.device | str) -> "Split":
        """Features and targets in pinned host memory; the scaling statistics on `device`, where batches land."""
        return Split(self.x.pin_memory(), self.y.pin_memory(), *self._codec(device))

    def _codec(self, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.shift is None:
            return None, None
        return self.shift.to(device), self.scale.to(device)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows (already on the training device) as preprocessed float32 features."""
        if self.shift is None:
            return x
        return (x.float() - self.shift) * self.scale

    def take(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """The preprocessed features of the rows `idx`, on the split's device."""
        return self.decode(self.x[idx])

    def features(self) -> torch.Tensor:
        """The whole split as preprocessed float32 features (a copy when stored as uint8)."""
        return self.decode(self.x)

    def chunks(self, size: int):
        """The stored rows in order, `size` at a time (a streamed split reads them from disk the same way)."""
        for start in range(0, len(self.x), size):
            yield self.x[start:start + size]


@dataclass
class Preprocessing:
    """What the training split taught: how a raw row becomes the model's input, and its output the target's units.
    It travels with a model (the ONNX export puts it inside the graph), so raw features go in."""

    shift: list[float]  # per column of a table (0 for nominal ones), per channel of images
    div: list[float]  # x_model = (x_raw - shift) / div, before one-hot coding
    one_hot: dict[int, list[float]]  # nominal column -> its training categories, sorted (unseen: all zeros)
    image: bool  # (N, C, H, W) inputs: shift and div are per channel
    y_mean: float = 0.0  # regression: the target is y_mean + y_std * the model's standardized answer
    y_std: float = 1.0
    table: dict | None = None  # an uploaded table's codec (trainq.data.codec), fitted: raw columns in, shift 0, div 1

    def as_dict(self) -> dict:
        return {"shift": self.shift, "div": self.div, "one_hot": {str(k): v for k, v in self.one_hot.items()},
                "image": self.image, "y_mean": self.y_mean, "y_std": self.y_std,
                **({"table": self.table} if self.table is not None else {})}


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    classes: int | None  # None for regression
    y_mean: float = 0.0  # regression targets are trained standardized; metrics are reported in the original units
    y_std: float = 1.0
    preprocessing: Preprocessing | None = None
    regions: torch.Tensor | None = None  # gap_sine: each test row's region, an index into region_names
    region_names: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> "Data":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def pinned(self, device: torch.device | str) -> "Data":
        """Host memory the GPU copies from without staging: for data streamed batch by batch to `device`."""
        return replace(self, train=self.train.pinned(device), val=self.val.pinned(device),
                       test=self.test.pinned(device))


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


def _shapes(n: int, size: int, channels: int, classes: int, noise: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Procedural 8-bit images of shapes (circle, square, triangle, cross, ring, diamond) at random places, sizes,
    rotations and colours, with Gaussian pixel noise: small enough to generate, hard enough for a CNN. Pixels are
    uint8 as a camera's are: the intensity in [0, 1] (clipped) times 255, rounded."""
    labels = rng.integers(0, classes, n)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    for start in range(0, n, 4096):  # in chunks, to bound memory
        idx = slice(start, min(n, start + 4096))
        m = idx.stop - idx.start
        cx, cy = rng.uniform(-0.3, 0.3, (2, m, 1, 1)).astype(np.float32)
        r = rng.uniform(0.35, 0.65, (m, 1, 1)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi, (m, 1, 1)).astype(np.float32)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        dist = np.sqrt(dx ** 2 + dy ** 2)
        masks = {
            "circle": dist < r,
            "square": np.maximum(abs(u), abs(v)) < 0.75 * r,
            "triangle": (v > -r / 2) & (v < r) & (abs(u) < (r - v) / np.sqrt(3)),
            "cross": ((abs(u) < r / 4) & (abs(v) < r)) | ((abs(v) < r / 4) & (abs(u) < r)),
            "ring": (dist < r) & (dist > 0.6 * r),
            # a rhombus twice as long as it is wide: |u| + |v| < r alone was a square turned 45 degrees, which a
            # random rotation made the square class again (no model told the two apart)
            "diamond": abs(u) + 2 * abs(v) < r,
        }
        shape = np.stack([masks[name] for name in SHAPE_CLASSES[:classes]])  # classes x m x H x W
        mask = shape[labels[idx], np.arange(m)].astype(np.float32)
        colour = rng.uniform(0.5, 1.0, (m, channels, 1, 1)).astype(np.float32)
        value = mask[:, None] * colour + noise * rng.standard_normal((m, channels, size, size), np.float32)
        images[idx] = np.rint(np.clip(value, 0.0, 1.0) * 255)
    return images, labels.astype(np.int64)


def _inverse_sine(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bishop's inverse problem: t ~ U(0, 1), x = t + 0.3 sin(2 pi t) + U(-noise, noise); predict t from x.
    For some x several t fit, so a single Gaussian (MSE) averages them where a mixture does not."""
    t = rng.uniform(0, 1, n).astype(np.float32)
    x = t + 0.3 * np.sin(2 * np.pi * t) + rng.uniform(-noise, noise, n).astype(np.float32)
    return x.reshape(-1, 1), t


def _adding(n: int, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hochreiter and Schmidhuber's adding problem: each example is `steps` steps of (value ~ U(0, 1), marker), with
    the marker 1 at one step of the first half and one of the second, 0 elsewhere; the target is the sum of the two
    marked values. Predicting their mean, 1, scores an MSE of 1/6: a model must carry a value across many steps."""
    values = rng.uniform(0, 1, (n, steps)).astype(np.float32)
    half = steps // 2
    first, second = rng.integers(0, half, n), rng.integers(half, steps, n)
    markers = np.zeros((n, steps), np.float32)
    rows = np.arange(n)
    markers[rows, first] = markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=2), y.astype(np.float32)


GAP_SINE_REGIONS = ("in", "gap", "far", "farther")
GAP_SINE_PROBES = 100  # test points in each region away from the training data


def _gap_sine(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(3x) + N(0, noise^2) with x drawn from [-1, -0.35] and [0.35, 1] (n points), then test probes where
    no training point is: the gap |x| < 0.15, |x| in 2-3 (far) and 4-6 (farther), GAP_SINE_PROBES each."""
    side = rng.choice([-1.0, 1.0], n)
    x_in = side * rng.uniform(0.35, 1.0, n)
    probes = [rng.uniform(-0.15, 0.15, GAP_SINE_PROBES)]
    for low, high in ((2.0, 3.0), (4.0, 6.0)):
        probes.append(rng.choice([-1.0, 1.0], GAP_SINE_PROBES) * rng.uniform(low, high, GAP_SINE_PROBES))
    x = np.concatenate([x_in, *probes])
    y = np.sin(3 * x) + rng.normal(0, noise, len(x))
    return x.reshape(-1, 1).astype(np.float32), y.astype(np.float32)


def splits(spec: DatasetSpec, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train, validation and test rows of a dataset of `rows` rows, by its seed. A truth table has nothing to
    hold out (every split is the whole table); gap_sine's probes away from the data all go to its test split."""
    if spec.name in LOGIC_GATES:
        everything = np.arange(rows)
        return everything, everything, everything
    if spec.name == "gap_sine":
        train, val, test = split_indices(spec.n_samples, spec.val_fraction, spec.test_fraction, spec.seed)
        return train, val, np.concatenate([test, np.arange(spec.n_samples, rows)])
    return split_indices(rows, spec.val_fraction, spec.test_fraction, spec.seed)


def one_hot(x: np.ndarray, columns: list[int], train: np.ndarray) -> np.ndarray:
    """Replace each nominal column by its one-hot code, in place; categories are those of the training rows
    (sorted), and a value never seen in training codes as all zeros."""
    nominal = set(columns)
    parts = []
    for j in range(x.shape[1]):
        if j in nominal:
            categories = np.unique(x[train, j])
            parts.append((x[:, j:j + 1] == categories[None, :]).astype(np.float32))
        else:
            parts.append(x[:, j:j + 1])
    return np.concatenate(parts, axis=1)


def raw(spec: DatasetSpec, arrays: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the whole dataset as (features, targets) arrays, before splitting (an upload's arrays as given)."""
    from sklearn import datasets as sk

    name, n, seed = spec.name, spec.n_samples, spec.seed
    if name == "upload":
        if arrays is None:
            raise ValueError(f"the uploaded dataset {spec.upload!r} was not given to the engine")
        x, y = arrays
    elif name in LOGIC_GATES:
        return _logic_gate(name)
    elif name == "moons":
        x, y = sk.make_moons(n, noise=spec.noise, random_state=seed)
    elif name == "circles":
        x, y = sk.make_circles(n, noise=spec.noise, factor=0.5, random_state=seed)
    elif name == "blobs":
        x, y = sk.make_blobs(n, n_features=spec.features, centers=spec.classes, cluster_std=1.0 + spec.noise,
                             random_state=seed)
    elif name == "spirals":
        x, y = _spirals(n, spec.classes, spec.noise, np.random.default_rng(seed))
    elif name == "shapes":
        x, y = _shapes(n, spec.image_size or 16, spec.channels or 1, spec.classes, spec.noise,
                       np.random.default_rng(seed))
    elif name == "inverse_sine":
        x, y = _inverse_sine(n, spec.noise, np.random.default_rng(seed))
    elif name == "gap_sine":
        x, y = _gap_sine(n, spec.noise, np.random.default_rng(seed))
    elif name == "adding":
        x, y = _adding(n, spec.sequence_length, np.random.default_rng(seed))
    else:
        loader = {"digits": sk.load_digits, "iris": sk.load_iris, "wine": sk.load_wine,
                  "breast_cancer": sk.load_breast_cancer, "diabetes": sk.load_diabetes}[name]
        x, y = loader(return_X_y=True)
    x = x if x.dtype == np.uint8 else np.asarray(x, dtype=np.float32)
    if name == "digits" and spec.as_images:
        x = x.reshape(-1, 1, 8, 8)
    y = np.asarray(y, dtype=np.float32 if spec.info().classes is None else np.int64)
    return x, y


def class_names(spec: DatasetSpec) -> list[str]:
    """Names of a dataset's classes, in label order (an upload's from its profile)."""
    from sklearn import datasets as sk

    if spec.uploaded is not None and class_names_of(spec):
        return class_names_of(spec)

    loaders = {"iris": sk.load_iris, "wine": sk.load_wine, "breast_cancer": sk.load_breast_cancer}
    if spec.name in loaders:
        return [str(name) for name in loaders[spec.name]().target_names]
    if spec.name == "shapes":
        return list(SHAPE_CLASSES[:spec.classes])
    return [str(i) for i in range(spec.info().classes or 0)]


def feature_names(spec: DatasetSpec) -> list[str] | None:
    """Names of a built-in table's columns (scikit-learn's), for a model's signature; None where it has none."""
    from sklearn import datasets as sk

    loaders = {"iris": sk.load_iris, "wine": sk.load_wine, "breast_cancer": sk.load_breast_cancer,
               "diabetes": sk.load_diabetes, "digits": sk.load_digits}
    if spec.name not in loaders or (spec.name == "digits" and spec.as_images):
        return None
    return [str(name) for name in loaders[spec.name]().feature_names]


def whole_bytes(x: np.ndarray) -> bool:
    """Whether every value is a whole number in 0..255, so that uint8 holds the array exactly."""
    return x.size > 0 and float(x.min()) >= 0 and float(x.max()) <= 255 and bool(np.all(np.rint(x) == x))


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Return shuffled (train, val, test) index arrays; the same seed gives the same split."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def standardized(y: np.ndarray, train: np.ndarray, classes: int | None) -> tuple[np.ndarray, float, float]:
    """Regression targets as trained, (N, 1) float32 standardized by the training split's mean and spread, with those
    two (metrics are reported in the target's units); class labels as they are."""
    if classes is not None:
        return y, 0.0, 1.0
    y_mean, y_std = float(y[train].mean()), float(y[train].std() or 1.0)
    return ((y - y_mean) / y_std).reshape(-1, 1).astype(np.float32), y_mean, y_std


def table_rows(spec: DatasetSpec, table):
    """The rows of an uploaded table a run uses (a target, and a value in each drop_row column), and their targets:
    class indexes in the profile's order, or floats."""
    from trainq.data.codec import numbers, required_rows, strings

    summary = table_target(spec)
    target = table.column(summary["name"])
    keep = required_rows(planned_codec(spec), table)
    if summary["task"] == "classification":
        labels = strings(target)
        keep &= labels != ""
        index = {name: i for i, name in enumerate(summary["classes"])}
        y = np.array([index.get(v, -1) for v in labels[keep]], dtype=np.int64)
        if (y < 0).any():
            unknown = sorted({v for v in labels[keep] if v not in index})[:5]
            raise ValueError(f"target values {unknown} are not among the profiled classes")
    else:
        values = numbers(target)
        keep &= ~np.isnan(values)
        y = values[keep].astype(np.float32)
    return table.filter(keep), y


def load_table(spec: DatasetSpec, table) -> Data:
    """An uploaded table: its codec fitted on the training split (fills, scales, vocabularies), every split encoded
    with it. The fitted codec is the run's preprocessing, written into the exported graph."""
    from trainq.data.codec import encode, fit

    table, y = table_rows(spec, table)
    train, val, test = split_indices(table.num_rows, spec.val_fraction, spec.test_fraction, spec.seed)
    codec = fit(planned_codec(spec), table, train)
    x = encode(codec, table)
    classes = spec.info().classes
    y, y_mean, y_std = standardized(y, train, classes)

    def part(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))

    width = x.shape[1]
    fitted = Preprocessing([0.0] * width, [1.0] * width, {}, False, y_mean, y_std, codec.as_dict())
    return Data(part(train), part(val), part(test), classes, y_mean, y_std, fitted)


def load_streamed(spec: DatasetSpec, source) -> Data:
    """A table streamed from shards (trainq.models.streams): its codec was fitted on the training rows as the shards
    were written; regression targets are standardized by the training targets' mean and spread."""
    from trainq.models.streams import ShardedSplit, regression_scale

    manifest = source.manifest
    classes = spec.info().classes
    y_mean, y_std = regression_scale(manifest) if classes is None else (0.0, 1.0)
    width = manifest.width
    fitted = Preprocessing([0.0] * width, [1.0] * width, {}, False, y_mean, y_std, manifest.codec)
    return Data(*(ShardedSplit(manifest, name, y_mean, y_std) for name in ("train", "val", "test")), classes,
                y_mean, y_std, fitted)


def streamed(source) -> bool:
    """Whether an upload's data comes as shards to stream (trainq.models.streams.Streamed)."""
    return hasattr(source, "manifest")


def is_table(source) -> bool:
    """Whether an upload's data was handed over as a pyarrow Table (rather than arrays)."""
    return hasattr(source, "column_names")


def load(spec: DatasetSpec, arrays=None) -> Data:
    """Load, split and preprocess a dataset; statistics come from the training split only. `arrays` is an upload's
    data: (x, y) arrays (an NPZ, or images already decoded), or a pyarrow Table."""
    if streamed(arrays):
        return load_streamed(spec, arrays)
    if is_table(arrays):
        return load_table(spec, arrays)
    x, y = raw(spec, arrays)
    train, val, test = splits(spec, len(x))

    nominal = spec.preprocess.one_hot
    scale = spec.preprocess.scale
    images = x.ndim == 4
    if images and x.dtype != np.uint8 and whole_bytes(x):
        x = x.astype(np.uint8)  # lossless: kept as 8-bit pixels and scaled when a batch is taken
    # images: one statistic per channel; sequences (N, T, F): one per feature over every step; tables: one per column
    axes = (0, 2, 3) if images else (0, 1) if x.ndim == 3 else 0
    wide = {"dtype": np.float64} if x.dtype == np.uint8 else {}  # statistics of 8-bit pixels, summed in float64
    if scale == "zscore":
        shift, div = x[train].mean(axis=axes, keepdims=images, **wide), x[train].std(axis=axes, keepdims=images, **wide)
    elif scale == "minmax":
        low = x[train].min(axis=axes, keepdims=images).astype(np.float32)
        shift, div = low, x[train].max(axis=axes, keepdims=images) - low
    else:
        shift = np.zeros_like(x[train[:1]].mean(axis=axes, keepdims=images, dtype=np.float32))
        div = np.ones_like(shift)
    div = np.where(div > 1e-12, div, 1.0)  # a constant column stays constant instead of dividing by zero
    codec: tuple[torch.Tensor, ...] = ()
    categories: dict[int, list[float]] = {}
    if x.dtype == np.uint8:  # scaled per batch on the device: (x - shift) * scale
        codec = (torch.from_numpy(np.asarray(shift, np.float32)), torch.from_numpy(np.asarray(1 / div, np.float32)))
    else:
        if nominal and x.ndim == 2:  # nominal columns are coded, not scaled
            shift, div = np.array(shift, np.float32), np.array(div, np.float32)
            shift[nominal], div[nominal] = 0.0, 1.0
            categories = {j: np.unique(x[train, j]).astype(float).tolist() for j in nominal}
        x = ((x - shift) / div).astype(np.float32)
        if nominal:
            x = one_hot(x, nominal, train)

    classes = spec.info().classes
    y, y_mean, y_std = standardized(y, train, classes)

    def part(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), *codec)

    fitted = Preprocessing(np.asarray(shift, np.float64).ravel().tolist(), np.asarray(div, np.float64).ravel().tolist(),
                           categories, images, y_mean, y_std)
    regions = None
    if spec.name == "gap_sine":
        codes = np.zeros(len(x), dtype=np.int64)
        codes[spec.n_samples:] = 1 + np.arange(len(x) - spec.n_samples) // GAP_SINE_PROBES
        regions = torch.from_numpy(codes[test])
    return Data(part(train), part(val), part(test), classes, y_mean, y_std, fitted, regions,
                GAP_SINE_REGIONS if regions is not None else ())
