"""A name -> builder table, so each spec name maps to exactly one builder (after timm's registry)."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """Builders stored under the names the spec uses."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        def add(builder: F) -> F:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = builder
            return builder
        return add

    def __missing__(self, name: str):
        raise KeyError(f"no {self.kind} named {name!r}; known: {', '.join(sorted(self))}")
