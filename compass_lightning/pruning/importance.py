"""Importance criteria: how much each prunable weight matters, on calibration batches.

One registry, :data:`IMPORTANCES`; the table of criteria is in :mod:`compass_lightning.pruning`.
Every criterion runs on a deep copy (:func:`importance`): the live model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compass_lightning.engine.registry import Check, Operation, Registry
from compass_lightning.pruning.fisher import Unsupported, squared_sample_gradients, supported
from compass_lightning.pruning.parameters import prunable
from compass_lightning.pruning.parameters import prunable_weights as _weights

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Importance(Operation):
    """A registered importance criterion; ``changes_weights`` marks the optimisation episodes.

    Example:
        >>> import compass_lightning.pruning  # registers the episodes too
        >>> IMPORTANCES["taylor"].changes_weights, IMPORTANCES["greg2"].changes_weights
        (False, True)
    """

    kind: str = "importance"
    changes_weights: bool = False


IMPORTANCES: Registry[Importance] = Registry("importance")


def _importance(name: str, *, changes_weights: bool = False, **checks: Check) -> Callable:
    def add(function: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        entry = Importance.from_function(name, function, checks, ("loss_fn",), changes_weights=changes_weights)
        IMPORTANCES.register(name)(entry)
        return function

    return add


def _gradients(model: nn.Module, batches: Batches, loss_fn: LossFn, *, squared_per_sample: bool) -> dict[str, Tensor]:
    """The mean over ``batches`` of ``(w · g_b)²``, ``g_b`` a batch's mean loss gradient of the
    prunable weights (or the mean squared per-sample gradient: in closed form from one forward and
    backward where :mod:`~compass_lightning.pruning.fisher` has it, else batched with ``torch.func``)."""
    weights = _weights(model)
    totals = {name: torch.zeros_like(w) for name, w in weights.items()}
    entries = prunable(model)
    closed_form = {name: entries[name].module for name in weights}
    if not all(entries[name].attribute == "weight" and supported(m) for name, m in closed_form.items()):
        closed_form = {}
    count = 0
    for x, y in batches:
        if squared_per_sample:
            squares = None
            if closed_form:
                try:
                    squares = squared_sample_gradients(model, closed_form, x, y, loss_fn)
                except Unsupported:
                    closed_form = {}  # the same model will not take it on the next batch either
            if squares is None:
                squares = _vmap_squares(model, weights, x, y, loss_fn)
            for name in weights:
                totals[name] += squares[name]
            count += len(x)
        else:  # Molchanov et al.: the criterion of each batch, then their mean
            grads = torch.autograd.grad(loss_fn(model(x), y), list(weights.values()))
            for (name, w), g in zip(weights.items(), grads):
                totals[name] += (w.detach() * g).pow(2)
            count += 1
    if count == 0:
        raise ValueError("importance needs at least one calibration batch")
    return {name: total / count for name, total in totals.items()}


def _vmap_squares(model: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn) -> dict[str, Tensor]:
    """``Σ_i (∂L_i/∂w)²`` from every per-sample gradient, batched with ``torch.func`` (any model)."""
    parameters = dict(model.named_parameters())

    def sample_loss(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = torch.func.functional_call(model, params, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))({n: parameters[n] for n in weights}, x, y)
    return {name: grads[name].pow(2).sum(dim=0) for name in weights}


@_importance("magnitude")
def _magnitude(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    return {name: w.detach().abs() for name, w in _weights(model).items()}


@_importance("taylor")
def _taylor(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    return _gradients(model, batches, loss_fn, squared_per_sample=False)


@_importance("obd")
def _obd(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    fisher = _gradients(model, batches, loss_fn, squared_per_sample=True)
    return {name: 0.5 * fisher[name] * w.detach().pow(2) for name, w in _weights(model).items()}


def importance(
    model: nn.Module, method: str, batches: Batches, *, loss_fn: LossFn | None = None, **params: object
) -> dict[str, Tensor]:
    """Importance scores ``{parameter name: scores}`` of every prunable weight, computed on a deep
    copy (the live model's weights, ``.grad``, ``requires_grad`` and modes are never touched).

    ``batches`` yields ``(inputs, targets)`` in the model's input space; ``loss_fn`` defaults to
    cross-entropy on logits.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> scores = importance(net, "magnitude", [])
        >>> sorted(scores), scores["0.weight"].shape
        (['0.weight', '2.weight'], torch.Size([3, 4]))
    """
    entry = IMPORTANCES.lookup(method, "method")
    if entry.changes_weights:
        raise ValueError(f"method: {method!r} trains the copy it prunes, so it has no scores for the weights as they are; "
                         "use compass_lightning.pruning.trained_copy() (or PrunedCopies) and prune that copy")
    params = entry.resolve(params)
    working = copy.deepcopy(model).eval()
    for p in working.parameters():
        p.requires_grad_(False)
        p.grad = None
    for w in _weights(working).values():
        w.requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        return entry.function(working, batches, loss_fn=loss_fn or F.cross_entropy, **params)
