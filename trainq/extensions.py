"""What a package installed beside trainq builds on to add layer types, and how trainq finds such packages.

A layer type is a pydantic class of its fields (a `LayerFields`, so unknown fields are errors) with two pure methods,
`output_shape(shape)` and `param_count(shape)`, that the service runs in the dry run without torch; and a function
that builds its `torch.nn.Module` from the spec and the input shape on a worker (it imports torch inside itself, so
the service, which never imports torch, can load the package). A package offers them under the entry-point group
`trainq.layers`, the entry point's name being the layer's type:

    # pyproject.toml of the package
    [project.entry-points."trainq.layers"]
    gated = "trainq_gated:layer"

    # trainq_gated/__init__.py
    from typing import Literal
    from trainq.extensions import LayerFields, LayerType, Shape, ShapeError

    class GatedSpec(LayerFields):
        type: Literal["gated"]
        units: int

        def output_shape(self, shape: Shape) -> Shape:
            if len(shape) != 1:
                raise ShapeError(f"gated needs features, got {list(shape)}")
            return (self.units,)

        def param_count(self, shape: Shape) -> int:
            return 2 * (shape[0] * self.units + self.units)

    def build(spec: GatedSpec, shape: Shape):
        from trainq_gated.torch import Gated
        return Gated(shape[0], spec.units)

    layer = LayerType(spec=GatedSpec, build=build)

The service and every worker that should run such layers install the package; a request only names the type.

This module imports pydantic alone (nothing else of trainq), so a package can import it before trainq's spec does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Callable, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_serializer

log = logging.getLogger(__name__)

GROUP = "trainq.layers"
NODE_ID = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # a layer's id, which later layers name in `from`

Shape = tuple[int, ...]  # one example's shape: (features,), (steps, features) or (channels, height, width)


class ShapeError(ValueError):
    """A layer cannot take the shape it is given; the message says what it needs and what it got."""


class Spec(BaseModel):
    """Base of every spec: unknown fields are errors, and NaN or Infinity is refused everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=10_000, frozen=True)


class LayerFields(Spec):
    """What every layer has besides its own fields: an id that later layers may name, and where its input comes from
    (`from`: earlier ids, or `in` for the model's or block's input; by default the layer before)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str | None = Field(None, pattern=NODE_ID)
    from_: str | list[str] | None = Field(None, alias="from", max_length=64)

    @model_serializer(mode="wrap")
    def _links_last(self, handler) -> dict[str, Any]:
        """The layer as written: its type first, its own fields, then `id` and `from` where it has them."""
        data = handler(self)
        links = {k: data.pop(k) for k in ("id", "from", "from_") if k in data}
        head = {"type": data.pop("type")} if "type" in data else {}
        return {**head, **data, **{k: v for k, v in links.items() if v is not None}}

    def sources(self) -> list[str] | None:
        """The ids named in `from`, as a list (None: the layer before)."""
        if self.from_ is None:
            return None
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)

    def unused(self) -> set[str]:
        return {name for name in ("id", "from_") if getattr(self, name) is None}


@dataclass(frozen=True)
class LayerType:
    """A layer type a package adds: its fields and shape rule (`spec`), and how a worker builds its module."""

    spec: type[LayerFields]
    build: Callable[[Any, Shape], Any]  # (the layer's spec, its input shape) -> torch.nn.Module


@dataclass(frozen=True)
class Installed:
    """A layer type found under the entry-point group, with the package it came from."""

    name: str
    layer: LayerType
    package: str
    version: str


@dataclass(frozen=True)
class Refused:
    """An entry point that could not be used, and why (shown by GET /api/v1/layers and logged)."""

    name: str
    package: str
    version: str
    reason: str


def type_name(spec: type[BaseModel]) -> str | None:
    """The literal of a layer class's `type` field, or None if it has no such literal."""
    field = spec.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal or len(get_args(field.annotation)) != 1:
        return None
    return get_args(field.annotation)[0]


@cache
def installed_layers(builtin: frozenset[str]) -> tuple[tuple[Installed, ...], tuple[Refused, ...]]:
    """The layer types of the installed packages, and the entry points refused (a name that shadows a built-in or
    another package's, a spec that is not a LayerFields with `type: Literal[name]`, a package that fails to load).
    Read once per process: installing a package takes a restart, as any installation does."""
    found: dict[str, Installed] = {}
    refused: list[Refused] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        package = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        reason = None
        try:
            layer = ep.load()
        except Exception as exc:  # a broken package must not take the service down
            layer, reason = None, f"loading {ep.value} failed: {type(exc).__name__}: {exc}"
        if reason is None:
            reason = _fault(ep.name, layer, builtin, found)
        if reason is not None:
            log.error("layer plugin %s from %s %s refused: %s", ep.name, package, version, reason)
            refused.append(Refused(ep.name, package, version, reason))
            continue
        found[ep.name] = Installed(ep.name, layer, package, version)
    return tuple(found.values()), tuple(refused)


def _fault(name: str, layer: Any, builtin: frozenset[str], found: dict[str, Installed]) -> str | None:
    if not isinstance(layer, LayerType):
        return "the entry point must name a trainq.extensions.LayerType"
    if not (isinstance(layer.spec, type) and issubclass(layer.spec, LayerFields)):
        return "its spec must be a subclass of trainq.extensions.LayerFields"
    if type_name(layer.spec) != name:
        return f"its spec's type must be Literal[{name!r}], the entry point's name"
    if name in builtin:
        return f"{name!r} is a built-in layer type; a plugin cannot replace it"
    if name in found:
        return f"{name!r} is already installed by {found[name].package}"
    if not (callable(getattr(layer.spec, "output_shape", None)) and callable(getattr(layer.spec, "param_count", None))):
        return "its spec must define output_shape(shape) and param_count(shape)"
    if not callable(layer.build):
        return "its build must be a function (spec, shape) -> torch.nn.Module"
    return None
