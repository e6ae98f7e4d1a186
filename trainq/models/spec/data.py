"""The dataset section: built-in sets and generators, and uploaded versions (arrays, tables by column, images)
planned from what the service knows of them, without reading their files."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from trainq.models.spec.base import FieldError, Spec, SpecError


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
GENERATORS = ("moons", "circles", "spirals", "blobs", "shapes", "inverse_sine", "gap_sine", "adding")
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
    sequence_length: int = Field(50, ge=2, le=10_000)  # adding: steps of (value, marker) per example
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
        if self.name == "adding":
            return DatasetInfo((self.sequence_length, 2), None)
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
        uses = {"n_samples": self.name in GENERATORS, "noise": self.name in GENERATORS and self.name != "adding",
                "sequence_length": self.name == "adding",
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
