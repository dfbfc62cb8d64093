"""Path and boundary attributions no maintained library offers, written here after their papers.

* ``fast_ig`` — FIG, the single-pass approximation of integrated gradients that AI-Compass lists:
  ``x ⊙ ∂ log p_c / ∂x``, the "X-Gradient" of Hesse et al., "Fast Axiomatic Attribution for Neural
  Networks", NeurIPS 2021 (equal to IG from a black baseline for nonnegatively homogeneous
  networks), on the log-probability as in the FastIG of KxPlaug/Neural-testing, AI-Compass's code.
* ``guided_ig`` — Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path Method for
  Removing Noise", CVPR 2021: the path moves first the features with the smallest gradient, within
  ``max_dist`` of the straight line (the authors' algorithm, vectorised over the batch).
* ``agi`` — Pan et al., "Explaining Deep Neural Network Models with Adversarial Gradient
  Integration", IJCAI 2021: for ``classes`` random other classes ``j``, sign-gradient steps of ``eps``
  towards ``j`` until it is predicted, integrating ``−∇p_c ⊙ Δx`` along the way (the paper's
  accumulating path; the authors' code restarts every step from the input).
* ``big`` — Wang et al., "Robust Models Are More Interpretable Because Attributions Look Normal",
  ICML 2022: integrated gradients from the closest adversarial example found by a small set of
  attacks (PGD at several budgets and DeepFool, from :mod:`compass_lightning.attacks`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from compass_lightning.attacks import run_attack
from compass_lightning.attribution._core import Model, class_gradient, register
from compass_lightning.engine.checks import at_least_one, check_interval, check_real, check_reals, positive, probability



@register("fast_ig", source="native")
def fast_ig(model: Model, x: Tensor, target: Tensor) -> Tensor:
    """FIG: ``x ⊙ ∂ log p_target / ∂x`` in one forward and backward pass."""
    gradient, _ = class_gradient(model, x, target, log_probability=True)
    return (x.detach() * gradient).detach()


_fraction = partial(check_real, low=0.0, high=1.0, low_open=True)


@register("guided_ig", source="native", steps=at_least_one, fraction=_fraction, max_dist=probability, baseline=check_real)
def guided_ig(
    model: Model, x: Tensor, target: Tensor, *, steps: int = 128, fraction: float = 0.25, max_dist: float = 0.02,
    baseline: float = 0.0,
) -> Tensor:
    """Guided integrated gradients from a constant ``baseline``; the path is kept in float64."""
    n = len(x)
    goal = x.detach().reshape(n, -1).double()
    start = torch.full_like(goal, baseline)
    span = goal - start
    total = span.abs().sum(dim=1)
    current, attribution = start.clone(), torch.zeros_like(goal)
    rows = n
    features = goal.shape[1]
    kth = int(fraction * (features - 1)) + 1  # numpy's quantile(..., interpolation="lower"), 1-based
    for step in range(steps):
        gradient = class_gradient(model, current.view_as(x).to(x.dtype), target)[0].reshape(n, -1).double()
        alpha = (step + 1) / steps
        low, high = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_low, x_high = start + low * span, start + high * span
        remaining = total * (1 - alpha)
        guide = gradient.clone()
        active = torch.ones(rows, dtype=torch.bool, device=x.device) & (total > 0)
        for _ in range(4 * int(1 / fraction) + 8):  # the authors' while loop; it ends in ~1/fraction rounds
            if not active.any():
                break
            old = current.clone()
            position = torch.where(span == 0, torch.full_like(span, high), (current - start) / span.where(span != 0, 1))
            behind = (position < low) & active[:, None]
            current = torch.where(behind, x_low, current)
            distance = (current - goal).abs().sum(dim=1)
            reached = torch.isclose(distance, remaining, rtol=1e-9, atol=1e-9) & active
            guide = torch.where(current == x_high, torch.full_like(guide, float("inf")), guide)
            threshold = guide.abs().kthvalue(kth, dim=1, keepdim=True).values
            chosen = (guide.abs() <= threshold) & torch.isfinite(guide) & (active & ~reached)[:, None]
            movable = ((current - x_high).abs() * chosen).sum(dim=1)
            gamma = torch.where(movable > 0, (distance - remaining) / movable.clamp_min(1e-300), torch.full_like(movable, float("inf")))
            whole = chosen & (gamma > 1)[:, None]
            part = chosen & (gamma <= 1)[:, None]
            current = torch.where(whole, x_high, current)
            current = torch.where(part, current + gamma[:, None] * (x_high - current), current)
            attribution += (current - old) * gradient
            active = active & ~reached & (gamma > 1)
    return attribution.view_as(x).to(x.dtype)


def agi_paths(
    model: Model, x: Tensor, target: Tensor, *, eps: float = 0.05, steps: int = 20, classes: int = 20,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor]:
    """AGI's attribution, the end of every path ``(k, N, ...)`` and the ``k`` classes aimed at.

    A sample whose own target is the class aimed at takes no path (its end is the input).
    """
    x = x.detach()
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    aims = torch.randperm(num_classes, device=x.device)[: min(classes, num_classes)]
    attribution = torch.zeros_like(x)
    ends = []
    for aim in aims.tolist():
        current = x.clone()
        active = target != aim
        for _ in range(steps):
            current = current.detach().requires_grad_(True)
            probabilities = model(current).softmax(dim=1)
            active = active & (probabilities.argmax(dim=1) != aim)
            if not active.any():
                break
            towards = torch.autograd.grad(probabilities[:, aim].sum(), current, retain_graph=True)[0]
            truth = torch.autograd.grad(probabilities.gather(1, target.view(-1, 1)).sum(), current)[0]
            moved = (current + eps * towards.sign()).clamp(*bounds)
            keep = active.view(-1, *([1] * (x.ndim - 1)))
            attribution += torch.where(keep, -truth * (moved - current), torch.zeros_like(x)).detach()
            current = torch.where(keep, moved, current)
        ends.append(current.detach())
    return attribution, torch.stack(ends), aims


@register("agi", source="native", explains="label", eps=positive, steps=at_least_one, classes=at_least_one,
          bounds=partial(check_interval, finite=False))
def agi(
    model: Model, x: Tensor, target: Tensor, *, eps: float = 0.05, steps: int = 20, classes: int = 20,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Adversarial gradient integration over up to ``classes`` random other classes (see
    :func:`agi_paths`); the monitors explain the true class with it, as the paper's Eq. 8 does."""
    return agi_paths(model, x, target, eps=eps, steps=steps, classes=classes, bounds=bounds)[0]


@register("agi_predicted", source="native", eps=positive, steps=at_least_one, classes=at_least_one,
          bounds=partial(check_interval, finite=False))
def agi_predicted(
    model: Model, x: Tensor, target: Tensor, *, eps: float = 0.05, steps: int = 20, classes: int = 20,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """:func:`agi` of the class the model predicts (a variant: the paper explains the true class)."""
    return agi_paths(model, x, target, eps=eps, steps=steps, classes=classes, bounds=bounds)[0]


def boundary_baselines(
    model: Model, x: Tensor, target: Tensor, *, eps: tuple[float, ...], bounds: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """For every sample, the closest (L2) input that is no longer classified as ``target``, among
    PGD at each budget of ``eps`` and DeepFool; and whether one was found (else the input itself)."""
    candidates = [run_attack("pgd", model, x, target, eps=e, bounds=bounds, random_start=False) for e in eps]
    candidates.append(run_attack("deepfool", model, x, target, eps=float("inf"), bounds=bounds))
    best, best_distance = x.detach().clone(), torch.full((len(x),), float("inf"), device=x.device)
    with torch.no_grad():
        for candidate in candidates:
            crossed = model(candidate).argmax(dim=1) != target
            distance = torch.where(crossed, (candidate - x).flatten(1).norm(dim=1), torch.full_like(best_distance, float("inf")))
            closer = distance < best_distance
            best = torch.where(closer.view(-1, *([1] * (x.ndim - 1))), candidate, best)
            best_distance = torch.minimum(best_distance, distance)
    return best, torch.isfinite(best_distance)


@register("big", source="native", eps=partial(check_reals, low=0.0, low_open=True, finite=False), steps=at_least_one,
          bounds=partial(check_interval, finite=False))
def big(
    model: Model, x: Tensor, target: Tensor, *, eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255),
    steps: int = 50, bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Boundary-based integrated gradients: IG (Captum) from :func:`boundary_baselines`. Where no
    attack crosses the boundary the baseline is the input itself and the attribution is zero."""
    from captum.attr import IntegratedGradients

    baselines, _ = boundary_baselines(model, x, target, eps=tuple(eps), bounds=bounds)
    return IntegratedGradients(model).attribute(x, baselines=baselines, target=target, n_steps=steps).detach()
