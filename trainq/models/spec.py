"""The job spec: the one pydantic model that the API validates with, the database stores and the worker runs.

This module imports pydantic only, so the service can validate and dry-run a spec without importing torch.
Shape inference, parameter counts and the memory estimate are plain arithmetic on the spec.

Adding a layer, loss or optimizer is one spec class here (with its shape arithmetic, for layers) and one
builder registered under the same name in the torch side (`layers.py`, `losses.py`, `optimizers.py`);
a test asserts the two sets of names are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# ---------------------------------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------------------------------


class Spec(BaseModel):
    """Base of every spec: unknown fields are errors, and NaN or Infinity is refused everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=10_000, frozen=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What the service must know about a dataset to check a spec, without loading it."""

    features: int
    classes: int | None  # None for regression
    fixed_size: int | None = None  # the logic gates are their truth table, nothing more


LOGIC_GATES = ("or", "and", "xor")
GENERATORS = ("moons", "circles", "spirals", "blobs")
SKLEARN_SETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
DATASET_NAMES = LOGIC_GATES + GENERATORS + SKLEARN_SETS

_BUILTIN_INFO = {
    "or": DatasetInfo(2, 2, 4),
    "and": DatasetInfo(2, 2, 4),
    "xor": DatasetInfo(2, 2, 4),
    "moons": DatasetInfo(2, 2),
    "circles": DatasetInfo(2, 2),
    "digits": DatasetInfo(64, 10, 1797),
    "iris": DatasetInfo(4, 3, 150),
    "wine": DatasetInfo(13, 3, 178),
    "breast_cancer": DatasetInfo(30, 2, 569),
    "diabetes": DatasetInfo(10, None, 442),
}


class PreprocessSpec(Spec):
    scale: Literal["zscore", "minmax", "none"] = "zscore"  # statistics from the training split only


class DatasetSpec(Spec):
    name: Literal[DATASET_NAMES]  # type: ignore[valid-type]
    n_samples: int = Field(1000, ge=8, le=1_000_000)  # generators only
    noise: float = Field(0.1, ge=0, le=10)  # generators only
    classes: int = Field(3, ge=2, le=100)  # spirals and blobs only
    features: int = Field(2, ge=1, le=10_000)  # blobs only
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    preprocess: PreprocessSpec = PreprocessSpec()

    def info(self) -> DatasetInfo:
        if self.name == "spirals":
            return DatasetInfo(2, self.classes)
        if self.name == "blobs":
            return DatasetInfo(self.features, self.classes)
        return _BUILTIN_INFO[self.name]

    def size(self) -> int:
        return self.info().fixed_size or self.n_samples


# ---------------------------------------------------------------------------------------------------------------------
# Model: each layer knows its output shape and parameter count
# ---------------------------------------------------------------------------------------------------------------------

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given."""


class DenseSpec(Spec):
    type: Literal["dense"]
    units: int = Field(gt=0, le=65_536)
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ShapeError(f"dense needs a flat input, got shape {list(shape)}; add a flatten layer first")
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return shape[0] * self.units + (self.units if self.bias else 0)


class ActivationSpec(Spec):
    type: Literal["activation"]
    fn: Literal["sigmoid", "tanh", "relu"]

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0


class DropoutSpec(Spec):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1)

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0


LayerSpec = Annotated[Union[DenseSpec, ActivationSpec, DropoutSpec], Field(discriminator="type")]

INIT_NAMES = ("zeros", "normal", "uniform", "xavier", "he", "lecun")


class ModelSpec(Spec):
    init: Literal[INIT_NAMES] = "he"  # type: ignore[valid-type]
    layers: list[LayerSpec] = Field(min_length=1, max_length=1000)


# ---------------------------------------------------------------------------------------------------------------------
# Loss, optimizer, schedule, regularization
# ---------------------------------------------------------------------------------------------------------------------


class MseLossSpec(Spec):
    type: Literal["mse"]


class BceLossSpec(Spec):
    type: Literal["bce"]  # binary cross entropy on logits: the last layer has one unit and no sigmoid


class CrossEntropyLossSpec(Spec):
    type: Literal["cross_entropy"]  # softmax + negative log-likelihood on logits
    label_smoothing: float = Field(0.0, ge=0, lt=1)


LossSpec = Annotated[Union[MseLossSpec, BceLossSpec, CrossEntropyLossSpec], Field(discriminator="type")]


class SgdSpec(Spec):
    type: Literal["sgd"]
    lr: float = Field(0.01, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SgdSpec":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class AdamSpec(Spec):
    type: Literal["adam"]
    lr: float = Field(0.001, gt=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)


OptimizerSpec = Annotated[Union[SgdSpec, AdamSpec], Field(discriminator="type")]


class NoScheduleSpec(Spec):
    type: Literal["none"]


class CosineScheduleSpec(Spec):
    type: Literal["cosine"]  # anneals lr to min_lr over the run's epochs
    min_lr: float = Field(0.0, ge=0)


class StepScheduleSpec(Spec):
    type: Literal["step"]  # multiplies lr by gamma every step_size epochs
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)


ScheduleSpec = Annotated[Union[NoScheduleSpec, CosineScheduleSpec, StepScheduleSpec], Field(discriminator="type")]


class RegularizationSpec(Spec):
    l2: float = Field(0.0, ge=0, le=10)  # coupled: adds l2 * theta to the gradient, as in the course's update rule
    l1: float = Field(0.0, ge=0, le=10)  # adds l1 * sign(theta) to the gradient
    max_grad_norm: float | None = Field(None, gt=0)  # clip the global gradient norm


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
        if self.mode:
            return self.mode
        return "max" if self.monitor.endswith(("accuracy", "r2")) else "min"


class TrainingSpec(Spec):
    epochs: int = Field(10, gt=0, le=100_000)
    batch_size: int = Field(32, gt=0, le=1_000_000)  # a batch larger than the training split is the whole split
    seed: int = Field(0, ge=0, le=2**32 - 1)
    early_stopping: EarlyStoppingSpec | None = None
    log_every_steps: int = Field(10, gt=0, le=1_000_000)  # train loss is reported every this many steps
    keep_checkpoints: int = Field(2, ge=1, le=100)  # latest checkpoints kept, besides the best


POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ResourcesSpec(Spec):
    pool: str = Field("cpu", pattern=POOL_PATTERN)
    priority: int = Field(0, ge=-100, le=100)


class JobSpec(Spec):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")  # no control characters
    dataset: DatasetSpec
    model: ModelSpec
    loss: LossSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = NoScheduleSpec(type="none")
    regularization: RegularizationSpec = RegularizationSpec()
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()


def names_of(union: Any) -> set[str]:
    """Return the `type` names of a discriminated union, for the registries to match."""
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields["type"].annotation)[0] for m in members}


LAYER_TYPES = names_of(LayerSpec)
LOSS_TYPES = names_of(LossSpec)
OPTIMIZER_TYPES = names_of(OptimizerSpec)
SCHEDULE_TYPES = names_of(ScheduleSpec)
_TAGS = LAYER_TYPES | LOSS_TYPES | OPTIMIZER_TYPES | SCHEDULE_TYPES

# ---------------------------------------------------------------------------------------------------------------------
# Validation with paths, and the dry run
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


def format_path(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into `model.layers[1].units`, leaving out union tags."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 1] in {"loss", "optimizer", "schedule"}):
            continue  # the tag of a discriminated union: the message already says which member failed
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def errors_from(exc: ValidationError) -> list[FieldError]:
    return [FieldError(format_path(tuple(e["loc"])), e["msg"]) for e in exc.errors(include_url=False)]


CLASSIFICATION_METRICS = ("val_loss", "val_accuracy", "train_loss")
REGRESSION_METRICS = ("val_loss", "val_mse", "val_rmse", "val_mae", "val_r2", "train_loss")


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "task": self.task,
            "layers": [vars(layer) for layer in self.layers],
            "params": self.params,
            "memory_bytes": self.memory_bytes,
        }


def plan(spec: JobSpec) -> Plan:
    """Infer shapes, count parameters and estimate memory; raise SpecError naming the field at fault."""
    info = spec.dataset.info()
    shape: Shape = (info.features,)
    task = "regression" if info.classes is None else "classification"
    result = Plan(input_shape=list(shape), output_shape=[], task=task)
    activations = 0
    for i, layer in enumerate(spec.model.layers):
        try:
            out = layer.output_shape(shape)
        except ShapeError as exc:
            raise SpecError([FieldError(f"model.layers[{i}]", str(exc))]) from None
        params = layer.param_count(shape)
        result.layers.append(LayerPlan(i, layer.type, list(out), params))
        result.params += params
        activations += math.prod(out)
        shape = out
    result.output_shape = list(shape)

    errors = _check_output(spec, shape, info) + _check_fields(spec, task, info)
    if errors:
        raise SpecError(errors)

    train_rows = max(1, int(spec.dataset.size() * (1 - spec.dataset.val_fraction - spec.dataset.test_fraction)))
    batch = min(spec.training.batch_size, train_rows)
    optimizer_copies = 2 if spec.optimizer.type == "adam" else (1 if getattr(spec.optimizer, "momentum", 0) else 0)
    fp32 = 4
    result.memory_bytes = fp32 * (
        result.params * (2 + optimizer_copies + 1)  # weights, gradients, optimizer state, best-weights copy
        + 2 * batch * (activations + info.features)  # activations kept for backward, and their gradients
        + spec.dataset.size() * (info.features + 1)  # the whole dataset lives on the device
    )
    return result


def _check_output(spec: JobSpec, shape: Shape, info: DatasetInfo) -> list[FieldError]:
    last = f"model.layers[{len(spec.model.layers) - 1}]"
    width = shape[0] if len(shape) == 1 else None
    loss = spec.loss.type
    if len(shape) != 1:
        return [FieldError(last, f"the model must end in a flat output, got shape {list(shape)}")]
    if info.classes is None:
        if loss != "mse":
            return [FieldError("loss.type", f"{loss} needs a classification dataset; {spec.dataset.name} is regression")]
        if width != 1:
            return [FieldError(last, f"regression on {spec.dataset.name} needs 1 output unit, got {width}")]
        return []
    if loss == "bce":
        if info.classes != 2:
            return [FieldError("loss.type", f"bce is for two classes; {spec.dataset.name} has {info.classes}")]
        if width != 1:
            return [FieldError(last, f"bce needs 1 output unit (a logit), got {width}")]
    elif loss == "cross_entropy" and width != info.classes:
        return [FieldError(last, f"cross_entropy on {spec.dataset.name} needs {info.classes} output units, got {width}")]
    elif loss == "mse" and width not in (1, info.classes):
        return [FieldError(last, f"mse on {info.classes} classes needs 1 unit or {info.classes} (one-hot), got {width}")]
    return []


def _check_fields(spec: JobSpec, task: str, info: DatasetInfo) -> list[FieldError]:
    errors = []
    ds = spec.dataset
    if info.fixed_size is None or info.fixed_size > 4:
        if ds.val_fraction + ds.test_fraction > 0.9:
            errors.append(FieldError("dataset.val_fraction", "val_fraction + test_fraction must leave 10% for training"))
    stopping = spec.training.early_stopping
    if stopping is not None:
        allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
        if stopping.monitor not in allowed:
            errors.append(FieldError("training.early_stopping.monitor",
                                     f"unknown metric {stopping.monitor!r}; one of {', '.join(allowed)}"))
        if ds.val_fraction == 0 and stopping.monitor.startswith("val_") and (info.fixed_size or 5) > 4:
            errors.append(FieldError("training.early_stopping.monitor", "needs a validation split (val_fraction > 0)"))
    return errors


def parse_spec(data: Any) -> JobSpec:
    """Validate a decoded spec; raise SpecError listing every field at fault."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(errors_from(exc)) from None
    plan(spec)
    return spec
