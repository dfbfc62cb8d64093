"""Which layers the neuron analyses look at, and recording their neurons with forward hooks.

A *neuron* is a channel of a ``Conv2d`` or ``Conv1d`` (its spatial or temporal mean — over every
position, padding included, for text) or a unit of a ``Linear``. By default every ``Conv2d``,
``Conv1d`` and ``Linear`` is selected; where such a layer is followed inside an
``nn.Sequential`` by an activation module (normalisation layers in between allowed), the
activation's output is observed, so neurons are read after their non-linearity, as the coverage
and sensitivity definitions intend.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from compass_lightning.engine.layers import Recording, _names, unwrap
from compass_lightning.engine.layers import record as record_modules

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)
NORMALISATIONS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Layer:
    """One analysed layer: its name, the module whose output is read, and its neuron layout.

    ``channels_first``: neurons are dimension 1 (a convolution; other dimensions are averaged);
    otherwise the last dimension (a linear layer; dimensions between batch and units are averaged).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        >>> [(layer.name, type(layer.observed).__name__) for layer in select_layers(net).values()]
        [('0', 'ReLU'), ('4', 'LazyLinear')]
    """

    name: str
    observed: nn.Module
    channels_first: bool

    def neurons(self, output: Tensor) -> Tensor:
        """``(N, neurons)`` values of the layer from the observed module's output."""
        if output.ndim == 2:
            return output
        if self.channels_first:
            return output.flatten(2).mean(dim=2)
        return output.flatten(1, -2).mean(dim=1)


def _follower(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    """The activation right after ``name`` in its ``nn.Sequential`` parent, if any."""
    parent_name, _, child = name.rpartition(".")
    parent = modules.get(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent.named_children())
    index = [key for key, _ in children].index(child)
    for _, module in children[index + 1 :]:
        if isinstance(module, NORMALISATIONS):
            continue
        return module if isinstance(module, ACTIVATIONS) else None
    return None


def select_layers(model: nn.Module, names: Sequence[str] | None = None, *, argument: str = "layers") -> dict[str, Layer]:
    """``{name: Layer}``: every ``Conv2d``, ``Conv1d`` and ``Linear`` (read after a following activation), or
    exactly the modules named (read as they are). An unknown name is a ``ValueError`` listing the
    model's layers."""
    modules = dict(unwrap(model).named_modules())
    if names is None:
        chosen = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)) and n]
        if not chosen:
            raise ValueError(f"{argument}: the model has no Conv2d, Conv1d or Linear layer; name layers from: {_names(modules)}")
        followers = {n: _follower(modules, n) for n in chosen}
        shared = {id(f) for f in followers.values() if f is not None and sum(g is f for g in followers.values()) > 1}
        # an activation instance reused after several layers cannot tell their outputs apart: read those raw
        observed = {n: f if f is not None and id(f) not in shared else modules[n] for n, f in followers.items()}
        return {n: Layer(n, observed[n], isinstance(modules[n], (nn.Conv2d, nn.Conv1d))) for n in chosen}
    missing = [n for n in names if n not in modules or not n]
    if missing:
        raise ValueError(f"{argument}: the model has no layer {missing[0]!r}; its layers: {_names(modules)}")
    return {n: Layer(n, modules[n], not isinstance(modules[n], nn.Linear)) for n in names}


def record(layers: dict[str, Layer]) -> AbstractContextManager[Recording]:
    """Record the outputs of ``layers`` (their observed modules) at every forward, by layer name; the
    hooks are removed on exit, even on error (:func:`~compass_lightning.engine.layers.record`).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with record(select_layers(net)) as seen:
        ...     _ = net(torch.ones(5, 3))
        >>> {name: tuple(out.shape) for name, out in seen.outputs.items()}, len(net[1]._forward_hooks)
        ({'0': (5, 4), '2': (5, 2)}, 0)
    """
    return record_modules({name: layer.observed for name, layer in layers.items()})


def neuron_values(model: nn.Module, x: Tensor, layers: dict[str, Layer]) -> tuple[dict[str, Tensor], Tensor]:
    """``({layer: (N, neurons)}, logits)`` of one forward pass without gradients."""
    with torch.no_grad(), record(layers) as seen:
        logits = model(x)
    missing = [name for name in layers if name not in seen.outputs]
    if missing:
        raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
    return {name: layer.neurons(seen.outputs[name]).float() for name, layer in layers.items()}, logits
