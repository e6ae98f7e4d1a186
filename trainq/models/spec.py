"""The job spec: the one pydantic model that the API validates with, the database stores and the worker runs.

This module imports pydantic only, so the service can validate and dry-run a spec without importing torch.
Shape inference, parameter counts and the memory estimate are plain arithmetic on the spec.

Adding a layer, loss or optimizer is one spec class here (with its shape arithmetic, for layers) and one
builder registered under the same name in the torch side (`layers.py`, `losses.py`, `optimizers.py`);
a test asserts the two sets of names are equal.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

# ---------------------------------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------------------------------


class Spec(BaseModel):
    """Base of every spec: unknown fields are errors, and NaN or Infinity is refused everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=10_000, frozen=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class SpecError(ValueError):
    """A spec that cannot run; `errors` names every field at fault."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


_BRANCH = re.compile(r"^(int|float|str|bool|none|constrained-\w+|literal\[.*\]|function-\w+\[.*\]|"
                     r"(list|tuple|dict|nullable)\[.*\]|json-or-python\[.*\])$")


@dataclass(frozen=True)
class DatasetInfo:
    """What the service must know about a dataset to check a spec, without loading it."""

    shape: tuple[int, ...]  # of one example as the model's first layer takes it: (features,) or (channels, H, W)
    classes: int | None  # None for regression
    fixed_size: int | None = None  # the logic gates are their truth table, nothing more
    # a table's embedded categories: (column of the encoded input, table rows, dim); the encoded input is then
    # narrower than `shape`, each such column holding an index that the model embeds
    embeddings: tuple[tuple[int, int, int], ...] = ()

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def stored_width(self) -> int:
        """Values of one example as stored (an embedded category is one index, not its vector)."""
        return math.prod(self.shape) - sum(dim - 1 for _, _, dim in self.embeddings)


@dataclass(frozen=True)
class Uploaded:
    """An uploaded dataset version as the service knows it, without reading its file: its kind (arrays from an NPZ,
    a table, images), rows, classes and profile."""

    name: str
    version: int
    kind: str  # arrays | table | images
    rows: int
    classes: int | None
    class_names: tuple[str, ...] | None = None
    shape: tuple[int, ...] | None = None  # arrays: one example's shape
    profile: dict | None = None  # tables and images: the upload's profile (column types, sizes seen)
    sha256: str = ""
    id: str = ""  # the version's id in the service


LOGIC_GATES = ("or", "and", "xor")
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a registered model's name
GENERATORS = ("moons", "circles", "spirals", "blobs", "shapes", "inverse_sine", "gap_sine")
SKLEARN_SETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
DATASET_NAMES = LOGIC_GATES + GENERATORS + SKLEARN_SETS + ("upload",)
UPLOAD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
UPLOAD_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[1-9][0-9]{0,8})?$"  # NAME (the latest version) or NAME@VERSION
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond")  # the procedural image set
COLUMN_NAME = Annotated[str, Field(min_length=1, max_length=256)]

_BUILTIN_INFO = {
    "or": DatasetInfo((2,), 2, 4),
    "and": DatasetInfo((2,), 2, 4),
    "xor": DatasetInfo((2,), 2, 4),
    "moons": DatasetInfo((2,), 2),
    "circles": DatasetInfo((2,), 2),
    "inverse_sine": DatasetInfo((1,), None),
    "gap_sine": DatasetInfo((1,), None),
    "iris": DatasetInfo((4,), 3, 150),
    "wine": DatasetInfo((13,), 3, 178),
    "breast_cancer": DatasetInfo((30,), 2, 569),
    "diabetes": DatasetInfo((10,), None, 442),
}


def split_ref(ref: str) -> tuple[str, int | None]:
    """`churn@2` -> ("churn", 2); `churn` -> ("churn", None): the latest version."""
    name, _, version = ref.partition("@")
    return name, int(version) if version else None


class PreprocessSpec(Spec):
    scale: Literal["zscore", "minmax", "none"] = "zscore"  # statistics from the training split only
    one_hot: list[Annotated[int, Field(ge=0, le=10_000)]] = Field(default_factory=list, max_length=1000)  # nominal


Missing = Literal["mean", "median", "most_frequent", "constant", "drop_row"]
FillValue = Annotated[float, Field(ge=-1e30, le=1e30)] | Annotated[str, Field(max_length=256)] | None


class MissingSpec(Spec):
    """What fills a table's missing values (fitted on the training split), and whether a 0/1 column marks them."""

    strategy: Missing = "mean"  # a category's mean or median is its most frequent value
    fill_value: FillValue = None  # with strategy: constant
    indicator: bool = False

    @model_validator(mode="after")
    def _constant_has_value(self) -> "MissingSpec":
        if (self.strategy == "constant") != (self.fill_value is not None):
            raise ValueError("strategy: constant goes with a fill_value, and only with it")
        return self


class ColumnSpec(Spec):
    """How one column of an uploaded table is used; every field left out follows the dataset's defaults."""

    type: Literal["number", "category", "binary", "ignore"] | None = None  # None: as inferred at upload
    encoding: Literal["one_hot", "embedding"] = "one_hot"  # categories
    dim: int = Field(4, ge=1, le=1024)  # embedding: its width
    max_categories: int | None = Field(None, ge=1, le=100_000)
    min_frequency: int | None = Field(None, ge=1, le=1_000_000)
    missing: Missing | None = None
    fill_value: FillValue = None
    indicator: bool | None = None

    def unused(self) -> set[str]:
        return ({"encoding", "dim", "max_categories", "min_frequency"} if self.type in ("number", "ignore") else
                set()) | ({"dim"} if self.encoding != "embedding" else set())


class DatasetSpec(Spec):
    name: Literal[DATASET_NAMES]  # type: ignore[valid-type]
    n_samples: int = Field(1000, ge=8, le=1_000_000)  # generators only
    noise: float = Field(0.1, ge=0, le=10)  # generators only
    classes: int = Field(3, ge=2, le=100)  # spirals, blobs and shapes (at most 6)
    features: int = Field(2, ge=1, le=10_000)  # blobs only
    # shapes and uploaded images: height and width in pixels (one number: square); shapes: 16, images: their most
    # common size up to 64 x 64
    image_size: Annotated[int, Field(ge=8, le=1024)] | tuple[Annotated[int, Field(ge=8, le=1024)],
                                                             Annotated[int, Field(ge=8, le=1024)]] | None = None
    channels: Literal[1, 3] | None = None  # shapes: 1; uploaded images: 3 if any is in colour
    resize: Literal["stretch", "crop", "pad"] = "stretch"  # uploaded images: to image_size, keeping the aspect or not
    as_images: bool = False  # digits only: 1x8x8 images instead of 64 features
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    preprocess: PreprocessSpec = PreprocessSpec()
    upload: str | None = Field(None, pattern=UPLOAD_REF)  # with name: upload: NAME (its latest version) or NAME@V
    # uploaded tables
    target: COLUMN_NAME | None = None  # the column to predict (default: the one named at upload, else the last)
    columns: dict[COLUMN_NAME, ColumnSpec] = Field(default_factory=dict, max_length=10_000)
    missing: MissingSpec = MissingSpec()
    # a streamed table's splits: by a hash of each row's index (val_fraction, test_fraction, seed), or by this
    # column's values (train, val or validation, test)
    split_column: COLUMN_NAME | None = None
    max_categories: int = Field(50, ge=1, le=100_000)  # a category's vocabulary: its most frequent values
    min_frequency: int = Field(1, ge=1, le=1_000_000)  # a value seen fewer times in training goes to the unknown bucket
    _info: DatasetInfo | None = PrivateAttr(None)  # an upload's shape and classes, resolved by the service
    _uploaded: Uploaded | None = PrivateAttr(None)

    @field_validator("columns", mode="before")
    @classmethod
    def _type_alone(cls, value: Any) -> Any:
        """`{plan: category}` is short for `{plan: {type: category}}`."""
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("missing", mode="before")
    @classmethod
    def _strategy_alone(cls, value: Any) -> Any:
        return {"strategy": value} if isinstance(value, str) else value

    def info(self) -> DatasetInfo:
        if self.name == "upload":
            if self._info is None:
                raise SpecError([FieldError("dataset.upload", f"no uploaded dataset named {self.upload!r}")])
            return self._info
        if self.name == "spirals":
            return DatasetInfo((2,), self.classes)
        if self.name == "blobs":
            return DatasetInfo((self.features,), self.classes)
        if self.name == "shapes":
            side = self.image_size or 16
            return DatasetInfo((self.channels or 1, side, side), self.classes)
        if self.name == "digits":
            return DatasetInfo((1, 8, 8) if self.as_images else (64,), 10, 1797)
        return _BUILTIN_INFO[self.name]

    @property
    def uploaded(self) -> Uploaded | None:
        return self._uploaded

    def resolve(self, uploaded: Uploaded | None) -> None:
        """Attach what the service knows of the uploaded dataset this spec names, and plan its input from it; raise
        SpecError naming the field at fault (a column the table lacks, a type a column cannot take)."""
        if uploaded is None:
            raise SpecError([FieldError("dataset.upload", f"no uploaded dataset named {self.upload!r}: upload it "
                                                          f"first (trainq dataset upload FILE --name "
                                                          f"{split_ref(self.upload)[0]}), or see trainq dataset list")])
        self._uploaded = uploaded
        self._info = upload_info(self, uploaded)

    def table_kind(self) -> str | None:
        """arrays, table or images for an upload whose version is resolved; None otherwise."""
        return self._uploaded.kind if self._uploaded is not None else None

    def size(self) -> int:
        return self.info().fixed_size or self.n_samples

    def unused(self) -> set[str]:
        """The fields that mean nothing for this dataset (a generator's size on digits, say)."""
        upload, kind = self.name == "upload", self.table_kind()
        table = upload and kind in (None, "table")
        uses = {"n_samples": self.name in GENERATORS, "noise": self.name in GENERATORS,
                "classes": self.name in ("spirals", "blobs", "shapes"), "features": self.name == "blobs",
                "image_size": self.name == "shapes" or (upload and kind in (None, "images")),
                "channels": self.name == "shapes" or (upload and kind in (None, "images")),
                "resize": upload and kind in (None, "images"),
                "as_images": self.name == "digits", "upload": upload, "target": table, "columns": table,
                "missing": table, "max_categories": table, "min_frequency": table, "split_column": table}
        return {name for name, used in uses.items() if not used}

    def stored_bytes(self) -> int:
        """Bytes one example takes in memory while training: 8-bit images (shapes, digits as images, uploaded image
        files) are kept as uint8 and scaled per batch, other features as float32 (an upload's 8-bit arrays too are
        uint8 once loaded; counted here as float32, an upper bound); labels are int64, regression targets float32."""
        info = self.info()
        eight_bit = self.name == "shapes" or (self.name == "digits" and self.as_images) or self.table_kind() == "images"
        return info.stored_width * (1 if eight_bit else 4) + (4 if info.classes is None else 8)

    @model_validator(mode="after")
    def _upload_named(self) -> "DatasetSpec":
        if (self.name == "upload") != (self.upload is not None):
            raise ValueError("name: upload goes with upload: <dataset name>, and only with it")
        if self.name == "shapes" and isinstance(self.image_size, tuple):
            raise ValueError("shapes makes square images: image_size is one number")
        if self.name == "shapes" and self.image_size is not None and self.image_size > 256:
            raise ValueError("shapes makes images of at most 256 x 256 pixels")
        return self


def pinned(spec: "JobSpec") -> dict:
    """The spec as stored with a job: an uploaded dataset named by its version (`churn` -> `churn@3`), so the job
    trains on exactly that data whatever is uploaded later."""
    document = spec.model_dump(mode="json")
    uploaded = spec.dataset.uploaded
    if uploaded is not None:
        document["dataset"]["upload"] = f"{uploaded.name}@{uploaded.version}"
    return document


def table_rules(ds: DatasetSpec):
    """The spec's column rules for the codec: per named column, and the default for the rest."""
    from trainq.data.codec import Rule

    default = Rule(missing=ds.missing.strategy, fill_value=ds.missing.fill_value, indicator=ds.missing.indicator,
                   max_categories=ds.max_categories, min_frequency=ds.min_frequency)
    rules = {}
    for name, c in ds.columns.items():
        rules[name] = Rule(type=c.type, encoding=c.encoding, dim=c.dim,
                           max_categories=c.max_categories or ds.max_categories,
                           min_frequency=c.min_frequency or ds.min_frequency,
                           missing=c.missing or ds.missing.strategy,
                           fill_value=c.fill_value if c.fill_value is not None else (
                               ds.missing.fill_value if c.missing in (None, "constant") else None),
                           indicator=ds.missing.indicator if c.indicator is None else c.indicator)
    return rules, default


def planned_codec(ds: DatasetSpec):
    """The codec (unfitted) of an uploaded table under this spec: which columns feed the model, and how wide."""
    from trainq.data.codec import plan as plan_codec

    uploaded = ds.uploaded
    rules, default = table_rules(ds)
    return plan_codec(uploaded.profile, rules, default, ds.preprocess.scale, target_of(ds))


def target_of(ds: DatasetSpec) -> str:
    """The column an uploaded table's model predicts: the spec's target, else the one the upload named."""
    return ds.target or ds.uploaded.profile["target"]["name"]


def table_target(ds: DatasetSpec) -> dict:
    """The target of an uploaded table under this spec, from the profile: its task, and its classes with their counts
    (or its range). Raises DataError for a column that is missing or cannot be a target."""
    from trainq.data.formats import DataError
    from trainq.data.profile import target_summary

    profile = ds.uploaded.profile
    name = target_of(ds)
    if name == profile["target"]["name"]:
        return profile["target"]
    column = next((c for c in profile["columns"] if c["name"] == name), None)
    if column is None:
        raise DataError(f"no column {name!r}; the table's columns are "
                        f"{', '.join(c['name'] for c in profile['columns'][:30])}")
    return target_summary(column)


def class_names_of(ds: DatasetSpec) -> list[str] | None:
    """An uploaded dataset's class names in label order under this spec (None for regression)."""
    uploaded = ds.uploaded
    if uploaded.kind == "table":
        summary = table_target(ds)
        return list(summary["classes"]) if summary["task"] == "classification" else None
    return list(uploaded.class_names) if uploaded.class_names else None


def image_target(ds: DatasetSpec):
    """How an uploaded dataset's images become inputs: the spec's size, resize and channels, else the defaults."""
    from trainq.data.images import default_target

    return default_target(ds.uploaded.profile, ds.image_size, ds.resize, ds.channels)


def upload_info(ds: DatasetSpec, uploaded: Uploaded) -> DatasetInfo:
    """An uploaded version's shape and classes under this spec (a table's columns as the spec codes them)."""
    from trainq.data.formats import DataError

    if uploaded.kind == "arrays":
        return DatasetInfo(tuple(uploaded.shape), uploaded.classes, uploaded.rows)
    if uploaded.kind == "images":
        target = image_target(ds)
        return DatasetInfo((target.channels, *target.size), uploaded.classes, uploaded.rows)
    try:
        summary = table_target(ds)
    except DataError as exc:
        raise SpecError([FieldError("dataset.target", str(exc))]) from None
    classes = len(summary["classes"]) if summary["task"] == "classification" else None
    try:
        codec = planned_codec(ds)
    except DataError as exc:
        column = re.search(r"column '([^']*)'", str(exc))
        path = f"dataset.columns.{column.group(1)}" if column and column.group(1) in ds.columns else "dataset.columns"
        raise SpecError([FieldError(path, str(exc))]) from None
    rows = next(c["count"] for c in uploaded.profile["columns"] if c["name"] == summary["name"])  # with a target
    return DatasetInfo((codec.model_width,), classes, rows, tuple(codec.embeddings()))


# ---------------------------------------------------------------------------------------------------------------------
# Model: each layer knows its output shape and parameter count
# ---------------------------------------------------------------------------------------------------------------------

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given."""


def _needs(shape: Shape, dims: int, what: str) -> None:
    if len(shape) != dims:
        kind = "a flat input (features)" if dims == 1 else "an image input (channels, height, width)"
        hint = "; add a flatten layer first" if dims == 1 else ""
        raise ShapeError(f"{what} needs {kind}, got shape {list(shape)}{hint}")


class SameShape:
    """A layer that keeps its input's shape and has no parameters."""

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0


class DenseSpec(Spec):
    type: Literal["dense"]
    units: int = Field(gt=0, le=65_536)
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 1, "dense")
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.units + (self.units if self.bias else 0)


ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "softmax")


class ActivationSpec(SameShape, Spec):
    type: Literal["activation"]
    fn: Literal[ACTIVATIONS]  # type: ignore[valid-type]
    slope: float = Field(1.0, gt=0, le=100)  # sigmoid(slope * s)
    negative_slope: float = Field(0.01, ge=0, le=1)  # leaky_relu
    alpha: float = Field(1.0, gt=0, le=100)  # elu

    def unused(self) -> set[str]:
        """The parameters of the other functions: relu has no slope, no alpha."""
        return {name for name, fn in (("slope", "sigmoid"), ("negative_slope", "leaky_relu"), ("alpha", "elu"))
                if self.fn != fn}


class DropoutSpec(SameShape, Spec):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1)


class NoiseSpec(SameShape, Spec):
    type: Literal["noise"]  # Gaussian noise added to the activations in training only
    std: float = Field(0.1, ge=0, le=100)


class Conv2dSpec(Spec):
    type: Literal["conv2d"]
    out_channels: int = Field(gt=0, le=4096)
    kernel: int = Field(3, gt=0, le=31)
    stride: int = Field(1, gt=0, le=16)
    padding: Annotated[int, Field(ge=0, le=64)] | Literal["same", "valid"] = 0  # same: (kernel - 1) / 2 each side
    bias: bool = True

    def pad(self) -> int:
        if self.padding == "same":
            if self.kernel % 2 == 0:
                raise ShapeError("padding 'same' needs an odd kernel")
            return (self.kernel - 1) // 2
        return 0 if self.padding == "valid" else self.padding

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "conv2d")
        p = self.pad()
        h, w = ((size + 2 * p - self.kernel) // self.stride + 1 for size in shape[1:])
        if h < 1 or w < 1:
            raise ShapeError(f"conv2d with kernel {self.kernel} does not fit an input of {list(shape)}")
        return (self.out_channels, h, w)

    def param_count(self, shape: Shape) -> int:
        return self.out_channels * shape[0] * self.kernel ** 2 + (self.out_channels if self.bias else 0)


class BayesFields(Spec):
    """A mean-field Gaussian posterior per weight, N(mu, softplus(rho)^2), against the prior N(0, prior_sigma^2)."""

    prior_sigma: float = Field(1.0, gt=0, le=100)
    posterior_rho_init: float = Field(-5.0, ge=-20, le=5)  # softplus(-5) = 0.0067: start near the point estimate


class DenseBayesSpec(BayesFields, DenseSpec):
    type: Literal["dense_bayes"]  # local reparameterization trick

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)  # a mean and a rho per weight


class Conv2dBayesSpec(BayesFields, Conv2dSpec):
    type: Literal["conv2d_bayes"]  # Flipout

    def param_count(self, shape: Shape) -> int:
        return 2 * super().param_count(shape)


class PoolSpec(Spec):
    type: Literal["pool"]
    kind: Literal["max", "avg", "stochastic"] = "max"  # stochastic: sample a_i with p_i = a_i / sum(a) in training
    size: int = Field(2, gt=0, le=32)
    stride: int | None = Field(None, gt=0, le=32)  # default: size

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "pool")
        stride = self.stride or self.size
        h, w = ((size - self.size) // stride + 1 for size in shape[1:])
        if h < 1 or w < 1:
            raise ShapeError(f"pool of size {self.size} does not fit an input of {list(shape)}")
        return (shape[0], h, w)

    def param_count(self, shape: Shape) -> int:
        return 0


class PadSpec(Spec):
    type: Literal["pad"]  # zeros around an image: a 32x32x3 image padded by 2 is 36x36x3
    size: int = Field(1, ge=0, le=64)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 3, "pad")
        return (shape[0], shape[1] + 2 * self.size, shape[2] + 2 * self.size)

    def param_count(self, shape: Shape) -> int:
        return 0


class BatchnormSpec(Spec):
    type: Literal["batchnorm"]  # over features (1d) or channels (2d), chosen by the input's shape
    momentum: float = Field(0.1, gt=0, le=1)
    eps: float = Field(1e-5, gt=0, le=1)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (1, 3):
            raise ShapeError(f"batchnorm needs features or an image, got shape {list(shape)}")
        return shape

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[0]  # gamma and beta per feature or channel


class FlattenSpec(Spec):
    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def param_count(self, shape: Shape) -> int:
        return 0


class MdnSpec(Spec):
    type: Literal["mdn"]  # mixture density head: K mixing logits, K x D means, K x D log standard deviations
    components: int = Field(5, gt=0, le=100)
    outputs: int = Field(1, gt=0, le=100)

    @property
    def width(self) -> int:
        return self.components * (1 + 2 * self.outputs)

    def output_shape(self, shape: Shape) -> Shape:
        _needs(shape, 1, "mdn")
        return (self.width,)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.width + self.width


LayerSpec = Annotated[Union[DenseSpec, ActivationSpec, DropoutSpec, NoiseSpec, Conv2dSpec, PoolSpec, PadSpec,
                            BatchnormSpec, FlattenSpec, MdnSpec, DenseBayesSpec, Conv2dBayesSpec],
                      Field(discriminator="type")]
BAYES_LAYERS = ("dense_bayes", "conv2d_bayes")


class ZerosInit(Spec):
    type: Literal["zeros"]  # every hidden unit stays identical: the symmetry is never broken


class NormalInit(Spec):
    type: Literal["normal"]
    mean: float = Field(0.0, ge=-10, le=10)
    std: float = Field(0.01, gt=0, le=10)


class UniformInit(Spec):
    type: Literal["uniform"]
    low: float = Field(-0.05, ge=-10, le=10)
    high: float = Field(0.05, ge=-10, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> "UniformInit":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class XavierInit(Spec):
    type: Literal["xavier"]  # Glorot: variance 2 / (fan_in + fan_out)
    distribution: Literal["uniform", "normal"] = "uniform"
    gain: float = Field(1.0, gt=0, le=10)


class HeInit(Spec):
    type: Literal["he"]  # Kaiming: variance 2 / fan_in, for ReLU
    distribution: Literal["uniform", "normal"] = "normal"
    nonlinearity: Literal["relu", "leaky_relu"] = "relu"


class LecunInit(Spec):
    type: Literal["lecun"]  # variance 1 / fan_in, for SELU and tanh
    distribution: Literal["uniform", "normal"] = "normal"


InitSpec = Annotated[Union[ZerosInit, NormalInit, UniformInit, XavierInit, HeInit, LecunInit],
                     Field(discriminator="type")]
INIT_NAMES = ("zeros", "normal", "uniform", "xavier", "he", "lecun")


class ModelSpec(Spec):
    init: InitSpec = HeInit(type="he")  # a name ("he") or an object with parameters ({type: normal, std: 0.1})
    layers: list[LayerSpec] = Field(min_length=1, max_length=1000)

    @field_validator("init", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------------------------------
# Loss, optimizer, schedule, regularization, augmentation
# ---------------------------------------------------------------------------------------------------------------------

ClassWeights = list[Annotated[float, Field(ge=0, le=1e6)]] | None


class MseLossSpec(Spec):
    type: Literal["mse"]


class MaeLossSpec(Spec):
    type: Literal["mae"]


class HuberLossSpec(Spec):
    type: Literal["huber"]
    delta: float = Field(1.0, gt=0, le=1e6)


class BceLossSpec(Spec):
    type: Literal["bce"]  # binary cross entropy on a logit: the last layer has one unit and no sigmoid
    pos_weight: float | None = Field(None, gt=0, le=1e6)


class CrossEntropyLossSpec(Spec):
    type: Literal["cross_entropy"]  # softmax + negative log-likelihood on logits
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: ClassWeights = None


class NllLossSpec(Spec):
    type: Literal["nll"]  # -log p_y on probabilities: the model ends in a softmax
    class_weights: ClassWeights = None


class HingeLossSpec(Spec):
    type: Literal["hinge"]  # multi-class hinge, the course's sum form: sum_{j != y} max(0, s_j - s_y + margin)
    margin: float = Field(1.0, gt=0, le=1e6)


class PerceptronLossSpec(Spec):
    type: Literal["perceptron"]  # max(0, -t s) with t = +-1: SGD on it is the perceptron rule; predicts step(s)


class MdnNllLossSpec(Spec):
    type: Literal["mdn_nll"]  # negative log-likelihood of the target under the mdn head's mixture


class GaussianNllLossSpec(Spec):
    # heteroscedastic regression: two output units, the mean and the noise variance's softplus argument, and the
    # Gaussian NLL; with inference.noise: learned, the noise of a Bayesian regression is learned per input this way
    type: Literal["gaussian_nll"]


LossSpec = Annotated[Union[MseLossSpec, MaeLossSpec, HuberLossSpec, BceLossSpec, CrossEntropyLossSpec, NllLossSpec,
                           HingeLossSpec, PerceptronLossSpec, MdnNllLossSpec, GaussianNllLossSpec],
                     Field(discriminator="type")]

Lr = Annotated[float, Field(gt=0, le=100)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class SgdSpec(Spec):
    type: Literal["sgd"]  # batch, mini-batch or online (batch_size 1) gradient descent
    lr: Lr = 0.01
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SgdSpec":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class MomentumSpec(Spec):
    type: Literal["momentum"]  # SGD with classical momentum
    lr: Lr = 0.01
    momentum: float = Field(0.9, gt=0, lt=1)


class NesterovSpec(Spec):
    type: Literal["nesterov"]  # SGD with Nesterov momentum
    lr: Lr = 0.01
    momentum: float = Field(0.9, gt=0, lt=1)


class AdagradSpec(Spec):
    type: Literal["adagrad"]
    lr: Lr = 0.01
    eps: float = Field(1e-10, gt=0, le=1)


class RmspropSpec(Spec):
    type: Literal["rmsprop"]
    lr: Lr = 0.001
    alpha: Beta = 0.99
    momentum: float = Field(0.0, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)


class AdamSpec(Spec):
    type: Literal["adam"]
    lr: Lr = 0.001
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)


class AdamwSpec(Spec):
    type: Literal["adamw"]  # Adam with decoupled weight decay (regularization.weight_decay, default 0.01)
    lr: Lr = 0.001
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)


class LbfgsSpec(Spec):
    type: Literal["lbfgs"]  # quasi-Newton; best with full batches (batch_size >= the training split)
    lr: Lr = 1.0
    max_iter: int = Field(20, gt=0, le=1000)
    history_size: int = Field(100, gt=0, le=1000)
    line_search: Literal["strong_wolfe", "none"] = "strong_wolfe"


OptimizerSpec = Annotated[Union[SgdSpec, MomentumSpec, NesterovSpec, AdagradSpec, RmspropSpec, AdamSpec, AdamwSpec,
                                LbfgsSpec], Field(discriminator="type")]


class NoScheduleSpec(Spec):
    type: Literal["none"]


class StepScheduleSpec(Spec):
    type: Literal["step"]  # lr times gamma every step_size epochs
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)


class ExponentialScheduleSpec(Spec):
    type: Literal["exponential"]  # lr times gamma every epoch
    gamma: float = Field(0.95, gt=0, le=1)


class CosineScheduleSpec(Spec):
    type: Literal["cosine"]  # anneals lr to min_lr over the run's epochs
    min_lr: float = Field(0.0, ge=0)


class OneCycleScheduleSpec(Spec):
    type: Literal["one_cycle"]  # per step: up to max_lr over pct_start of the run, then down
    max_lr: Lr = 0.01
    pct_start: float = Field(0.3, gt=0, lt=1)


class PlateauScheduleSpec(Spec):
    type: Literal["reduce_on_plateau"]  # lr times factor when val_loss stops improving for patience epochs
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    min_lr: float = Field(0.0, ge=0)


class WarmupScheduleSpec(Spec):
    type: Literal["warmup"]  # lr rises linearly from start_factor * lr to lr over `epochs`, then stays
    epochs: int = Field(5, gt=0)
    start_factor: float = Field(0.1, gt=0, le=1)


ScheduleSpec = Annotated[Union[NoScheduleSpec, StepScheduleSpec, ExponentialScheduleSpec, CosineScheduleSpec,
                               OneCycleScheduleSpec, PlateauScheduleSpec, WarmupScheduleSpec],
                         Field(discriminator="type")]


class RegularizationSpec(Spec):
    l2: float = Field(0.0, ge=0, le=10)  # coupled: adds l2 * theta to the gradient, as in the course's update rule
    weight_decay: float | None = Field(None, ge=0, le=10)  # decoupled: theta *= 1 - lr * wd (adamw: default 0.01)
    l1: float = Field(0.0, ge=0, le=10)  # adds l1 * sign(theta) to the gradient
    max_grad_norm: float | None = Field(None, gt=0)  # clip the global gradient norm
    input_noise: float = Field(0.0, ge=0, le=100)  # std of Gaussian noise added to the inputs in training


Prob = Annotated[float, Field(ge=0, le=1)]


class AffineAug(Spec):
    type: Literal["affine"]  # rotation, translation, zoom and shear, drawn per sample
    degrees: float = Field(0.0, ge=0, le=180)
    translate: float = Field(0.0, ge=0, lt=1)  # fraction of the size
    scale: tuple[Annotated[float, Field(gt=0, le=10)], Annotated[float, Field(gt=0, le=10)]] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0, le=45)  # degrees
    p: Prob = 1.0


class HflipAug(Spec):
    type: Literal["hflip"]
    p: Prob = 0.5


class VflipAug(Spec):
    type: Literal["vflip"]
    p: Prob = 0.5


class InvertAug(Spec):
    type: Literal["invert"]  # x -> -x on standardized data (1 - x on [0, 1] data)
    p: Prob = 0.5


class CropAug(Spec):
    type: Literal["crop"]  # pad by `padding` pixels, then crop back to the original size at a random place
    padding: int = Field(2, ge=1, le=64)
    p: Prob = 1.0


class GaussianNoiseAug(Spec):
    type: Literal["gaussian_noise"]
    std: float = Field(0.05, ge=0, le=10)
    p: Prob = 1.0


class PcaColorAug(Spec):
    type: Literal["pca_color"]  # AlexNet's colour noise along the principal components of the training pixels
    std: float = Field(0.1, ge=0, le=10)


AugmentationSpec = Annotated[Union[AffineAug, HflipAug, VflipAug, InvertAug, CropAug, GaussianNoiseAug, PcaColorAug],
                             Field(discriminator="type")]


class TtaSpec(Spec):
    """Test-time augmentation: test predictions averaged over the image, its flip, and shifted crops."""

    flips: bool = True
    crops: int = Field(0, ge=0, le=16)  # shift by this many pixels in the four directions (0: no crops)


# ---------------------------------------------------------------------------------------------------------------------
# Training and resources
# ---------------------------------------------------------------------------------------------------------------------


class EarlyStoppingSpec(Spec):
    monitor: str = Field("val_loss", max_length=64)
    mode: Literal["min", "max"] | None = None  # None: min for losses and errors, max for accuracy and r2
    patience: int = Field(10, ge=0, le=100_000)  # epochs without improvement before stopping
    min_delta: float = Field(0.0, ge=0)  # an improvement smaller than this does not count
    restore_best: bool = True

    @property
    def resolved_mode(self) -> str:
        return improves(self.monitor, self.mode)


def improves(monitor: str, mode: str | None = None) -> str:
    """Which way a monitored metric gets better: `mode` if given, else max for accuracy and R², min for the rest."""
    return mode or ("max" if monitor.endswith(("accuracy", "r2")) else "min")


class TrainingSpec(Spec):
    epochs: int = Field(10, gt=0, le=100_000)
    batch_size: Annotated[int, Field(gt=0, le=1_000_000)] | Literal["full"] = 32  # full: the whole split
    seed: int = Field(0, ge=0, le=2**32 - 1)
    early_stopping: EarlyStoppingSpec | None = None
    log_every_steps: int = Field(10, gt=0, le=1_000_000)  # train loss is reported every this many steps
    keep_checkpoints: int = Field(2, ge=1, le=100)  # latest checkpoints kept, besides the best
    # A checkpoint when this many seconds passed since the last (0: after every epoch); also on a new best when the
    # last best checkpoint is older than that, after the last epoch or an early stop, and where the run is
    # interrupted (a cancel, a pruner, a worker's SIGTERM or drain: mid-epoch, resumed exactly at that batch).
    checkpoint_every_seconds: float = Field(30, ge=0, le=86_400)
    # Each batch is split into this many micro-batches whose gradients add up before one optimizer step: the same
    # effective batch with a fraction of the activation memory (set by the out-of-memory retry, or by hand).
    accumulate_steps: int = Field(1, ge=1, le=1024)
    # auto: bf16 autocast on a GPU that computes in bf16 (compute capability 8.0 on), fp32 elsewhere. bf16 also works
    # on CPU, where it is rarely faster.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"  # auto: for image data (models with convolutions)
    compile: bool = False  # torch.compile; a worker's warm process reuses the compiled graph of the same architecture
    # device: the whole dataset lives on the training device (batches by indexing); host: it stays in (pinned) host
    # memory and each batch is copied over, for data that does not fit; stream: an uploaded table is read from shards
    # on disk with a fixed memory budget (TRAINQ_DATA_MEMORY_MB), in an order drawn from (seed, epoch); auto: an
    # uploaded table larger than the budget streams, other data goes on the device unless it would take more than a
    # quarter of the GPU's free memory.
    data_placement: Literal["auto", "device", "host", "stream"] = "auto"


POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class InferenceSpec(Spec):
    """Approximate Bayesian inference: predictions average Monte Carlo samples of the posterior (variational,
    mc_dropout), or the members of a deep ensemble (ensemble: `members` networks from seeds training.seed,
    training.seed + 1, ..., trained together as one stacked model, their predictions a uniform mixture)."""

    method: Literal["variational", "mc_dropout", "ensemble"]
    samples: int = Field(50, ge=1, le=1000)  # Monte Carlo samples for the test split and predictions
    val_samples: int = Field(10, ge=1, le=1000)  # for the per-epoch validation metrics
    kl_weight: float = Field(1.0, ge=0, le=1_000_000)  # beta: loss = mean NLL + beta * KL / N_train
    kl_warmup_epochs: int = Field(0, ge=0, le=100_000)  # beta rises linearly from beta / warmup to beta
    members: int = Field(5, ge=2, le=64)  # ensemble: how many networks
    # regression's noise: homoscedastic, fitted on the validation split or fixed; or learned per input (gaussian_nll)
    noise: Literal["validation", "fixed", "learned"] = "validation"
    noise_sigma: float | None = Field(None, gt=0, le=1e9)  # with noise: fixed, in the target's units

    @property
    def draws(self) -> int:
        """How many predictions a final answer averages: the members of an ensemble, else `samples`."""
        return self.members if self.method == "ensemble" else self.samples

    def unused(self) -> set[str]:
        return ({"kl_weight", "kl_warmup_epochs"} if self.method != "variational" else set()) | (
            {"noise_sigma"} if self.noise != "fixed" else set()) | (
            {"samples", "val_samples"} if self.method == "ensemble" else {"members"})


class ResourcesSpec(Spec):
    pool: str = Field("cpu", pattern=POOL_PATTERN)
    priority: int = Field(0, ge=-100, le=100)
    device: Literal["any", "cpu", "gpu"] = "any"  # gpu: only a GPU worker of the pool takes it; cpu: only a CPU one
    gpus: int = Field(1, ge=1, le=16)  # > 1: data-parallel (DDP) over this many GPUs of one worker

    @model_validator(mode="after")
    def _gpus_need_a_gpu(self):
        if self.gpus > 1 and self.device == "cpu":
            raise ValueError("gpus > 1 trains on several GPUs: device must be gpu or any")
        return self


class JobSpec(Spec):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")  # no control characters
    dataset: DatasetSpec
    model: ModelSpec
    loss: LossSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = NoScheduleSpec(type="none")
    regularization: RegularizationSpec = RegularizationSpec()
    augmentation: list[AugmentationSpec] = Field(default_factory=list, max_length=32)  # image data, training only
    test_time_augmentation: TtaSpec | None = None
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    inference: InferenceSpec | None = None  # absent: a point estimate
    # When the job succeeds: its model becomes the next version of this registered model (a worker exports it)
    register_as: str | None = Field(None, pattern=MODEL_NAME)


def names_of(union: Any) -> set[str]:
    """Return the `type` names of a discriminated union, for the registries to match."""
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields["type"].annotation)[0] for m in members}


LAYER_TYPES = names_of(LayerSpec)
INIT_TYPES = names_of(InitSpec)
AUGMENTATION_TYPES = names_of(AugmentationSpec)
LOSS_TYPES = names_of(LossSpec)
OPTIMIZER_TYPES = names_of(OptimizerSpec)
SCHEDULE_TYPES = names_of(ScheduleSpec)
_TAGS = LAYER_TYPES | LOSS_TYPES | OPTIMIZER_TYPES | SCHEDULE_TYPES | INIT_TYPES | AUGMENTATION_TYPES
_UNIONS = {"loss", "optimizer", "schedule", "init"}

# ---------------------------------------------------------------------------------------------------------------------
# Validation with paths, and the dry run
# ---------------------------------------------------------------------------------------------------------------------


def format_path(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into `model.layers[1].units`, leaving out union tags and branch labels."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, str) and _BRANCH.match(part):
            continue  # which member of a plain union (int | "full") failed: the message says it
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 1] in _UNIONS):
            continue  # the tag of a discriminated union: the message already says which member failed
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def errors_from(exc: ValidationError) -> list[FieldError]:
    """One error per path; where a union's members each failed, their messages are joined with 'or'. An unknown field
    names the fields allowed there, and the one it was probably meant to be."""
    merged: dict[str, list[str]] = {}
    for e in exc.errors(include_url=False):
        message = message_of(e)
        if e["type"] == "extra_forbidden":
            message = unknown_field(tuple(e["loc"]), JobSpec)
        elif e["type"] == "missing" and len(e["loc"]) == 1 and e["loc"][0] in MISSING_HINTS:
            message = f"required: add it, for example {e['loc'][0]}: {MISSING_HINTS[e['loc'][0]]}"
        messages = merged.setdefault(format_path(tuple(e["loc"])), [])
        if message not in messages:
            messages.append(message)
    return [FieldError(path, " or ".join(messages)) for path, messages in merged.items()]


def message_of(error: dict) -> str:
    """A pydantic error's message; one of our validators' in its own words, without pydantic's "Value error, "."""
    if error["type"] == "value_error" and error.get("ctx", {}).get("error") is not None:
        return str(error["ctx"]["error"])
    return error["msg"]


MISSING_HINTS = {"name": "my-run", "dataset": "{name: digits}", "model": "{layers: [{type: dense, units: 10}]}",
                 "loss": "{type: cross_entropy}", "optimizer": "{type: adam, lr: 0.001}"}

# What users of other tools write for our names (Keras, PyTorch, Lightning), where spelling alone would not find them.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "units_out": "units",
           "out_features": "units", "filters": "out_channels", "kernel_size": "kernel", "activation": "fn",
           "rate": "p", "weight_decay": "l2"}


def unknown_field(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    """'unknown field epoch; did you mean epochs?' from the fields of the model at that place of the spec."""
    import difflib

    name = str(loc[-1])
    allowed = sorted(fields_at(loc[:-1], root))
    if not allowed:
        return f"unknown field {name!r}"
    near = ([ALIASES[name]] if ALIASES.get(name) in allowed
            else difflib.get_close_matches(name, allowed, n=1, cutoff=0.6))
    hint = f"did you mean {near[0]!r}?" if near else f"the fields here are {', '.join(allowed)}"
    return f"unknown field {name!r}; {hint}"


def fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> set[str]:
    """The field names of the spec model(s) found by following a pydantic location from `root`: field names, list
    indices, and the tags that pick a member of a discriminated union."""
    found: list[Any] = [root]
    for part in loc:
        step: list[Any] = []
        for kind in _concrete(found):
            if isinstance(part, int) and get_origin(kind) is list:
                step += get_args(kind)[:1]
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                if isinstance(part, str) and part in kind.model_fields:
                    step.append(kind.model_fields[part].annotation)
                elif "type" in kind.model_fields and part in get_args(kind.model_fields["type"].annotation):
                    step.append(kind)  # the tag of a union member: stay on that member
        found = step
    return {name for kind in _concrete(found) if isinstance(kind, type) and issubclass(kind, BaseModel)
            for name in kind.model_fields}


def _concrete(kinds: list[Any]) -> list[Any]:
    """Unwrap Annotated, Optional and unions down to classes and list[...] types."""
    out: list[Any] = []
    for kind in kinds:
        origin = get_origin(kind)
        if origin is Annotated:
            out += _concrete([get_args(kind)[0]])
        elif origin is Union or origin is types.UnionType:
            out += _concrete(list(get_args(kind)))
        else:
            out.append(kind)
    return out


CLASSIFICATION_METRICS = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "train_loss")
REGRESSION_METRICS = ("val_loss", "val_mse", "val_rmse", "val_mae", "val_r2", "train_loss")
BAYES_CLASSIFICATION_METRICS = ("val_nll", "val_ece", "val_brier", "train_kl")  # with an inference block
BAYES_REGRESSION_METRICS = ("val_nll", "val_coverage95", "val_coverage68", "val_width95", "val_crps", "train_kl")


@dataclass
class LayerPlan:
    index: int
    type: str
    output_shape: list[int]
    params: int


@dataclass
class Plan:
    """What a dry run tells: shapes, parameters, memory, before anything is queued."""

    input_shape: list[int]
    output_shape: list[int]
    task: str  # classification | regression
    layers: list[LayerPlan] = field(default_factory=list)
    params: int = 0
    memory_bytes: int = 0
    flops_per_example: int = 0  # multiply-adds of one forward pass (a conv's weights count once per output pixel)
    warnings: list[dict[str, str]] = field(default_factory=list)  # valid, but likely not what the user wants
    members: int = 0  # an ensemble's networks, all counted in params, memory and flops (0: one network)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "task": self.task,
            "layers": [vars(layer) for layer in self.layers],
            "params": self.params,
            "memory_bytes": self.memory_bytes,
            "flops_per_example": self.flops_per_example,
            "warnings": self.warnings,
            "members": self.members,
        }


def train_rows(spec: JobSpec) -> int:
    ds = spec.dataset
    if ds.info().fixed_size == 4:
        return 4
    return max(1, ds.size() - round(ds.size() * ds.val_fraction) - round(ds.size() * ds.test_fraction))


def batch_size(spec: JobSpec) -> int:
    """The batch size in rows: "full" and sizes above the training split mean the whole split."""
    rows = train_rows(spec)
    size = spec.training.batch_size
    return rows if size == "full" else min(size, rows)


def input_shape(spec: JobSpec) -> Shape:
    """One example's shape as the spec tells it. A one-hot column's width is known only once the data is loaded,
    so the dry run counts it as one column; the engine builds the model from the loaded data's shape."""
    return spec.dataset.info().shape


def plan(spec: JobSpec) -> Plan:
    """Infer shapes, count parameters and estimate memory; raise SpecError naming the field at fault."""
    info = spec.dataset.info()
    shape = input_shape(spec)
    task = "regression" if info.classes is None else "classification"
    result = Plan(input_shape=list(shape), output_shape=[], task=task)
    activations = 0
    if info.embeddings:  # an uploaded table's embedded categories, ahead of the first layer
        params = sum(rows * dim for _, rows, dim in info.embeddings)
        result.layers.append(LayerPlan(-1, "embedding", list(shape), params))
        result.params += params
    for i, layer in enumerate(spec.model.layers):
        try:
            out = layer.output_shape(shape)
        except ShapeError as exc:
            message = str(exc)
            if spec.dataset.name == "digits" and not spec.dataset.as_images and "image input" in message:
                message += "; digits comes as 1x8x8 images too: set dataset.as_images: true"
            raise SpecError([FieldError(f"model.layers[{i}]", message)]) from None
        params = layer.param_count(shape)
        result.layers.append(LayerPlan(i, layer.type, list(out), params))
        result.params += params
        result.flops_per_example += params * (math.prod(out[1:]) if len(out) == 3 else 1)
        activations += math.prod(out)
        shape = out
    result.output_shape = list(shape)
    copies = ensemble_members(spec)
    result.members = copies
    if copies:  # an ensemble stacks `members` copies of the network: each counts, in parameters and work
        for layer_plan in result.layers:
            layer_plan.params *= copies
        result.params *= copies
        result.flops_per_example *= copies
        activations *= copies

    errors = _check_output(spec, shape, info) + _check_fields(spec, task, info)
    if errors:
        raise SpecError(errors)

    optimizer_copies = {"adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1, "momentum": 1, "nesterov": 1,
                        "lbfgs": 2 * getattr(spec.optimizer, "history_size", 0)}.get(spec.optimizer.type, 0)
    if spec.optimizer.type == "sgd" and spec.optimizer.momentum:
        optimizer_copies = 1
    fp32 = 4
    features = math.prod(info.shape)
    result.memory_bytes = fp32 * (
        result.params * (2 + optimizer_copies + 1)  # weights, gradients, optimizer state, best-weights copy
        + 2 * -(-batch_size(spec) // spec.training.accumulate_steps) * (activations + features)  # activations kept for backward, and their gradients
    ) + (0 if spec.training.data_placement == "stream"  # a shard at a time, within the worker's data budget
         else spec.dataset.size() * spec.dataset.stored_bytes())  # the whole dataset lives on the device
    if spec.optimizer.type == "lbfgs" and batch_size(spec) < train_rows(spec):
        result.warnings.append({"path": "training.batch_size", "message": (
            f"L-BFGS on mini-batches of {batch_size(spec)} of {train_rows(spec)} rows: its curvature estimate sees a "
            "different batch at every step and the loss often ends in NaN; use batch_size: full")})
    return result


def _check_output(spec: JobSpec, shape: Shape, info: DatasetInfo) -> list[FieldError]:
    n = len(spec.model.layers)
    last_path = f"model.layers[{n - 1}]"
    last = spec.model.layers[-1]
    loss = spec.loss.type
    if len(shape) != 1:
        return [FieldError(last_path, f"the model must end in a flat output, got shape {list(shape)}")]
    width = shape[0]
    name = spec.dataset.name
    if loss == "mdn_nll":
        if info.classes is not None:
            return [FieldError("loss.type", f"mdn_nll is for regression; {name} is classification")]
        if last.type != "mdn":
            return [FieldError(last_path, "mdn_nll needs the model to end in an mdn layer")]
        if last.outputs != 1:
            return [FieldError(f"{last_path}.outputs", f"{name} has 1 target, the mdn layer has {last.outputs}")]
        return []
    if last.type == "mdn":
        return [FieldError("loss.type", "an mdn head needs the mdn_nll loss")]
    if loss == "gaussian_nll":
        if info.classes is not None:
            return [FieldError("loss.type", f"gaussian_nll is for regression; {name} is classification")]
        if width != 2:
            return [FieldError(last_path, f"gaussian_nll needs 2 output units (the mean and the noise), got {width}")]
        return []
    if info.classes is None:
        if loss not in ("mse", "mae", "huber"):
            return [FieldError("loss.type", f"{loss} needs a classification dataset; {name} is regression")]
        if width != 1:
            return [FieldError(last_path, f"regression on {name} needs 1 output unit, got {width}")]
        return []
    k = info.classes
    if loss in ("bce", "perceptron"):
        if k != 2:
            return [FieldError("loss.type", f"{loss} is for two classes; {name} has {k}")]
        if width != 1:
            return [FieldError(last_path, f"{loss} needs 1 output unit, got {width}")]
    elif loss in ("cross_entropy", "nll", "hinge") and width != k:
        return [FieldError(last_path, f"{loss} on {name} needs {k} output units, got {width}")]
    elif loss in ("mse", "mae", "huber") and width not in (1, k):
        return [FieldError(last_path, f"{loss} on {k} classes needs 1 unit or {k} (one-hot), got {width}")]
    if loss == "nll" and not (last.type == "activation" and last.fn == "softmax"):
        return [FieldError(last_path, "nll takes probabilities: end the model with {type: activation, fn: softmax}")]
    weights = getattr(spec.loss, "class_weights", None)
    if weights is not None and len(weights) != k:
        return [FieldError("loss.class_weights", f"{name} has {k} classes, got {len(weights)} weights")]
    return []


def _check_fields(spec: JobSpec, task: str, info: DatasetInfo) -> list[FieldError]:
    errors = []
    ds = spec.dataset
    if info.fixed_size is None or info.fixed_size > 4:
        if ds.val_fraction + ds.test_fraction > 0.9:
            errors.append(FieldError("dataset.val_fraction", "val_fraction + test_fraction must leave 10% for training"))
    if ds.name == "shapes" and ds.classes > len(SHAPE_CLASSES):
        errors.append(FieldError("dataset.classes", f"shapes has at most {len(SHAPE_CLASSES)} classes"))
    if ds.preprocess.one_hot and ds.table_kind() == "table":
        errors.append(FieldError("dataset.preprocess.one_hot", "an uploaded table's columns are coded by name: "
                                                               "dataset.columns: {plan: category}"))
    for i, column in enumerate(ds.preprocess.one_hot if ds.table_kind() != "table" else []):
        if info.is_image or column >= info.shape[0]:
            errors.append(FieldError(f"dataset.preprocess.one_hot[{i}]",
                                     f"no column {column} in {ds.name} ({info.shape[0]} columns)"
                                     if not info.is_image else "one-hot codes are for tabular data"))
    if not info.is_image:
        for i, _ in enumerate(spec.augmentation):
            errors.append(FieldError(f"augmentation[{i}]", f"augmentation needs image data; {ds.name} is tabular"))
        if spec.test_time_augmentation is not None:
            errors.append(FieldError("test_time_augmentation", f"needs image data; {ds.name} is tabular"))
    errors += _check_inference(spec, task) + _check_stream(spec)
    stopping = spec.training.early_stopping
    if stopping is not None:
        allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
        if spec.inference is not None:
            allowed = allowed + (BAYES_CLASSIFICATION_METRICS if task == "classification" else BAYES_REGRESSION_METRICS)
        if stopping.monitor not in allowed:
            errors.append(FieldError("training.early_stopping.monitor",
                                     f"unknown metric {stopping.monitor!r}; one of {', '.join(allowed)}"))
        if ds.val_fraction == 0 and stopping.monitor.startswith("val_") and (info.fixed_size or 5) > 4:
            errors.append(FieldError("training.early_stopping.monitor", "needs a validation split (val_fraction > 0)"))
    return errors


def _check_stream(spec: JobSpec) -> list[FieldError]:
    """What a streamed table cannot do: it trains in one process, on a point estimate, a shard at a time."""
    ds, t = spec.dataset, spec.training
    errors = []
    if ds.split_column is not None:
        names = [c["name"] for c in ds.uploaded.profile["columns"]] if ds.table_kind() == "table" else []
        if ds.split_column not in names:
            errors.append(FieldError("dataset.split_column", f"no column {ds.split_column!r} in the table"))
        elif t.data_placement != "stream":
            errors.append(FieldError("dataset.split_column", "a split column splits a streamed table: set "
                                                             "training.data_placement: stream"))
    if t.data_placement != "stream":
        return errors
    path = "training.data_placement"
    if ds.table_kind() != "table":
        errors.append(FieldError(path, "stream reads an uploaded table from shards; other data lives in memory "
                                       "(device or host)"))
    if spec.resources.gpus > 1:
        errors.append(FieldError("resources.gpus", "a streamed table trains on one device"))
    if spec.inference is not None:
        errors.append(FieldError("inference", "a streamed table trains a point estimate; remove the inference block"))
    if t.batch_size == "full" or spec.optimizer.type == "lbfgs":
        errors.append(FieldError("training.batch_size", "a streamed table trains in mini-batches (no full batch, no "
                                                        "lbfgs)"))
    return errors


def _check_inference(spec: JobSpec, task: str) -> list[FieldError]:
    """What each method needs of the model, and what it cannot be combined with."""
    errors = []
    inference = spec.inference
    bayes = [i for i, layer in enumerate(spec.model.layers) if layer.type in BAYES_LAYERS]
    if inference is None or inference.method != "variational":
        errors += [FieldError(f"model.layers[{i}].type", "a Bayesian layer trains only with inference.method: "
                                                         "variational (add an inference block)") for i in bayes]
    if inference is None:
        if spec.loss.type == "gaussian_nll":
            errors.append(FieldError("loss.type", "gaussian_nll learns the noise of a Bayesian regression: add "
                                                  "inference: {method: ensemble, noise: learned} (or mc_dropout, "
                                                  "variational); a point estimate with a spread: an mdn head with "
                                                  "components: 1"))
        return errors
    if inference.method == "variational":
        if not bayes:
            errors.append(FieldError("inference.method", "variational needs a Bayesian layer: dense_bayes or "
                                                         "conv2d_bayes in model.layers"))
        if spec.optimizer.type == "lbfgs":
            errors.append(FieldError("optimizer.type", "lbfgs needs a deterministic loss; a variational loss is "
                                                       "sampled: use adam or sgd"))
    if inference.method == "mc_dropout" and not any(layer.type == "dropout" and layer.p > 0
                                                    for layer in spec.model.layers):
        errors.append(FieldError("inference.method", "mc_dropout samples the dropout layers: add a "
                                                     "{type: dropout, p: 0.1} layer (p > 0)"))
    if spec.model.layers[-1].type == "mdn":
        errors.append(FieldError("inference", "a mixture density head already gives a predictive distribution; "
                                              "remove the inference block or the mdn layer"))
    if task == "classification" and spec.loss.type not in ("cross_entropy", "bce", "nll"):
        errors.append(FieldError("loss.type", f"{spec.loss.type} gives no class probabilities to average over "
                                              "samples: use cross_entropy (or bce, nll)"))
    if spec.test_time_augmentation is not None:
        errors.append(FieldError("test_time_augmentation", "cannot be combined with an inference block"))
    if inference.method == "ensemble":
        if spec.optimizer.type == "lbfgs":
            errors.append(FieldError("optimizer.type", "an ensemble's members train as one stacked model with an "
                                                       "element-wise optimizer; lbfgs couples them: use adam or sgd"))
        limit = stacking_limit(spec)
        if limit is not None:
            errors.append(FieldError(limit[0], f"{limit[1]}; an ensemble's members train stacked as one model, "
                                               "so remove it or use method mc_dropout"))
    if inference.noise == "learned" and spec.loss.type != "gaussian_nll":
        errors.append(FieldError("inference.noise", "learned noise needs loss.type: gaussian_nll and 2 output units "
                                                    "(the mean and the noise)"))
    if inference.noise != "learned" and spec.loss.type == "gaussian_nll":
        errors.append(FieldError("inference.noise", "gaussian_nll learns the noise: set noise: learned"))
    if inference.noise == "fixed" and inference.noise_sigma is None:
        errors.append(FieldError("inference.noise_sigma", "noise: fixed needs noise_sigma, in the target's units"))
    return errors


def ensemble_members(spec: JobSpec) -> int:
    """How many networks the run trains: an ensemble's members, else 0 (one network, not stacked)."""
    inference = spec.inference
    return inference.members if inference is not None and inference.method == "ensemble" else 0


STACKED_SCHEDULES = ("none", "step", "exponential", "cosine", "warmup")  # closed-form in the epoch alone


def stacking_limit(spec: JobSpec) -> tuple[str, str] | None:
    """(field path, why) when this spec's network cannot train as one of several members stacked in one module (a
    pack of trials, the members of an ensemble); None when it can."""
    t = spec.training
    if t.data_placement == "stream":
        return "training.data_placement", "streamed data is read in one order per run, not stacked"
    embedded = [name for name, c in spec.dataset.columns.items() if c.encoding == "embedding" and c.type != "number"]
    if embedded and spec.dataset.name == "upload":
        return f"dataset.columns.{embedded[0]}", "embedded categories are not stacked"
    if spec.augmentation:
        return "augmentation", "image augmentation draws from one generator for the whole batch and is not stacked"
    if spec.schedule.type not in STACKED_SCHEDULES:
        return "schedule.type", f"{spec.schedule.type} is not stacked (stacked: {', '.join(STACKED_SCHEDULES)})"
    if t.accumulate_steps > 1:
        return "training.accumulate_steps", "gradient accumulation is not stacked"
    if t.compile:
        return "training.compile", "compiled runs are not stacked"
    if spec.resources.gpus > 1:
        return "resources.gpus", "data-parallel runs are not stacked"
    for i, layer in enumerate(spec.model.layers):
        if layer.type in BAYES_LAYERS:
            return f"model.layers[{i}].type", "Bayesian layers are not stacked"
        if layer.type == "pool" and layer.kind == "stochastic":
            return f"model.layers[{i}].kind", "stochastic pooling is not stacked"
    return None


def spec_rows(spec: BaseModel, prefix: str = "") -> list[tuple[str, Any, bool]]:
    """A spec as (dotted.path[index], value, whether it is the field's default) rows, leaving out the fields that do not
    apply where they stand (`unused`): what a run page shows of the spec it ran."""
    rows: list[tuple[str, Any, bool]] = []
    unused = spec.unused() if hasattr(spec, "unused") else set()
    for name, info in type(spec).model_fields.items():
        if name in unused:
            continue
        value, path = getattr(spec, name), f"{prefix}.{name}" if prefix else name
        if isinstance(value, BaseModel):
            rows += spec_rows(value, path)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                rows += spec_rows(item, f"{path}[{i}]")
        elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            for key, item in value.items():  # dataset.columns: a table's columns by name
                rows += spec_rows(item, f"{path}.{key}")
        else:
            default = info.get_default(call_default_factory=True) if not info.is_required() else object()
            rows.append((path, list(value) if isinstance(value, tuple) else value,
                         name != "type" and value == default))
    return rows


def parse_spec(data: Any, uploads: Callable[[str], Uploaded | None] | None = None) -> JobSpec:
    """Validate a decoded spec; raise SpecError listing every field at fault.

    `uploads` looks up an uploaded dataset version by its reference, NAME or NAME@VERSION (the service passes one).
    """
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = errors_from(exc)
        raise SpecError(errors + _plan_errors_besides(data, errors, uploads)) from None
    if spec.dataset.name == "upload" and uploads is not None:
        spec.dataset.resolve(uploads(spec.dataset.upload))
    plan(spec)
    return spec


SHAPING = {"dataset", "model", "loss", "(root)"}  # the sections a dry run's shapes and outputs depend on
PLACEHOLDERS = {"optimizer": {"type": "adam"}, "name": "spec"}  # for required sections; the others take defaults


def _plan_errors_besides(data: Any, errors: list[FieldError], uploads) -> list[FieldError]:
    """The dry run's errors (shapes, output units), found despite schema errors elsewhere, so that every error is
    listed at once: a bad optimizer must not hide that the last layer has the wrong width. Only where the schema
    errors are outside the sections the plan reads; those are replaced by a placeholder or their defaults."""
    broken = {re.split(r"[.\[]", e.path)[0] for e in errors}
    if not isinstance(data, dict) or broken & SHAPING:
        return []
    patched = {k: v for k, v in data.items() if k not in broken}
    patched.update({k: PLACEHOLDERS[k] for k in broken if k in PLACEHOLDERS})
    try:
        spec = JobSpec.model_validate(patched)
        if spec.dataset.name == "upload" and uploads is not None:
            spec.dataset.resolve(uploads(spec.dataset.upload))
        plan(spec)
    except (ValidationError, SpecError) as exc:
        found = exc.errors if isinstance(exc, SpecError) else []
        return [e for e in found if re.split(r"[.\[]", e.path)[0] not in broken]
    return []
