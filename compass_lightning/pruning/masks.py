"""Masks from importance scores, pruned copies, and the sweep over rates on one working copy."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from compass_lightning.engine.checks import check_bool
from compass_lightning.pruning.parameters import Prunable, parameter_count, prunable
from compass_lightning.pruning.parameters import check_rate as _rate


def _check_scores(modules: dict[str, Prunable], scores: dict[str, Tensor]) -> None:
    missing = [name for name in modules if name not in scores]
    if missing:
        raise ValueError(f"scores lack {', '.join(missing)}; compute them with importance() on this model")


def _global_order(weights: dict[str, Tensor], scores: dict[str, Tensor]) -> Tensor:
    """Positions in the concatenated ``weights``, lowest score first (ties by position)."""
    if not weights:
        return torch.zeros(0, dtype=torch.long)
    device = next(iter(weights.values())).device
    flat = torch.cat([scores[n].reshape(-1).to(device, torch.float64) for n in weights])
    return torch.argsort(flat, stable=True)


def _count(model: nn.Module, modules: dict[str, Prunable], rate: float, of: str) -> int:
    """How many prunable weights a ``rate`` of ``of`` (``"prunable"`` or ``"all"`` parameters) zeroes:
    ``round(rate · n)``, the count ``torch.nn.utils.prune`` uses; more than there are is an error."""
    rate = _rate("rate", rate)
    total = parameter_count(model, of)
    count, available = round(rate * total), sum(m.weight.numel() for m in modules.values())
    if count > available:
        raise ValueError(f"rate: {rate} of all parameters is {count} weights, but only {available} are prunable "
                         f"({available / total:.3f} of all); choose a rate below that")
    return count


def _unstructured_masks(weights: dict[str, Tensor], order: Tensor, count: int) -> dict[str, Tensor]:
    mask = torch.ones(len(order), device=order.device)
    mask[order[:count]] = 0
    sizes = [w.numel() for w in weights.values()]
    return {n: part.view_as(w).to(w.dtype) for (n, w), part in zip(weights.items(), mask.split(sizes))}


def masks(model: nn.Module, scores: dict[str, Tensor], rate: float, *, structured: bool = False,
          of: str = "prunable") -> dict[str, Tensor]:
    """``{parameter name: 0/1 mask}`` of the prunable weights that :func:`prune` keeps at ``rate``.

    ``rate`` is a fraction of the ``n`` prunable weights (``of="prunable"``) or of all ``n``
    parameters (``of="all"``, AI-Compass' definition; biases and normalisation are never pruned).
    Unstructured: the ``round(rate · n)`` prunable weights with the lowest scores over all of them
    are masked (the count ``torch.nn.utils.prune`` uses), ties broken by position.
    Structured: whole rows — output filters, a ``Linear``'s or a recurrent gate's units, a token's
    embedding — lowest mean score first, skipping a row that would exceed that count; the last
    ``Linear`` (the classes) stays whole.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> masks(net, {"weight": torch.tensor([[4.0, 1.0], [3.0, 2.0]])}, 0.5)["weight"]
        tensor([[1., 0.],
                [1., 0.]])
    """
    structured = check_bool("structured", structured)
    modules = prunable(model)
    _check_scores(modules, scores)
    count = _count(model, modules, rate, of)
    if not structured:
        weights = {n: m.weight for n, m in modules.items()}
        return _unstructured_masks(weights, _global_order(weights, scores), count)
    keep = {n: torch.ones_like(m.weight) for n, m in modules.items()}
    if count == 0 or not modules:
        return keep
    last_linear = [n for n, m in modules.items() if isinstance(m.module, nn.Linear)][-1:]
    candidates = [n for n in modules if n not in last_linear]
    if not candidates:
        return keep
    # one host transfer for every filter's mean score, then a greedy fill of the budget
    means = torch.cat([scores[n].flatten(1).float().mean(dim=1).cpu() for n in candidates]).tolist()
    owners = [(n, i) for n in candidates for i in range(modules[n].weight.shape[0])]
    budget = count
    for index in sorted(range(len(owners)), key=means.__getitem__):
        n, i = owners[index]
        size = keep[n][i].numel()
        if size <= budget:
            keep[n][i] = 0
            budget -= size
    return keep


def prune(model: nn.Module, scores: dict[str, Tensor], rate: float, *, structured: bool = False,
          of: str = "prunable") -> nn.Module:
    """A pruned deep copy of ``model``: the fraction ``rate`` of its prunable weights (or of all its
    parameters, ``of="all"``) with the lowest ``scores`` set to zero (see :func:`masks`), applied
    with ``torch.nn.utils.prune`` and made permanent on the copy.

    Example:
        >>> import torch
        >>> from compass_lightning.pruning import importance, sparsity
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> pruned = prune(net, importance(net, "magnitude", []), 0.5)
        >>> round(sparsity(pruned), 2), round(sparsity(net), 2)
        (0.5, 0.0)
    """
    keep = masks(model, scores, rate, structured=structured, of=of)
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
    ``model`` itself is never touched. ``of``: what a rate is a fraction of, as in :func:`masks`.

    Example:
        >>> import torch
        >>> from compass_lightning.pruning import importance, sparsity
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> sweep = PruningSweep(net, importance(net, "magnitude", []))
        >>> [round(sparsity(sweep.at(rate)), 2) for rate in (0.2, 0.6, 0.0)]
        [0.2, 0.6, 0.0]
    """

    def __init__(self, model: nn.Module, scores: dict[str, Tensor], *, structured: bool = False,
                 of: str = "prunable") -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.scores = scores
        self.structured = check_bool("structured", structured)
        self.of = of
        parameter_count(model, of)  # checks the name
        self._modules = prunable(self.model)
        _check_scores(self._modules, scores)
        self._original = {n: m.weight.detach().clone() for n, m in self._modules.items()}
        self._weights = {n: m.weight for n, m in self._modules.items()}
        self._order = None if structured else _global_order(self._weights, scores)

    @torch.no_grad()
    def at(self, rate: float) -> nn.Module:
        """The working copy pruned at ``rate`` (valid until the next call)."""
        if self._order is None:
            keep = masks(self.model, self.scores, rate, structured=True, of=self.of)
        else:
            keep = _unstructured_masks(self._weights, self._order, _count(self.model, self._modules, rate, self.of))
        for name, entry in self._modules.items():
            torch.mul(self._original[name], keep[name], out=entry.weight.data)
        return self.model


def max_safe_rate(drops: dict[float, float], tolerance: float) -> float:
    """The largest pruning rate whose accuracy drop (clean accuracy minus pruned accuracy) is at most
    ``tolerance``: how much of the model is redundant. 0.0 when no rate is safe.

    Example:
        >>> max_safe_rate({0.2: 0.0, 0.4: 0.008, 0.6: 0.05, 0.8: 0.3}, tolerance=0.01)
        0.4
    """
    return max((rate for rate, drop in drops.items() if drop <= tolerance), default=0.0)
