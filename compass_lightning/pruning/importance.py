"""Importance criteria: how much each prunable weight matters, on calibration batches.

One registry, :data:`IMPORTANCES`; the table of criteria is in :mod:`compass_lightning.pruning`.
Every criterion runs on a deep copy (:func:`importance`): the live model is never touched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compass_lightning.engine.checks import at_least_one, positive
from compass_lightning.engine.registry import Check, Operation, Registry
from compass_lightning.pruning.parameters import check_rate as _rate
from compass_lightning.pruning.parameters import prunable_weights as _weights

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Importance(Operation):
    """A registered importance criterion; ``changes_weights`` marks the optimisation episodes.

    Example:
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
    prunable weights (or the mean squared per-sample gradient, computed batched with ``torch.func``)."""
    weights = _weights(model)
    totals = {name: torch.zeros_like(w) for name, w in weights.items()}
    count = 0
    for x, y in batches:
        if squared_per_sample:
            parameters = dict(model.named_parameters())

            def sample_loss(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
                out = torch.func.functional_call(model, params, (xi.unsqueeze(0),))
                return loss_fn(out, yi.unsqueeze(0))

            grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(
                {n: parameters[n] for n in weights}, x, y
            )
            for name in weights:
                totals[name] += grads[name].pow(2).sum(dim=0)
            count += len(x)
        else:  # Molchanov et al.: the criterion of each batch, then their mean
            grads = torch.autograd.grad(loss_fn(model(x), y), list(weights.values()))
            for (name, w), g in zip(weights.items(), grads):
                totals[name] += (w.detach() * g).pow(2)
            count += 1
    if count == 0:
        raise ValueError("importance needs at least one calibration batch")
    return {name: total / count for name, total in totals.items()}


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


@_importance("greg2", changes_weights=True, rate=_rate, steps=at_least_one, increment=positive, lr=positive)
def _greg2(
    model: nn.Module, batches: Batches, *, loss_fn: LossFn, rate: float = 0.5, steps: int = 20,
    increment: float = 1e-2, lr: float = 1e-3,
) -> dict[str, Tensor]:
    batches = list(batches)
    weights = _weights(model)
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    cut = flat.kthvalue(max(1, round(rate * len(flat)))).values
    chosen = {name: (w.detach().abs() <= cut).float() for name, w in weights.items()}
    optimiser = torch.optim.SGD(list(weights.values()), lr=lr, momentum=0.9)
    for step in range(steps):  # the penalty grows by `increment` every step
        x, y = batches[step % len(batches)]
        penalty = sum((w * chosen[n]).pow(2).sum() for n, w in weights.items())
        loss = loss_fn(model(x), y) + increment * (step + 1) * penalty
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # on the copy only: the trained model is never differentiated into
        optimiser.step()
    return {name: w.detach().abs() for name, w in weights.items()}


@_importance("asl", changes_weights=True, rate=_rate, steps=at_least_one, weight=positive, lr=positive)
def _asl(
    model: nn.Module, batches: Batches, *, loss_fn: LossFn, rate: float = 0.5, steps: int = 20, weight: float = 1.0,
    lr: float = 1e-3,
) -> dict[str, Tensor]:
    batches = list(batches)
    weights = _weights(model)
    # one threshold per layer, parameterised in units of the layer's weight std
    sigma = {n: w.detach().std().clamp_min(1e-12) for n, w in weights.items()}
    log_b = {n: torch.zeros((), requires_grad=True) for n in weights}
    optimiser = torch.optim.Adam([*weights.values(), *log_b.values()], lr=lr)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        saved = {}
        for n, w in weights.items():  # straight-through: prune in the forward, identity in the backward
            b = log_b[n].exp() * sigma[n]
            keep = (w.abs() > b).float()
            saved[n] = w.data.clone()
            w.data.mul_(keep)
        loss = loss_fn(model(x), y)
        for n, w in weights.items():
            w.data.copy_(saved[n])
        # expected layer sparsity for Gaussian weights: P(|w| <= b) = erf(b / (sigma * sqrt 2))
        sparsity = torch.stack([torch.erf(log_b[n].exp() / math.sqrt(2)) for n in weights])
        objective = loss + weight * (sparsity.mean() - rate) ** 2
        optimiser.zero_grad(set_to_none=True)
        objective.backward()  # on the copy only
        optimiser.step()
    return {n: w.detach().abs() / (log_b[n].detach().exp() * sigma[n]) for n, w in weights.items()}


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
    params = entry.resolve(params)
    working = copy.deepcopy(model).eval()
    for p in working.parameters():
        p.requires_grad_(False)
        p.grad = None
    for w in _weights(working).values():
        w.requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        return entry.function(working, batches, loss_fn=loss_fn or F.cross_entropy, **params)
