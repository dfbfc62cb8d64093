"""Pruning without fine-tuning (AI-Compass module 5): how much of a model is redundant.

Importance scores rank the prunable weights (see :func:`prunable`: the weights of ``Conv2d``,
``Conv1d``, ``Linear`` and ``Embedding`` modules, the input and recurrent weights of ``RNN``/``LSTM``/
``GRU`` modules and the input projection of ``MultiheadAttention``); :func:`prune` zeroes the
lowest ones on a copy, globally (unstructured, through ``torch.nn.utils.prune`` on the named
parameters) or whole rows (``structured=True``: filters, units, tokens' embeddings). The
pruning rate is the fraction of all prunable weights set to zero. Everything happens on deep copies:
the trained model's weights, ``.grad`` and modes are never touched.

==========  ===========================================================================
name        importance of a weight ``w``
==========  ===========================================================================
magnitude   ``|w|``
taylor      ``(w·g)²``, ``g`` the loss gradient accumulated over the calibration batches
obd         ``½·h·w²``, ``h`` the Hessian diagonal approximated by the empirical Fisher
            (the mean over calibration samples of the squared per-sample gradient)
greg2       ``|w|`` after a short episode on a copy with a growing L2 penalty on the
            lowest-magnitude weights (Wang et al., GReg-2, ICLR 2021) — **changes the copy's
            weights**
asl         ``|w| / b_l`` after a short episode on a copy that learns one threshold ``b_l`` per
            layer towards a target sparsity (ASL, Retsinas et al.) — **changes the copy's weights**
==========  ===========================================================================
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from compass_lightning.engine.checks import at_least_one, check_bool, check_real, positive
from compass_lightning.engine.registry import Check, Operation, Registry

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]
#: Modules whose ``weight`` is prunable (Conv1d and Embedding: those of text models).
PRUNABLE = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.Embedding)


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


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {name: entry.weight for name, entry in prunable(model).items()}


def _gradients(model: nn.Module, batches: Batches, loss_fn: LossFn, *, squared_per_sample: bool) -> dict[str, Tensor]:
    """Mean loss gradient of the prunable weights over ``batches`` (or the mean squared per-sample
    gradient, computed batched with ``torch.func``)."""
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
        else:
            grads = torch.autograd.grad(loss_fn(model(x), y), list(weights.values()))
            for name, g in zip(weights, grads):
                totals[name] += g * len(x)
            count += len(x)
    if count == 0:
        raise ValueError("importance needs at least one calibration batch")
    return {name: total / count for name, total in totals.items()}


@_importance("magnitude")
def _magnitude(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    return {name: w.detach().abs() for name, w in _weights(model).items()}


@_importance("taylor")
def _taylor(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    gradients = _gradients(model, batches, loss_fn, squared_per_sample=False)
    return {name: (w.detach() * gradients[name]).pow(2) for name, w in _weights(model).items()}


@_importance("obd")
def _obd(model: nn.Module, batches: Batches, *, loss_fn: LossFn) -> dict[str, Tensor]:
    fisher = _gradients(model, batches, loss_fn, squared_per_sample=True)
    return {name: 0.5 * fisher[name] * w.detach().pow(2) for name, w in _weights(model).items()}


_rate = partial(check_real, low=0.0, high=1.0, high_open=True)


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


def _check_scores(modules: dict[str, Prunable], scores: dict[str, Tensor]) -> None:
    missing = [name for name in modules if name not in scores]
    if missing:
        raise ValueError(f"scores lack {', '.join(missing)}; compute them with importance() on this model")


def _global_order(modules: dict[str, Prunable], scores: dict[str, Tensor]) -> Tensor:
    """Positions in the concatenated prunable weights, lowest score first (ties by position)."""
    if not modules:
        return torch.zeros(0, dtype=torch.long)
    device = next(iter(modules.values())).weight.device
    flat = torch.cat([scores[n].reshape(-1).to(device, torch.float64) for n in modules])
    return torch.argsort(flat, stable=True)


def _unstructured_masks(modules: dict[str, Prunable], order: Tensor, rate: float) -> dict[str, Tensor]:
    mask = torch.ones(len(order), device=order.device)
    mask[order[: round(rate * len(order))]] = 0  # the count torch.nn.utils.prune uses
    sizes = [m.weight.numel() for m in modules.values()]
    return {n: part.view_as(m.weight).to(m.weight.dtype) for (n, m), part in zip(modules.items(), mask.split(sizes))}


def masks(model: nn.Module, scores: dict[str, Tensor], rate: float, *, structured: bool = False) -> dict[str, Tensor]:
    """``{parameter name: 0/1 mask}`` of the prunable weights that :func:`prune` keeps at ``rate``.

    Unstructured: the ``round(rate · n)`` weights with the lowest scores over all ``n`` prunable
    weights are masked (the count ``torch.nn.utils.prune`` uses), ties broken by position.
    Structured: whole rows — output filters, a ``Linear``'s or a recurrent gate's units, a token's
    embedding — lowest mean score first, skipping a row that would exceed ``rate`` of all prunable
    weights; the last ``Linear`` (the classes) stays whole.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> masks(net, {"weight": torch.tensor([[4.0, 1.0], [3.0, 2.0]])}, 0.5)["weight"]
        tensor([[1., 0.],
                [1., 0.]])
    """
    rate = _rate("rate", rate)
    structured = check_bool("structured", structured)
    modules = prunable(model)
    _check_scores(modules, scores)
    if not structured:
        return _unstructured_masks(modules, _global_order(modules, scores), rate)
    weights = [m.weight for m in modules.values()]
    keep = {n: torch.ones_like(m.weight) for n, m in modules.items()}
    if rate == 0 or not modules:
        return keep
    last_linear = [n for n, m in modules.items() if isinstance(m.module, nn.Linear)][-1:]
    candidates = [n for n in modules if n not in last_linear]
    if not candidates:
        return keep
    # one host transfer for every filter's mean score, then a greedy fill of the budget
    means = torch.cat([scores[n].flatten(1).float().mean(dim=1).cpu() for n in candidates]).tolist()
    owners = [(n, i) for n in candidates for i in range(modules[n].weight.shape[0])]
    budget = rate * sum(w.numel() for w in weights)
    for index in sorted(range(len(owners)), key=means.__getitem__):
        n, i = owners[index]
        size = keep[n][i].numel()
        if size <= budget:
            keep[n][i] = 0
            budget -= size
    return keep


def prune(model: nn.Module, scores: dict[str, Tensor], rate: float, *, structured: bool = False) -> nn.Module:
    """A pruned deep copy of ``model``: the fraction ``rate`` of its prunable weights with the
    lowest ``scores`` set to zero (see :func:`masks`), applied with ``torch.nn.utils.prune`` and made
    permanent on the copy.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> pruned = prune(net, importance(net, "magnitude", []), 0.5)
        >>> round(sparsity(pruned), 2), round(sparsity(net), 2)
        (0.5, 0.0)
    """
    keep = masks(model, scores, rate, structured=structured)
    pruned = copy.deepcopy(model)
    for name, entry in prunable(pruned).items():
        torch_prune.custom_from_mask(entry.module, entry.attribute, keep[name])
        torch_prune.remove(entry.module, entry.attribute)
    return pruned


class PruningSweep:
    """Pruned versions of one model at many rates by one set of scores, on a single working copy.

    :meth:`at` rewrites the copy's prunable weights as the original ones times the masks of
    :func:`masks` — the same model :func:`prune` returns, without a deep copy, a new ranking of
    the weights or pruning hooks per rate. The copy is in eval mode with ``requires_grad`` off;
    ``model`` itself is never touched.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> sweep = PruningSweep(net, importance(net, "magnitude", []))
        >>> [round(sparsity(sweep.at(rate)), 2) for rate in (0.2, 0.6, 0.0)]
        [0.2, 0.6, 0.0]
    """

    def __init__(self, model: nn.Module, scores: dict[str, Tensor], *, structured: bool = False) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.scores = scores
        self.structured = check_bool("structured", structured)
        self._modules = prunable(self.model)
        _check_scores(self._modules, scores)
        self._original = {n: m.weight.detach().clone() for n, m in self._modules.items()}
        self._order = None if structured else _global_order(self._modules, scores)

    @torch.no_grad()
    def at(self, rate: float) -> nn.Module:
        """The working copy pruned at ``rate`` (valid until the next call)."""
        if self._order is None:
            keep = masks(self.model, self.scores, rate, structured=True)
        else:
            keep = _unstructured_masks(self._modules, self._order, _rate("rate", rate))
        for name, entry in self._modules.items():
            torch.mul(self._original[name], keep[name], out=entry.weight.data)
        return self.model


def sparsity(model: nn.Module) -> float:
    """The fraction of the prunable weights (:func:`prunable`) that are exactly zero."""
    weights = list(_weights(model).values())
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def max_safe_rate(drops: dict[float, float], tolerance: float) -> float:
    """The largest pruning rate whose accuracy drop (clean accuracy minus pruned accuracy) is at most
    ``tolerance``: how much of the model is redundant. 0.0 when no rate is safe.

    Example:
        >>> max_safe_rate({0.2: 0.0, 0.4: 0.008, 0.6: 0.05, 0.8: 0.3}, tolerance=0.01)
        0.4
    """
    return max((rate for rate, drop in drops.items() if drop <= tolerance), default=0.0)

