"""Named, swappable implementations (rotation backends, SO(2) blocks).

A model config picks one by name (``rotation_backend: ...``, ``so2_impl: ...``); an
unknown name raises an error that lists the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ROTATION_BACKENDS", "SO2_IMPLEMENTATIONS", "Registry"]


class Registry:
    """A name -> class table filled by the ``register`` decorator."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind = kind
        self.option = option
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._classes[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} '{name}' for {self.option}; registered: "
                f"{', '.join(sorted(self._classes))}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._classes)


ROTATION_BACKENDS = Registry("rotation backend", "rotation_backend")
SO2_IMPLEMENTATIONS = Registry("SO(2) implementation", "so2_impl")
