"""The model section: its layers (a graph by `id` and `from`, blocks used with parameters) and its initialization."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from trainq.models.spec.base import Spec
from trainq.models.spec.layers import HeInit, InitSpec, LayerSpec


class ModelSpec(Spec):
    init: InitSpec = HeInit(type="he")  # a name ("he") or an object with parameters ({type: normal, std: 0.1})
    layers: list[LayerSpec] = Field(min_length=1, max_length=1000)

    @field_validator("init", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

