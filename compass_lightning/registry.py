"""Named registries: every string a user can pass (``"noise"``, ``"pgd"``, ...) comes from one of these.

One registry per analysis module means LightningCLI YAML and Python accept the same names, and an
unknown name fails at construction with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """A name that is not in a registry. A ``ValueError`` for users, a ``KeyError`` for mappings."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from names to entries, filled by the :meth:`register` decorator.

    Example:
        >>> SHAPES = Registry("shape")
        >>> @SHAPES.register("square")
        ... def square(side):
        ...     return side * side
        >>> SHAPES["square"](3)
        9
        >>> SHAPES["circle"]
        Traceback (most recent call last):
        ...
        compass_lightning.registry.UnknownNameError: unknown shape 'circle'; choose from: square
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds an entry under ``name`` (lower case, unique)."""
        if name != name.lower() or name in self._entries:
            raise ValueError(f"{self.kind} name {name!r} must be lower case and unique")

        def add(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return add

    def lookup(self, name: object, argument: str | None = None) -> T:
        """The entry for ``name``; an :class:`UnknownNameError` naming ``argument`` and the choices otherwise."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        where = f"{argument}: " if argument else ""
        raise UnknownNameError(f"{where}unknown {self.kind} {name!r}; choose from: {', '.join(self._entries)}")

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
