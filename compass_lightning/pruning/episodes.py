"""Pruning methods that train the copy they prune: GReg-2 and ASL, as short episodes on the
calibration batches at each rate.

Unlike the importance criteria (:mod:`~compass_lightning.pruning.importance`), which rank the
trained weights as they are, these two change the weights on the way, so what is evaluated is the
*regularised (or sparsity-trained) copy*, pruned — as their papers do before fine-tuning, which
is left out here (AI-Compass §3.3). The episode depends on the rate, so each rate runs its own
on a fresh copy. Written here because no library the field uses implements either (the authors'
code is a training script, not a function); the formulas follow the authors' code:

* **GReg-2** (Wang et al., *Neural Pruning via Growing Regularization*, ICLR 2021; the ``AdaReg``
  pruner of MingSun-Tse/Regularization-Pruning, element-wise as its ``--wg weight``): continued
  training (SGD, momentum 0.9) where the gradient of every prunable weight gets ``λ·w`` (an L2
  penalty ``½λw²``). *Picking*: ``λ`` rises uniformly on all weights, by ``pick_limit/pick_steps``
  each step up to ``pick_limit`` (the authors: 1e-5 every 5 iterations up to 1e-2), so weights
  of low curvature shrink faster; then the weights to remove are those of lowest magnitude.
  *Pruning*: ``λ`` rises on those only, by ``limit/steps`` each step up to ``limit`` (the authors:
  1e-4 every 5 iterations up to 1.0), until the mean magnitude of the kept weights is
  ``ratio_limit`` times that of the removed ones, while the rest of the network adapts; then they
  are zeroed. The authors' schedule runs for tens of thousands of iterations on the training set;
  this one is ``pick_steps + steps`` on the calibration batches, with a larger learning rate
  (1e-2, theirs 1e-3) to cover the same penalty range.
* **ASL** (Retsinas et al., *Weight Pruning via Adaptive Sparsity Loss*, 2020;
  georgeretsi/SparsityLoss): one threshold ``b_l`` per layer; the forward pass uses
  ``w·[|w| > b_l]``, the backward pass is straight through to ``w``; the layer sparsity is
  ``erf(b_l / (σ_l·√2))`` for Gaussian weights of standard deviation ``σ_l``, and the loss adds
  ``weight·(s − target)²`` with ``s`` the size-weighted mean sparsity. Adam (``lr``) trains the
  weights and thresholds for ``steps`` steps, the thresholds starting at the target sparsity. The
  weights removed at the rate are then the lowest ``|w|/b_l``, exactly the rate's count.

Both run in eval mode (batch-norm statistics frozen, dropout off) and train every parameter of
the copy; the trained model is never touched. Unstructured only (a ``structured`` request is
refused where the monitor is configured).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from compass_lightning.engine.checks import at_least_one, positive
from compass_lightning.pruning.importance import IMPORTANCES, Importance, importance
from compass_lightning.pruning.masks import PruningSweep, _count, _global_order, _unstructured_masks, masks
from compass_lightning.pruning.parameters import prunable, prunable_weights

Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


def _episode(name: str, **checks: object) -> Callable:
    def add(function: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        entry = Importance.from_function(name, function, checks, ("loss_fn", "count"), changes_weights=True)
        IMPORTANCES.register(name)(entry)
        return function

    return add


def _lowest(weights: dict[str, Tensor], scores: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """``{name: bool}``: the ``count`` weights of lowest score over all of them."""
    keep = _unstructured_masks(weights, _global_order(weights, scores), count)
    return {n: k == 0 for n, k in keep.items()}


def _cycle(batches: list) -> Callable[[int], tuple[Tensor, Tensor]]:
    if not batches:
        raise ValueError("pruning episodes need at least one calibration batch")
    return lambda step: batches[step % len(batches)]


@_episode("greg2", pick_steps=at_least_one, pick_limit=positive, steps=at_least_one, limit=positive, lr=positive,
          ratio_limit=positive)
def _greg2(
    model: nn.Module, batches: Batches, *, loss_fn: LossFn, count: int, pick_steps: int = 30, pick_limit: float = 1e-2,
    steps: int = 100, limit: float = 1.0, lr: float = 1e-2, ratio_limit: float = 1000.0,
) -> dict[str, Tensor]:
    batch = _cycle(list(batches))
    weights = prunable_weights(model)
    optimiser = torch.optim.SGD(list(model.parameters()), lr=lr, momentum=0.9)

    def train(step: int, penalty: dict[str, Tensor | float]) -> None:
        x, y = batch(step)
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        with torch.no_grad():
            for name, w in weights.items():  # the L2 penalty's gradient, added as reg_pruner._apply_reg does
                w.grad = w.grad + penalty[name] * w if w.grad is not None else penalty[name] * w
        optimiser.step()

    for step in range(pick_steps):  # picking: a uniformly rising penalty on every weight
        train(step, dict.fromkeys(weights, pick_limit * (step + 1) / pick_steps))
    chosen = _lowest(weights, {n: w.detach().abs() for n, w in weights.items()}, count)
    if count:
        for step in range(steps):  # pruning: a rising penalty on the chosen weights only
            train(pick_steps + step, {n: limit * (step + 1) / steps * chosen[n] for n in weights})
            kept = torch.cat([w.detach().abs()[~chosen[n]] for n, w in weights.items()])
            gone = torch.cat([w.detach().abs()[chosen[n]] for n, w in weights.items()])
            if kept.mean() >= ratio_limit * gone.mean():
                break
    # the chosen weights rank lowest, so the rate's count removes exactly them
    return {n: torch.where(chosen[n], -1.0, w.detach().abs()) for n, w in weights.items()}


@_episode("asl", steps=at_least_one, weight=positive, lr=positive)
def _asl(
    model: nn.Module, batches: Batches, *, loss_fn: LossFn, count: int, steps: int = 100, weight: float = 1.0,
    lr: float = 1e-3,
) -> dict[str, Tensor]:
    batch = _cycle(list(batches))
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    target = count / total
    if count == 0:
        return {n: w.detach().abs() for n, w in weights.items()}
    # b_l = exp(t_l)·σ_l, started where erf(b_l / (σ_l √2)) is the target sparsity
    start = math.log(math.sqrt(2) * torch.erfinv(torch.tensor(target)).item())
    log_b = {n: torch.full((), start, requires_grad=True) for n in weights}
    optimiser = torch.optim.Adam([*model.parameters(), *log_b.values()], lr=lr)
    sizes = {n: w.numel() / total for n, w in weights.items()}
    for step in range(steps):
        x, y = batch(step)
        sigma = {n: w.detach().std().clamp_min(1e-12) for n, w in weights.items()}
        saved = {n: w.detach().clone() for n, w in weights.items()}
        with torch.no_grad():  # straight through: pruned in the forward pass, identity in the backward
            for n, w in weights.items():
                w.mul_((w.abs() > log_b[n].exp() * sigma[n]).to(w.dtype))
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(saved[n])
        sparsity = sum(sizes[n] * torch.erf(log_b[n].exp() / math.sqrt(2)) for n in weights)
        (weight * (sparsity - target) ** 2).backward()
        optimiser.step()
    sigma = {n: w.detach().std().clamp_min(1e-12) for n, w in weights.items()}
    return {n: w.detach().abs() / (log_b[n].detach().exp() * sigma[n]) for n, w in weights.items()}


def trained_copy(model: nn.Module, method: str, batches: Batches, rate: float, *, loss_fn: LossFn | None = None,
                 of: str = "prunable", **params: object) -> tuple[nn.Module, dict[str, Tensor]]:
    """``(copy, scores)``: a deep copy of ``model`` after the episode of ``method`` (``"greg2"`` or
    ``"asl"``) for ``rate`` (a fraction ``of`` the prunable weights or of all parameters), and the
    scores whose lowest weights :func:`~compass_lightning.pruning.prune` removes from that copy at
    ``rate``. ``model`` is never touched.

    Example:
        >>> import torch
        >>> from compass_lightning.pruning import prune, sparsity
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> trained, scores = trained_copy(net, "greg2", batches, 0.5, steps=5, pick_steps=2)
        >>> round(sparsity(prune(trained, scores, 0.5)), 2), trained is net
        (0.5, False)
    """
    entry = IMPORTANCES.lookup(method, "method")
    if not entry.changes_weights:
        raise ValueError(f"method: {method!r} ranks the weights as they are; use importance() and prune()")
    params = entry.resolve(params)
    working = copy.deepcopy(model).eval()
    count = _count(working, prunable(working), rate, of)
    for p in working.parameters():
        p.requires_grad_(True)
        p.grad = None
    with torch.inference_mode(False), torch.enable_grad():
        scores = entry.function(working, batches, loss_fn=loss_fn or nn.functional.cross_entropy, count=count, **params)
    for p in working.parameters():
        p.requires_grad_(False)
        p.grad = None
    return working, scores


class PrunedCopies:
    """The model pruned by ``method`` at any rate: one ranking of the trained weights swept over the
    rates (:class:`~compass_lightning.pruning.PruningSweep`) for the importance criteria, an episode
    per rate on a fresh copy, then that copy pruned, for the methods that train it (GReg-2, ASL).

    Args:
        model: the trained model (never touched).
        method: a name of :data:`~compass_lightning.pruning.IMPORTANCES`.
        batches: the calibration ``(inputs, targets)`` batches.
        loss_fn: the loss on the model's outputs (default: cross-entropy).
        structured: whole rows instead of single weights (importance criteria only).
        of: what a rate is a fraction of (``"prunable"`` or ``"all"``).
        params: the method's parameters.

    Example:
        >>> import torch
        >>> from compass_lightning.pruning import sparsity
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> [round(sparsity(PrunedCopies(net, m, batches).at(0.25)), 2) for m in ("magnitude", "asl")]
        [0.25, 0.25]
    """

    def __init__(self, model: nn.Module, method: str, batches: Batches, *, loss_fn: LossFn | None = None,
                 structured: bool = False, of: str = "prunable", **params: object) -> None:
        self.changes_weights = IMPORTANCES.lookup(method, "method").changes_weights
        if self.changes_weights and structured:
            raise ValueError(f"structured: {method!r} prunes single weights (GReg-2 element-wise, ASL); use structured=False")
        batches = list(batches)  # an iterator serves once: both kinds read this list
        self._episode = (model, method, batches, {"loss_fn": loss_fn, "of": of, **params})
        self._sweep = None if self.changes_weights else PruningSweep(
            model, importance(model, method, batches, loss_fn=loss_fn, **params), structured=structured, of=of)

    def at(self, rate: float) -> nn.Module:
        """The model pruned at ``rate`` (for the criteria, a working copy valid until the next call)."""
        if self._sweep is not None:
            return self._sweep.at(rate)
        model, method, batches, params = self._episode
        trained, scores = trained_copy(model, method, batches, rate, **params)
        keep = masks(trained, scores, rate, of=params["of"])
        with torch.no_grad():
            for name, entry in prunable(trained).items():
                entry.weight.mul_(keep[name])
        return trained
