"""What every part of the spec shares: the base model (unknown fields and NaN refused), the errors that name a
field, and shapes."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec: unknown fields are errors, and NaN or Infinity is refused everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=10_000, frozen=True)



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


Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given."""
