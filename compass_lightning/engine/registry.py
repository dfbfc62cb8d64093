"""Named registries: every string a user can pass (``"noise"``, ``"pgd"``, ...) comes from one of these.

One registry per analysis module means LightningCLI YAML and Python accept the same names, and an
unknown name fails at construction with the list of known ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
        compass_lightning.engine.registry.UnknownNameError: unknown shape 'circle'; choose from: square
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


Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Operation:
    """A registered function with named parameters, their defaults and their checks.

    The defaults are read from the function's keyword-only parameters (those not in
    ``reserved``), so each default is written once, in the signature.

    Example:
        >>> def scale(x, *, factor=2.0):
        ...     return x * factor
        >>> op = Operation.from_function("scale", scale, {"factor": lambda name, v: float(v)})
        >>> op.resolve({"factor": 3}), op.resolve(None)
        ({'factor': 3.0}, {'factor': 2.0})
    """

    name: str
    function: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    checks: Mapping[str, Check] = field(default_factory=dict)
    kind: str = "operation"

    @classmethod
    def from_function(
        cls, name: str, function: Callable[..., Any], checks: Mapping[str, Check], reserved: tuple[str, ...] = (), **extra: Any
    ) -> "Operation":
        """An operation whose parameters are ``function``'s keyword-only ones, minus ``reserved``."""
        defaults = {
            p.name: p.default
            for p in inspect.signature(function).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in reserved
        }
        if set(checks) != set(defaults):
            raise TypeError(f"{name}: checks {sorted(checks)} do not match the parameters {sorted(defaults)}")
        return cls(name, function, defaults, dict(checks), **extra)

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with ``params``, each given value checked (unknown names and bad
        values are a ``ValueError``)."""
        if params is None:
            return dict(self.defaults)
        if not isinstance(params, Mapping):
            raise TypeError(f"parameters of {self.kind} {self.name!r} must be a mapping, got {params!r}")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ValueError(f"{self.kind} {self.name!r} has no parameter {', '.join(unknown)}; its parameters: {known}")
        return {**self.defaults, **{key: self.checks[key](f"{self.name}.{key}", value) for key, value in params.items()}}


O = TypeVar("O", bound=Operation)


def resolve_selection(registry: Registry[O], argument: str, selection: object) -> dict[str, dict[str, Any]]:
    """``{name: parameters}`` from a list of names or a mapping of names to parameter overrides
    (``None`` for the defaults), every name and parameter checked.

    Example:
        >>> ops = Registry("op")
        >>> _ = ops.register("scale")(Operation.from_function("scale", lambda x, *, k=2: x * k, {"k": lambda n, v: v}))
        >>> resolve_selection(ops, "ops", ["scale"]), resolve_selection(ops, "ops", {"scale": {"k": 3}})
        ({'scale': {'k': 2}}, {'scale': {'k': 3}})
    """
    if isinstance(selection, str) or not isinstance(selection, (list, tuple, Mapping)):
        raise TypeError(f"{argument} must be a list of names or a mapping name -> parameters, got {selection!r}")
    if isinstance(selection, Mapping):
        pairs = list(selection.items())
    else:
        pairs = [(name, None) for name in selection]
        duplicates = sorted({str(name) for name in selection if list(selection).count(name) > 1})
        if duplicates:
            raise ValueError(f"{argument}: {', '.join(map(repr, duplicates))} listed more than once")
    if not pairs:
        raise ValueError(f"{argument} must name at least one {registry.kind}; choose from: {', '.join(registry)}")
    return {name: registry.lookup(name, argument).resolve(params) for name, params in pairs}
