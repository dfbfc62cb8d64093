"""Square Attack (Andriushchenko et al. 2020): a score-based black-box attack by random squares.

It never takes a gradient: from a start of vertical stripes (L∞) or of ±square patterns (L2) at the
edge of the ε-ball, each query proposes a change in one square window — its side shrinking with
the schedule of ``p_init`` — and keeps it for the samples whose margin loss ``z_y - max_{j≠y} z_j``
fell (or that it misclassifies). A model that hides its gradients cannot hide from it, which makes
it AutoAttack's check for gradient masking (:mod:`~compass_lightning.attacks.masking`).

Only samples classified correctly are attacked, and each query runs on the samples not fooled yet
(one host sync per query to pick them: the work then shrinks as they break). Written natively, the
iteration is the authors' as torchattacks 3.5.1 ports it (one window position and one set of
per-channel signs per query for the whole batch), with its random draws in the same order, so with
the same seed it returns the same examples (tested); ``bounds`` replaces its fixed ``[0, 1]``.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    >>> x, y = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    >>> x_adv = square(model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0), queries=50)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from compass_lightning.attacks._core import Model, best_other_logit, check_budget, l2_norms, register
from compass_lightning.engine.checks import at_least_one, check_bool, check_choice, probability
from compass_lightning.engine.rng import draw

Bounds = tuple[float, float]
LOSSES = ("margin", "ce")


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return (2 * draw(torch.rand, shape, generator, like) - 1).sign()


def _position(high: int, generator: torch.Generator | None, like: Tensor) -> int:
    return int(high * draw(torch.rand, (1,), generator, like))  # the reference's low + (high - low) * rand, truncated


def _p_schedule(query: int, queries: int, p_init: float, rescale: bool) -> float:
    """The share of the image a window covers at ``query``: ``p_init`` halved at fixed query counts
    (of a 10 000-query budget, rescaled to ``queries`` when ``rescale``)."""
    at = int(query / queries * 10000) if rescale else query
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if at <= bound:
            return p_init / divisor
    return p_init / 512


def _margin_and_loss(model: Model, x: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        logits = model(x)
    margin = logits[torch.arange(len(y), device=y.device), y] - best_other_logit(logits, y)
    if loss == "ce":
        return margin, -torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return margin, margin


@functools.lru_cache(maxsize=64)
def _pattern(side: int, dtype: torch.dtype) -> Tensor:
    """The L2 attack's square pattern, before its random transposition: concentric rings of ``+``
    over ``-``, unit norm (the same for every query of a side, so it is made once)."""
    delta = torch.cat([_rectangles(side // 2, side, dtype), -_rectangles(side - side // 2, side, dtype)])
    return delta / delta.pow(2).sum().sqrt()


def _rectangles(rows: int, columns: int, dtype: torch.dtype) -> Tensor:
    delta = torch.zeros(rows, columns, dtype=dtype)
    r, c = rows // 2, columns // 2
    for ring in range(max(rows // 2 + 1, columns // 2 + 1)):
        delta[max(r, 0):min(r + 2 * ring + 1, rows), max(0, c):min(c + 2 * ring + 1, columns)] += 1.0 / (ring + 1) ** 2
        r, c = r - 1, c - 1
    return delta / delta.pow(2).sum().sqrt()


def _eta(side: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """:func:`_pattern`, transposed at random, on ``like``'s device."""
    delta = _pattern(side, like.dtype)
    transpose = bool(draw(torch.rand, (1,), generator, like) > 0.5)
    return (delta.T if transpose else delta).to(like.device)


def _l2_start(x: Tensor, eps: float, bounds: Bounds, generator: torch.Generator | None) -> Tensor:
    n, c, h, _ = x.shape
    side = h // 5
    delta = torch.zeros_like(x)
    start = (h - side * 5) // 2
    for row in range(h // side):
        for column in range(x.shape[3] // side):
            top, left = start + row * side, start + column * side
            pattern = _eta(side, generator, x).view(1, 1, side, side)
            delta[:, :, top:top + side, left:left + side] += pattern * _signs((n, c, 1, 1), generator, x)
    return (x + delta / (l2_norms(delta) + 1e-12) * eps).clamp(*bounds)


def _l2_proposal(x: Tensor, best: Tensor, eps: float, p: float, bounds: Bounds, generator: torch.Generator | None) -> Tensor:
    n, c, h, w = x.shape
    side = max(int(round(math.sqrt(p * c * h * w / c))), 3)
    side += 1 - side % 2  # odd
    top, left = _position(h - side, generator, x), _position(w - side, generator, x)
    top2, left2 = _position(h - side, generator, x), _position(w - side, generator, x)
    delta = best - x
    window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
    window2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
    norm_window = delta[window].pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
    mask = torch.zeros_like(x)
    mask[window] = 1.0
    mask[window2] = 1.0
    norm_image, norm_windows = l2_norms(delta), l2_norms(delta * mask)
    new = torch.ones(n, c, side, side, device=x.device, dtype=x.dtype)
    new = new * _eta(side, generator, x).view(1, 1, side, side) * _signs((n, c, 1, 1), generator, x)
    new = new + delta[window] / (1e-12 + norm_window)
    room = (torch.clamp_min(torch.full_like(new, eps) ** 2 - norm_image**2, 0.0) / c + norm_windows**2).sqrt()
    new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * room
    delta[window2] = 0.0
    delta[window] = new
    return (x + delta / (l2_norms(delta) + 1e-12) * eps).clamp(*bounds)


def _linf_proposal(x: Tensor, best: Tensor, eps: float, p: float, bounds: Bounds, generator: torch.Generator | None) -> Tensor:
    _, c, h, w = x.shape
    side = max(int(round(math.sqrt(p * c * h * w / c))), 1)
    top, left = _position(h - side, generator, x), _position(w - side, generator, x)
    change = torch.zeros(c, h, w, device=x.device, dtype=x.dtype)
    change[:, top:top + side, left:left + side] = 2.0 * eps * _signs((c, 1, 1), generator, x)
    return torch.minimum(torch.maximum(best + change, x - eps), x + eps).clamp(*bounds)


def square_search(
    model: Model, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds: Bounds, generator: torch.Generator | None,
    queries: int, p_init: float, loss: str, rescale: bool,
) -> tuple[Tensor, Tensor]:
    """One Square run on samples ``x`` with labels ``y``: the best point of each and its number of queries."""
    if x.ndim != 4:
        raise ValueError(f"square attacks image batches (N, C, H, W), got inputs of shape {tuple(x.shape)}")
    if norm == "linf":
        best = (x + eps * _signs((len(x), x.shape[1], 1, x.shape[3]), generator, x)).clamp(*bounds)
    else:
        best = _l2_start(x, eps, bounds, generator)
    margin, objective = _margin_and_loss(model, best, y, loss)
    used = torch.ones(len(x), device=x.device)
    propose = _linf_proposal if norm == "linf" else _l2_proposal
    for query in range(queries):
        index = (margin > 0.0).nonzero().flatten()  # the samples not fooled yet
        if len(index) == 0:
            break
        x_now, best_now = x[index], best[index]
        candidate = propose(x_now, best_now, eps, _p_schedule(query, queries, p_init, rescale), bounds, generator)
        new_margin, new_objective = _margin_and_loss(model, candidate, y[index], loss)
        lower = new_objective < objective[index]
        objective[index] = torch.where(lower, new_objective, objective[index])
        keep = lower | (new_margin <= 0.0)
        margin[index] = torch.where(keep, new_margin, margin[index])
        best[index] = torch.where(keep.view(-1, 1, 1, 1), candidate, best_now)
        used[index] += 1.0
    return best, used


@register("square", queries=at_least_one, p_init=probability, restarts=at_least_one,
          loss=lambda name, value: check_choice(name, value, LOSSES), rescale=check_bool)
def square(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    queries: int = 1000, p_init: float = 0.8, restarts: int = 1, loss: str = "margin", rescale: bool = True,
) -> Tensor:
    """Square Attack, L∞, with a budget of ``queries`` forward passes per sample and restart
    (AutoAttack's standard evaluation uses 5000; 1000 here, sized for monitoring)."""
    return square_attack(model, x, y, eps=eps, norm="linf", bounds=bounds, generator=generator, queries=queries,
                         p_init=p_init, restarts=restarts, loss=loss, rescale=rescale)


@register("square_l2", norm="l2", queries=at_least_one, p_init=probability, restarts=at_least_one,
          loss=lambda name, value: check_choice(name, value, LOSSES), rescale=check_bool)
def square_l2(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    queries: int = 1000, p_init: float = 0.8, restarts: int = 1, loss: str = "margin", rescale: bool = True,
) -> Tensor:
    """Square Attack, L2 (see :func:`square`)."""
    return square_attack(model, x, y, eps=eps, norm="l2", bounds=bounds, generator=generator, queries=queries,
                         p_init=p_init, restarts=restarts, loss=loss, rescale=rescale)


def square_attack(
    model: Model, x: Tensor, y: Tensor, *, eps: float, norm: str, bounds: Bounds, generator: torch.Generator | None,
    queries: int, p_init: float, restarts: int, loss: str, rescale: bool,
) -> Tensor:
    """Square with ``restarts`` runs, each on the samples still classified correctly; the inputs
    with every fooled sample replaced by its adversarial example."""
    eps, bounds = check_budget(eps, bounds)
    x, adv = x.detach(), x.detach().clone()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    for _ in range(restarts):
        index = correct.nonzero().squeeze(1)
        if len(index) == 0:
            break
        found, _ = square_search(model, x[index], y[index], eps=eps, norm=norm, bounds=bounds, generator=generator,
                                 queries=queries, p_init=p_init, loss=loss, rescale=rescale)
        with torch.no_grad():
            fooled = model(found).argmax(1) != y[index]
        adv[index[fooled]] = found[fooled]
        correct[index[fooled]] = False
    return adv
