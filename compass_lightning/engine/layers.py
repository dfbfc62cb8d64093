"""Finding layers by name and capturing their outputs, for analyses that look inside the model.

A layer's output is recorded at a :class:`Site`: one call of one module in the forward pass (a
module may be called more than once, as a residual block's ``relu``). Where a layer is read —
the same place for every analysis (neurons, Grad-CAM, the transfer attacks) — is in
:mod:`compass_lightning.engine.sites`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a wrapper such as :class:`~compass_lightning.tasks.PixelModel`."""
    return getattr(model, "wrapped", model)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d`` modules of ``model``, in registration order."""
    return [name for name, module in unwrap(model).named_modules() if isinstance(module, nn.Conv2d)]


def find_layer(model: nn.Module, name: str | None, *, default: str = "last", argument: str = "layer") -> nn.Module:
    """The submodule called ``name``; ``None`` picks the ``default`` ("last" or "middle") ``Conv2d``.

    A name that does not exist is a ``ValueError`` listing the names that do.
    """
    return dict(unwrap(model).named_modules())[layer_name(model, name, default=default, argument=argument)]


def layer_name(model: nn.Module, name: str | None, *, default: str = "last", argument: str = "layer") -> str:
    """``name``, checked (as :func:`find_layer`), or the name of the ``default`` ``Conv2d``."""
    modules = dict(unwrap(model).named_modules())
    if name is None:
        convolutions = conv_layers(model)
        if not convolutions:
            raise ValueError(f"{argument}: the model has no Conv2d layer to default to; name one of: {_names(modules)}")
        name = convolutions[-1] if default == "last" else convolutions[(len(convolutions) - 1) // 2]
    if name not in modules or not name:
        raise ValueError(f"{argument}: the model has no layer {name!r}; its layers: {_names(modules)}")
    return name


def _names(modules: dict[str, nn.Module], limit: int = 40) -> str:
    names = [n for n in modules if n]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True, eq=False)
class Site:
    """The output of ``module`` at its ``call``-th of the ``calls`` calls it makes in one forward
    pass (0-based; a module called once: ``Site(module)``); ``name``: the module's name."""

    module: nn.Module
    call: int = 0
    calls: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.call < self.calls:
            raise ValueError(f"call must be in [0, {self.calls}), got {self.call}")


class Recording:
    """The latest output of each recorded site during :func:`record`, by name (``value``: the
    output of the only one, for :func:`capture`)."""

    def __init__(self) -> None:
        self.outputs: dict[str, Tensor] = {}

    def hook(self, name: str, site: Site) -> Callable[[nn.Module, object, Tensor], None]:
        """The forward hook that stores the site's output under ``name``: calls are counted modulo
        the module's calls per forward pass, so every pass stores the same call."""
        count = 0

        def store(module: nn.Module, inputs: object, output: Tensor) -> None:
            nonlocal count
            if count % site.calls == site.call:
                self.outputs[name] = output
            count += 1

        return store

    @property
    def value(self) -> Tensor | None:
        """The latest output of the single recorded module (``None`` before its first forward)."""
        return next(iter(self.outputs.values()), None)


Where = Union[nn.Module, Site]


@contextlib.contextmanager
def record(modules: Mapping[str, Where]) -> Iterator[Recording]:
    """Record the output of every module (its only call) or :class:`Site` of ``modules`` at every
    forward, under its name; the hooks are removed on exit, even on error.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> with record({"hidden": net[1], "logits": net[2]}) as seen:
        ...     _ = net(torch.ones(5, 3))
        >>> {name: tuple(out.shape) for name, out in seen.outputs.items()}, len(net[1]._forward_hooks)
        ({'hidden': (5, 4), 'logits': (5, 2)}, 0)
    """
    recording = Recording()
    handles = []
    try:
        for name, where in modules.items():
            site = where if isinstance(where, Site) else Site(where)
            handles.append(site.module.register_forward_hook(recording.hook(name, site)))
        yield recording
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(module: Where) -> Iterator[Recording]:
    """:func:`record` of one module or :class:`Site`, whose latest output is ``value``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> with capture(net[0]) as seen:
        ...     _ = net(torch.ones(2, 3))
        >>> seen.value.shape, len(net[0]._forward_hooks)
        (torch.Size([2, 4]), 0)
    """
    with record({"": module}) as recording:
        yield recording


def check_layer_parameters(model: nn.Module, selection: Mapping[str, Mapping[str, Any]], registry: Any,
                           argument: str) -> None:
    """Fail now (a ``ValueError`` naming ``argument``) if a method of ``selection`` that looks at a
    layer (a ``layer_default`` in ``registry``) names one ``model`` lacks, or has none to default to."""
    for name, params in selection.items():
        default = registry[name].layer_default
        if default is not None:
            find_layer(model, params["layer"], default=default, argument=f"{argument}: {name}.layer")
