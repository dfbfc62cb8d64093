"""Which weights pruning counts and zeroes, and how sparse a model is.

A *prunable* weight is a parameter that :mod:`torch.nn.utils.prune` masks by name: the weights of
``Conv2d``, ``Conv1d``, ``Linear`` and ``Embedding`` modules, the input and recurrent weights of
``RNN``/``LSTM``/``GRU`` modules and the input projection of ``MultiheadAttention``. Biases and
normalisation parameters are never pruned; they count in the denominator of a rate ``of="all"``
(AI-Compass §6.4: pruned parameters over all parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from compass_lightning.engine.checks import check_choice, check_real

#: Modules whose ``weight`` is prunable (Conv1d and Embedding: those of text models).
PRUNABLE = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.Embedding)
#: What a pruning rate is a fraction of: the prunable weights, or all parameters.
DENOMINATORS = ("prunable", "all")

check_rate = partial(check_real, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class Prunable:
    """One prunable parameter: its owner module and the attribute it is under there (what
    ``torch.nn.utils.prune`` takes).

    Example:
        >>> lstm = nn.LSTM(3, 2)
        >>> entry = prunable(lstm)["weight_hh_l0"]
        >>> entry.attribute, tuple(entry.weight.shape)
        ('weight_hh_l0', (8, 2))
    """

    module: nn.Module
    attribute: str

    @property
    def weight(self) -> Tensor:
        return getattr(self.module, self.attribute)


def _attributes(module: nn.Module) -> list[str]:
    """The prunable parameters a module owns directly (biases and normalisation never: they are few
    and pruning them is not what the papers' rates count)."""
    if isinstance(module, PRUNABLE):
        return ["weight"]
    if isinstance(module, nn.RNNBase):  # every layer and direction: weight_ih_l0, weight_hh_l0_reverse, ...
        return [name for name in module._flat_weights_names if name.startswith("weight_")]
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        return ["in_proj_weight"]  # its out_proj is a Linear of its own
    return []


def prunable(model: nn.Module) -> dict[str, Prunable]:
    """``{parameter name: Prunable}`` of every prunable weight of ``model`` (see the module
    docstring), in registration order.

    Example:
        >>> net = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 3), nn.Linear(3, 2))
        >>> list(prunable(net))
        ['0.weight', '1.weight_ih_l0', '1.weight_hh_l0', '2.weight']
    """
    found = {}
    for name, module in model.named_modules():
        for attribute in _attributes(module):
            if isinstance(getattr(module, attribute, None), Tensor):
                found[f"{name}.{attribute}" if name else attribute] = Prunable(module, attribute)
    return found


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    return {name: entry.weight for name, entry in prunable(model).items()}


def parameter_count(model: nn.Module, of: str = "prunable") -> int:
    """How many weights a rate ``of`` ``"prunable"`` or ``"all"`` is a fraction of (see the module docstring)."""
    if check_choice("of", of, DENOMINATORS) == "all":
        return sum(p.numel() for p in model.parameters())
    return sum(w.numel() for w in prunable_weights(model).values())


def sparsity(model: nn.Module, of: str = "prunable") -> float:
    """The number of prunable weights that are exactly zero, over :func:`parameter_count` ``of``.

    Example:
        >>> net = nn.Linear(4, 2)  # 8 weights, 2 biases
        >>> with torch.no_grad():
        ...     _ = net.weight[0].zero_()
        >>> sparsity(net), sparsity(net, of="all")
        (0.5, 0.4)
    """
    total = parameter_count(model, of)
    return sum(int((w == 0).sum()) for w in prunable_weights(model).values()) / total if total else 0.0
