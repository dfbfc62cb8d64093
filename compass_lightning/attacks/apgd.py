"""APGD (Croce & Hein 2020): PGD with a step size it halves itself, momentum and checkpoints.

Auto-PGD is the white-box half of AutoAttack: each sample starts with step ``2ε`` and, at
checkpoints that come closer together as the search goes on (first after ``0.22·steps``
iterations, then shrinking by ``0.03·steps`` to at least ``0.06·steps``), halves its own step when
its loss rose in fewer than ``rho`` of the iterations since the last checkpoint, or when its best
loss did not improve and the step was not halved last time; a halved sample restarts from its best
point. Each step mixes the projected gradient step with the previous move (momentum 0.75).

Three losses, each an attack name, in L∞ and L2 (``_l2``):

============== ================================================================================
apgd_ce        cross-entropy
apgd_dlr       the Difference of Logits Ratio ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3)`` (scale
               invariant: a model that only rescales its logits cannot mask it)
apgd_t         targeted DLR ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``, run once per target
               ``t``: the 2nd, 3rd, ... most likely clean class (``targets`` of them)
============== ================================================================================

Written natively and batched because the references are not usable in a training loop (see
``_core``): the iteration is the authors' (``fra31/auto-attack``) as torchattacks 3.5.1 ports it,
so with the same seed it returns the same examples (tested), with two quirks of the reference kept
on purpose so that it does: the first checkpoint compares the first loss with a not-yet-written
zero (it counts as a rise when the loss is positive), and only samples the model classifies
correctly are attacked (a misclassified sample is returned unchanged, it is already "broken").
Every check of the step is a tensor operation, so the loop never waits for the device.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    >>> x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    >>> x_adv = apgd_ce(model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6), bool(((x_adv >= 0) & (x_adv <= 1)).all())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compass_lightning.attacks._core import Model, check_budget, l2_norms, register
from compass_lightning.engine.checks import at_least_one, probability
from compass_lightning.engine.rng import draw

Bounds = tuple[float, float]
Loss = Callable[[Tensor, Tensor], Tensor]  # (logits, y) -> per-sample loss to ascend


def _classes(logits: Tensor, needed: int, name: str) -> None:
    if logits.shape[1] < needed:
        raise ValueError(f"{name} needs a model with at least {needed} classes (its loss divides by gaps between "
                         f"the largest logits); this one has {logits.shape[1]}: use apgd_ce")


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """The per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The Difference of Logits Ratio, per sample: ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3 + 1e-12)``.

    Example:
        >>> dlr_loss(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), torch.tensor([0])).item()
        -0.6666666865348816
    """
    ordered, order = logits.sort(dim=1)
    top_is_y = (order[:, -1] == y).to(logits.dtype)
    rows = torch.arange(len(y), device=y.device)
    best_other = ordered[:, -2] * top_is_y + ordered[:, -1] * (1.0 - top_is_y)
    return -(logits[rows, y] - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR, per sample: ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2 + 1e-12)``."""
    ordered = logits.sort(dim=1)[0]
    rows = torch.arange(len(y), device=y.device)
    return -(logits[rows, y] - logits[rows, target]) / (ordered[:, -1] - 0.5 * ordered[:, -3] - 0.5 * ordered[:, -4] + 1e-12)


def _per_sample(t: Tensor) -> tuple[int, ...]:
    return (-1, *([1] * (t.ndim - 1)))


def _project_l2(x: Tensor, point: Tensor, eps: float, bounds: Bounds, slack: float) -> Tensor:
    # the reference's L2 projection (slack: it adds 1e-12 to the norm in the second of its two calls)
    delta = point - x
    norm = l2_norms(delta)
    return (x + delta / (norm + 1e-12) * torch.clamp(norm + slack, max=eps)).clamp(*bounds)


def _gradient(model: Model, x_adv: Tensor, y: Tensor, loss: Loss) -> tuple[Tensor, Tensor, Tensor]:
    """The per-sample loss, its input gradient (of the sum, as the reference) and the logits."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        per_sample = loss(logits, y)
        (gradient,) = torch.autograd.grad(per_sample.sum(), x_adv)
    return per_sample.detach(), gradient.detach(), logits.detach()


def apgd_run(
    model: Model, x: Tensor, y: Tensor, loss: Loss, *, eps: float, norm: str, steps: int, rho: float,
    bounds: Bounds, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One APGD run from a random start: the last iterate that fooled the model (the start if none
    did) and whether each sample is still classified correctly after it."""
    steps_first, steps_min, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    shape = _per_sample(x)
    if norm == "linf":
        t = 2 * draw(torch.rand, tuple(x.shape), generator, x) - 1
        x_adv = x + eps * t / t.flatten(1).abs().amax(dim=1).view(shape)
    else:
        t = draw(torch.randn, tuple(x.shape), generator, x)
        x_adv = x + eps * t / (l2_norms(t) + 1e-12)
    x_adv = x_adv.clamp(*bounds)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    losses = torch.zeros(steps, len(x), device=x.device, dtype=x.dtype)
    loss_best, gradient, logits = _gradient(model, x_adv, y, loss)
    gradient_best = gradient.clone()
    correct = logits.argmax(1) == y
    step = torch.full((len(x), *shape[1:]), 2.0 * eps, device=x.device, dtype=x.dtype)  # per sample
    x_previous = x_adv.clone()
    k, since_check = steps_first, 0
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(steps):
        move, x_previous = x_adv - x_previous, x_adv
        a = 0.75 if i > 0 else 1.0
        if norm == "linf":
            stepped = torch.minimum(torch.maximum(x_adv + step * gradient.sign(), x - eps), x + eps).clamp(*bounds)
            mixed = x_adv + (stepped - x_adv) * a + move * (1 - a)
            x_adv = torch.minimum(torch.maximum(mixed, x - eps), x + eps).clamp(*bounds)
        else:
            stepped = _project_l2(x, x_adv + step * gradient / (l2_norms(gradient) + 1e-12), eps, bounds, 0.0)
            x_adv = _project_l2(x, x_adv + (stepped - x_adv) * a + move * (1 - a), eps, bounds, 1e-12)
        current, gradient, logits = _gradient(model, x_adv, y, loss)
        predicted_right = logits.argmax(1) == y
        correct = correct & predicted_right
        x_best_adv = torch.where(predicted_right.view(shape), x_best_adv, x_adv)
        losses[i] = current
        improved = current > loss_best
        x_best = torch.where(improved.view(shape), x_adv, x_best)
        gradient_best = torch.where(improved.view(shape), gradient, gradient_best)
        loss_best = torch.where(improved, current, loss_best)
        since_check += 1
        if since_check == k:
            # rises among the last k losses; index -1 reads the last row, still zero (the reference's quirk)
            later = torch.arange(i, i - k, -1, device=x.device)
            rises = (losses[later] > losses[(later - 1) % steps]).sum(0)
            halve = (rises <= k * rho) | (~halved_at_check & (best_at_check >= loss_best))
            halved_at_check, best_at_check = halve, loss_best.clone()
            step = torch.where(halve.view(shape), step / 2.0, step)
            x_adv = torch.where(halve.view(shape), x_best, x_adv)
            gradient = torch.where(halve.view(shape), gradient_best, gradient)
            since_check, k = 0, max(k - decrease, steps_min)
    return x_best_adv, correct


def apgd(
    model: Model, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds: Bounds, generator: torch.Generator | None,
    steps: int, restarts: int, rho: float, loss: str, targets: int = 0,
) -> Tensor:
    """APGD with ``restarts`` random restarts (``targets`` target classes for ``loss="targeted"``),
    each run on the samples still classified correctly; returns the inputs with every fooled sample
    replaced by its adversarial example."""
    eps, bounds = check_budget(eps, bounds)
    x, adv = x.detach(), x.detach().clone()
    with torch.no_grad():
        clean_logits = model(x)
    correct = clean_logits.argmax(1) == y
    if loss == "dlr":
        _classes(clean_logits, 3, "apgd_dlr")
    if loss == "targeted":
        _classes(clean_logits, 4, "apgd_t")
    ranks = range(2, min(targets, clean_logits.shape[1] - 1) + 2) if loss == "targeted" else [None]
    for rank in ranks:
        for _ in range(restarts):
            index = correct.nonzero().squeeze(1)  # one host sync per run: the samples still to fool
            if len(index) == 0:
                return adv
            x_run, y_run = x[index], y[index]
            if rank is None:
                objective: Loss = cross_entropy if loss == "ce" else dlr_loss
            else:
                with torch.no_grad():
                    target = model(x_run).sort(dim=1)[1][:, -rank]  # the rank-th most likely clean class
                objective = lambda logits, labels, _t=target: targeted_dlr_loss(logits, labels, _t)  # noqa: E731
            found, still = apgd_run(model, x_run, y_run, objective, eps=eps, norm=norm, steps=steps, rho=rho,
                                    bounds=bounds, generator=generator)
            fooled = ~still
            adv[index[fooled]] = found[fooled]
            correct[index[fooled]] = False
    return adv


_checks = {"steps": at_least_one, "restarts": at_least_one, "rho": probability}


def _register(name: str, norm: str, loss: str) -> None:
    def attack(
        model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
        steps: int = 10, restarts: int = 1, rho: float = 0.75,
    ) -> Tensor:
        return apgd(model, x, y, eps=eps, norm=norm, bounds=bounds, generator=generator, steps=steps,
                    restarts=restarts, rho=rho, loss=loss)

    def targeted(
        model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
        steps: int = 10, restarts: int = 1, rho: float = 0.75, targets: int = 9,
    ) -> Tensor:
        return apgd(model, x, y, eps=eps, norm=norm, bounds=bounds, generator=generator, steps=steps,
                    restarts=restarts, rho=rho, loss=loss, targets=targets)

    function = targeted if loss == "targeted" else attack
    function.__name__ = function.__qualname__ = name
    function.__doc__ = (f"APGD with the {'targeted DLR' if loss == 'targeted' else loss.upper()} loss, "
                        f"{'L2' if norm == 'l2' else 'L∞'} (see the module docstring).")
    globals()[name] = register(name, norm=norm, **_checks, **({"targets": at_least_one} if loss == "targeted" else {}))(function)


for _norm, _suffix in (("linf", ""), ("l2", "_l2")):
    for _loss, _stem in (("ce", "apgd_ce"), ("dlr", "apgd_dlr"), ("targeted", "apgd_t")):
        _register(_stem + _suffix, _norm, _loss)
