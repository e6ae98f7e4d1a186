"""What every part of the spec shares: the base model (unknown fields and NaN refused), the errors that name a
field, and shapes. The base model, a layer's common fields and shapes live in trainq.extensions, which installed
layer packages import too."""

from __future__ import annotations

from dataclasses import dataclass

from trainq.extensions import LayerFields, Shape, ShapeError, Spec  # noqa: F401  (re-exported)


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
