"""The whole job spec, the names of each registry's members, and a spec as rows for people."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from trainq.models.spec.base import Spec
from trainq.models.spec.data import MODEL_NAME, DatasetSpec
from trainq.models.spec.layers import InitSpec, LayerSpec
from trainq.models.spec.model import ModelSpec
from trainq.models.spec.objectives import (AugmentationSpec, LossSpec, NoScheduleSpec, OptimizerSpec, RegularizationSpec,
                                           ScheduleSpec, TtaSpec)
from trainq.models.spec.training import InferenceSpec, ResourcesSpec, TrainingSpec


PROJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
TAG_KEY = r"^[A-Za-z0-9_][A-Za-z0-9_.\-/ ]{0,99}$"  # what a filter can name: tags.team, tags.`data set`


def tag_text(value: Any) -> Any:
    """A tag's value is text, as MLflow's are; a number or a boolean written in YAML is taken as its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY)]
TagValue = Annotated[str, BeforeValidator(tag_text), StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=50)]


class JobSpec(Spec):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")  # no control characters
    project: str = Field("default", pattern=PROJECT_NAME)  # runs, sweeps and models are grouped and found by it
    tags: Tags = Field(default_factory=dict)  # key: text, searchable (tags.team = 'vision'); changeable later
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


def pinned(spec: JobSpec) -> dict:
    """The spec as stored with a job: an uploaded dataset named by its version (`churn` -> `churn@3`), so the job
    trains on exactly that data whatever is uploaded later."""
    document = spec.model_dump(mode="json")
    uploaded = spec.dataset.uploaded
    if uploaded is not None:
        document["dataset"]["upload"] = f"{uploaded.name}@{uploaded.version}"
    return document
