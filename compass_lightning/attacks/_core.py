"""What every attack shares: the registry, the loss gradient, projections and the sign-gradient loop.

Attacks are written natively in torch: the maintained libraries flatten train/eval state, fill
parameter gradients (``loss.backward()``), work in numpy or fix the device. Here gradients are
taken with ``torch.autograd.grad`` with respect to the input only, everything stays on the
input's device, and the caller's guard owns the model's modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from compass_lightning.engine.checks import check_int, check_interval, check_real
from compass_lightning.engine.registry import Check, Operation, Registry
from compass_lightning.engine.rng import draw, randint

Model = Callable[[Tensor], Tensor]
Gradient = Callable[[Tensor, Tensor], Tensor]  # (x_adv, momentum) -> gradient to ascend


@dataclass(frozen=True)
class Attack(Operation):
    """A registered attack: its function, parameters, norm (``"linf"`` or ``"l2"``) and role.

    Example:
        >>> ATTACKS["pgd"].norm, ATTACKS["pgd"].defaults["steps"], ATTACKS["ssa"].transfer
        ('linf', 10, True)
    """

    kind: str = "attack"
    norm: str = "linf"
    transfer: bool = False  # meant to be crafted on a surrogate and transferred
    layer_default: str | None = None  # for attacks with a `layer` parameter: "last" or "middle" Conv2d
    #: ``details(model, x, y, **same) -> (x_adv, per-sample rows)`` for attacks that report more than
    #: their examples (the AutoAttack cascade: which attack broke each sample, its cost)
    details: Callable | None = None
    metrics: tuple[str, ...] = ()  # the metrics the rows of ``details`` add to the logged ones


ATTACKS: Registry[Attack] = Registry("attack")

RESERVED = ("eps", "bounds", "generator")

def register(
    name: str, *, norm: str = "linf", transfer: bool = False, layer_default: str | None = None,
    details: Callable | None = None, metrics: tuple[str, ...] = (), **checks: Check
) -> Callable:
    """Decorator adding an attack to :data:`ATTACKS`; its parameters are its keyword-only arguments."""

    def add(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        attack = Attack.from_function(
            name, function, checks, RESERVED, norm=norm, transfer=transfer, layer_default=layer_default,
            details=details, metrics=metrics,
        )
        ATTACKS.register(name)(attack)
        return function

    return add


def default_step(eps: float, steps: int, alpha: float | None) -> float:
    """``alpha``, or Madry et al.'s ``2.5 · eps / steps``: enough to reach the budget from anywhere in it."""
    return 2.5 * eps / steps if alpha is None else alpha


def check_budget(eps: float, bounds: tuple[float, float]) -> tuple[float, tuple[float, float]]:
    """``eps >= 0`` (``inf`` allowed for minimal-norm attacks) and ``bounds`` low < high."""
    return check_real("eps", eps, low=0.0, finite=False), check_interval("bounds", bounds, finite=False)


def input_gradient(model: Model, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Gradient of the mean cross-entropy of ``model(transform(x))`` with respect to ``x`` only."""
    x = x.detach().requires_grad_(True)
    logits = model(transform(x) if transform is not None else x)
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    return gradient


def linf_project(x_adv: Tensor, x: Tensor, eps: float, bounds: tuple[float, float]) -> Tensor:
    """Back into the L∞ ball of radius ``eps`` around ``x``, then into ``bounds``."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(*bounds)


def per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of every sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


def l2_norms(t: Tensor) -> Tensor:
    """L2 norm of every sample as ``sqrt(sum(t²))``, shaped to broadcast against ``t``: the formula of
    the APGD and Square references, kept so that their examples agree bit for bit."""
    return t.flatten(1).pow(2).sum(1).sqrt().view(-1, *([1] * (t.ndim - 1)))


def best_other_logit(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j≠y} z_j`` per sample (the true class set to −∞, not to 0)."""
    rows = torch.arange(len(y), device=y.device)
    return logits.index_put((rows, y), torch.tensor(float("-inf"), device=logits.device)).amax(1)


def random_linf_start(x: Tensor, eps: float, bounds: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    """A uniformly random point of the L∞ ball around ``x``, inside ``bounds``."""
    return (x + eps * (2 * draw(torch.rand, tuple(x.shape), generator, x) - 1)).clamp(*bounds)


def normalise_l1(gradient: Tensor) -> Tensor:
    """``gradient`` divided by its per-sample mean absolute value (MI-FGSM's normalisation)."""
    scale = gradient.abs().mean(dim=tuple(range(1, gradient.ndim)), keepdim=True)
    return gradient / scale.clamp_min(torch.finfo(gradient.dtype).tiny)  # an all-zero gradient stays zero


def sign_gradient_attack(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    bounds: tuple[float, float],
    gradient: Gradient | None = None,
    decay: float = 0.0,
    normalise: bool = False,
    start: Tensor | None = None,
) -> Tensor:
    """The loop of every L∞ iterative attack: ``steps`` sign steps of size ``alpha``, projected.

    Each step takes ``gradient(x_adv, momentum)`` (default: the cross-entropy input gradient),
    optionally divides it by its mean absolute value, adds ``decay`` times the previous direction
    (momentum), and moves ``alpha`` along its sign.
    """
    x = x.detach()
    gradient = gradient or (lambda x_adv, momentum: input_gradient(model, x_adv, y))
    x_adv = x.clone() if start is None else start.detach()
    momentum = torch.zeros_like(x)
    for _ in range(steps):
        direction = gradient(x_adv, momentum)
        if normalise:
            direction = normalise_l1(direction)
        momentum = direction + momentum * decay
        x_adv = linf_project(x_adv + alpha * momentum.sign(), x, eps, bounds).detach()
    return x_adv


def diverse_input(
    x: Tensor, resize_rate: float, diversity_prob: float, generator: torch.Generator | None
) -> Tensor:
    """DI-FGSM's input diversity: with probability ``diversity_prob``, resize the batch to a random
    size between ``resize_rate`` and 1 of the image and pad it back with zeros at a random offset
    (one draw for the whole batch, as in the paper's code and torchattacks)."""
    if diversity_prob == 0.0 or float(draw(torch.rand, (1,), generator, x)) >= diversity_prob:
        return x
    side = x.shape[-1]
    low, high = sorted((int(side * resize_rate), side))
    if low == high:
        return x
    size = randint(low, high, generator)
    rescaled = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False)
    top, left = randint(0, high - size, generator), randint(0, high - size, generator)
    return F.pad(rescaled, [left, high - size - left, top, high - size - top], value=0.0)


def gaussian_blur_matrices(length: int, nsig: float, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """TI-FGSM's Gaussian smoothing as two band matrices: ``rows @ g @ columns`` equals the depthwise
    convolution of every channel of ``g`` (``(..., height, width)``) with the ``length x length``
    Gaussian kernel summing to 1 (torchattacks' kernel), zero-padded to the input's size.

    The kernel is separable, and a separable convolution is two matrix products, which a CPU runs far
    faster than a large-kernel depthwise convolution (64 x 3x32x32 gradients, 15x15 kernel: 13.7 ms
    for the convolution against about 1 ms here), so smoothing no longer costs TI-FGSM a tenth of a pass.

    Example:
        >>> g = torch.rand(2, 3, 9, 7)
        >>> rows, columns = gaussian_blur_matrices(5, 3.0, 9, 7, g)
        >>> t = torch.linspace(-3.0, 3.0, 5)
        >>> kernel = torch.outer(torch.exp(-t**2 / 2), torch.exp(-t**2 / 2))
        >>> kernel = (kernel / kernel.sum()).expand(3, 1, 5, 5)
        >>> torch.allclose(rows @ g @ columns, torch.nn.functional.conv2d(g, kernel, padding="same", groups=3), atol=1e-6)
        True
    """
    t = torch.linspace(-nsig, nsig, length, dtype=torch.float64)
    profile = torch.exp(-0.5 * t**2)
    profile = profile / profile.sum()
    left = (length - 1) // 2  # the padding "same" puts before the input

    def band(n: int) -> Tensor:
        offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + left  # kernel tap joining output i to input j
        inside = (offset >= 0) & (offset < length)
        return torch.where(inside, profile[offset.clamp(0, length - 1)], torch.zeros((), dtype=torch.float64))

    return band(height).to(like), band(width).T.contiguous().to(like)


def check_kernel_length(name: str, value: int | None) -> int | None:
    """A TI kernel length: ``None`` (:func:`ti_kernel_length` chooses) or an odd integer >= 1."""
    if value is not None and (check_int(name, value, minimum=1) % 2 == 0):
        raise ValueError(f"{name} must be an odd integer >= 1, got {value}")
    return value


def ti_kernel_length(x: Tensor, length: int | None) -> int:
    """TI's kernel length: ``length``, or for ``None`` 15 (the paper's and torchattacks' choice for
    224-pixel images) capped at the largest odd length at most half the image side, so small
    images are not blurred flat.

    Example:
        >>> ti_kernel_length(torch.zeros(1, 3, 224, 224), None), ti_kernel_length(torch.zeros(1, 1, 8, 8), None)
        (15, 3)
    """
    if length is not None:
        return length
    half = min(x.shape[-2:]) // 2
    return max(1, min(15, half if half % 2 else half - 1))


def dct_matrix(n: int, like: Tensor) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ v`` transforms, ``D.T @ V`` inverts)."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(device=like.device, dtype=like.dtype)
