"""The sweep spec: a base job spec, a search space over its fields by path, a method, a budget, a pruner.

Validation is strict and names paths: a search path the job spec lacks, a range of the wrong type, or a value the
job spec would refuse is a SpecError at `search.<path>`, before any trial is queued.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from trainq.models.spec import MODEL_NAME, FieldError, JobSpec, Spec, SpecError, message_of, parse_spec, pinned

PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*)*$")
MAXIMIZE = ("accuracy", "r2", "f1", "precision", "recall")


class _Range(Spec):
    """A range of one field: `low < high`, and `0 < low` on a log scale."""

    LOG: ClassVar[bool] = False
    INTEGER: ClassVar[bool] = False

    @property
    def bounds(self) -> tuple[float, float]:
        return next(iter(self.__dict__.values()))  # each range has one field, named after its kind

    @model_validator(mode="after")
    def _ordered(self):
        low, high = self.bounds
        if self.LOG and not 0 < low:
            raise ValueError("a log range needs 0 < low")
        if not low < high:
            raise ValueError("the low end must be below the high end")
        return self


class Uniform(_Range):
    uniform: tuple[float, float]


class LogUniform(_Range):
    LOG = True
    log_uniform: tuple[float, float]


class IntUniform(_Range):
    INTEGER = True
    int_uniform: tuple[int, int]


class IntLogUniform(_Range):
    LOG, INTEGER = True, True
    int_log_uniform: tuple[int, int]


Scalar = Union[bool, int, float, str, None]


class Choice(Spec):
    choice: list[Scalar] = Field(min_length=1, max_length=256)


Distribution = Union[Uniform, LogUniform, IntUniform, IntLogUniform, Choice]


class PrunerSpec(Spec):
    type: Literal["asha", "hyperband", "median", "none"] = "none"
    min_resource: int | None = Field(None, ge=1)  # epochs before the first decision (asha, hyperband); see first_rung
    reduction_factor: int = Field(3, ge=2, le=100)  # asha, hyperband: keep the best 1/reduction_factor at each rung
    startup_trials: int = Field(5, ge=0)  # median: trials that finish before any is pruned
    warmup_epochs: int = Field(1, ge=0)  # median: epochs of a trial before it can be pruned

    def first_rung(self, epochs: int) -> int:
        """The epochs before the first decision: min_resource if given, else epochs / reduction_factor², so that about
        three rungs fit in a trial (3, 9, 27 of 30 epochs). A first decision after one epoch of a long run prunes on
        noise: it pruned 9 of 16 digits trials, one of them as good as the best."""
        if self.min_resource is not None:
            return self.min_resource
        return max(1, round(epochs / self.reduction_factor ** 2))


class SweepSpec(Spec):
    name: str = Field(min_length=1, max_length=180, pattern=r"^[^\x00-\x1f\x7f]+$")
    base: dict[str, Any]
    search: dict[Annotated[str, Field(pattern=PATH.pattern)], Distribution] = Field(min_length=1, max_length=32)
    method: Literal["grid", "random", "tpe"] = "random"
    trials: int | None = Field(None, ge=1, le=1000)  # grid: the product of the choices when not given
    parallel: int = Field(4, ge=1, le=100)
    metric: str = Field("val_loss", min_length=1, max_length=64)
    direction: Literal["minimize", "maximize"] | None = None  # default: maximize accuracy, R², F1...; else minimize
    pruner: PrunerSpec = PrunerSpec()
    seed: int = Field(0, ge=0, le=2**31 - 1)
    register_best: str | None = Field(None, pattern=MODEL_NAME)  # the best trial's model, as this model's next version
    # Trials whose specs differ only in packable fields train together as one packed model (trainq.models.packing):
    # auto packs where it was measured to pay, as many as fit; a number packs at most that many; off never packs.
    pack: Literal["auto", "off"] | int = "auto"

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, value: Any) -> Any:
        # One message for the three forms, and no YAML `yes` (a boolean) read as a pack of 1
        if value in ("auto", "off") or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"{value!r} is not a pack: auto (pack where it pays), off, or at most how many trials "
                         "train together (1 to 64)")

    @property
    def resolved_direction(self) -> str:
        if self.direction:
            return self.direction
        return "maximize" if self.metric.endswith(MAXIMIZE) else "minimize"

    @property
    def budget(self) -> int:
        if self.method == "grid":
            product = math.prod(len(d.choice) for d in self.search.values())  # type: ignore[union-attr]
            return min(product, self.trials or product)
        return self.trials or 16

    def grid(self) -> list[dict[str, Any]]:
        """The combinations of the choices in a fixed order, as many as the budget: trial n takes grid()[n]."""
        paths = list(self.search)
        choices = [self.search[p].choice for p in paths]  # type: ignore[union-attr]
        return [dict(zip(paths, values)) for values in itertools.islice(itertools.product(*choices), self.budget)]


# ---------------------------------------------------------------------------------------------------------------------
# Paths into a spec
# ---------------------------------------------------------------------------------------------------------------------


def split_path(path: str) -> list[str | int]:
    """'model.layers[1].units' -> ['model', 'layers', 1, 'units']."""
    parts: list[str | int] = []
    for piece in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", piece)
        parts.append(name)
        parts += [int(i) for i in indices if i != ""]
    return parts


def get_path(document: Any, path: str) -> Any:
    """The value at a path; KeyError when the document has no such field."""
    node = document
    for key in split_path(path):
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                raise KeyError(path)
        elif not isinstance(node, dict) or key not in node:
            raise KeyError(path)
        node = node[key]
    return node


def set_path(document: dict, path: str, value: Any) -> dict:
    """A copy of the document with the field at path set (the field must exist)."""
    out = copy.deepcopy(document)
    node: Any = out
    keys = split_path(path)
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


def apply(base: dict, params: dict[str, Any]) -> dict:
    """The base spec (with its defaults filled in) with each searched field set to the trial's value."""
    out = base
    for path, value in params.items():
        out = set_path(out, path, value)
    return out


def parse_sweep(data: Any, uploads=None) -> tuple[SweepSpec, dict]:
    """Validate a sweep; return it and its base spec with every default filled in. SpecError names each bad path."""
    if not isinstance(data, dict):
        raise SpecError([FieldError("", "a sweep must be a mapping")])
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        kinds = ("Uniform", "LogUniform", "IntUniform", "IntLogUniform", "Choice")
        raise SpecError([FieldError(".".join(str(p) for p in e["loc"] if not str(p).startswith(kinds)), message_of(e))
                         for e in exc.errors()]) from None
    try:
        base_spec: JobSpec = parse_spec(sweep.base, uploads=uploads)
    except SpecError as exc:
        raise SpecError([FieldError(f"base.{e.path}" if e.path else "base", e.message) for e in exc.errors]) from None
    base = pinned(base_spec)  # every trial on the same dataset version
    errors: list[FieldError] = []
    for path, dist in sweep.search.items():
        where = f"search.{path}"
        try:
            current = get_path(base, path)
        except KeyError:
            errors.append(FieldError(where, f"the job spec has no field {path}"))
            continue
        if isinstance(current, (dict, list)):
            errors.append(FieldError(where, f"{path} is not a single value; search one of its fields"))
            continue
        if isinstance(dist, _Range) and not dist.INTEGER and isinstance(current, int) and not isinstance(current, bool):
            errors.append(FieldError(where, f"{path} is an integer; use int_uniform, int_log_uniform or choice"))
            continue
        candidates = dist.choice if isinstance(dist, Choice) else list(dist.bounds)
        for value in dict.fromkeys(candidates):  # each distinct value once (the spec is parsed per value)
            try:
                parse_spec(set_path(base, path, value), uploads=uploads)
            except SpecError as exc:
                inner = [e for e in exc.errors if e.path == path] or exc.errors
                errors.append(FieldError(where, f"{value!r} is refused by the job spec: {inner[0].message}"))
                break
    if sweep.method == "grid":
        for path, dist in sweep.search.items():
            if not isinstance(dist, Choice):
                errors.append(FieldError(f"search.{path}", "a grid needs a choice of values for every field"))
        if not errors and sweep.trials is None and sweep.budget > 1000:
            errors.append(FieldError("trials", f"the grid has {sweep.budget} combinations; at most 1000 run "
                                               "(set trials to run the first ones)"))
    if errors:
        raise SpecError(errors)
    return sweep, base
