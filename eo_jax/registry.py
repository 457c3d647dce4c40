"""Name -> factory registries for models, objectives and datasets.

Configs name things by string (``config.model.name = 'resnet18'``); a registry
turns the name into the factory that builds it, and an unknown name fails
with the list of names that do exist.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar
from eo_jax.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
  """A dictionary of factories filled by the ``register`` decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, *names: str) -> Callable[[T], T]:
    def decorator(fn: T) -> T:
      for name in names:
        if name in self._entries:
          raise ValueError(f"{self.kind} {name!r} is registered twice.")
        self._entries[name] = fn
      return fn
    return decorator

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      known = ", ".join(sorted(self._entries)) or "(none)"
      raise ConfigError(
          f"Unknown {self.kind} {name!r}. Known {self.kind}s: {known}.") from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
