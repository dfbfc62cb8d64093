"""White-box gradient attacks: FGSM, I-FGSM, PGD (L∞ and L2), MI-, DI-, TI- and SINI-FGSM.

Defaults follow torchattacks 3.5.1 (so results can be checked against it), with two exceptions:
I-FGSM's step is ``eps / steps`` (Kurakin et al., ``DESIGN.md``), and the other iterative attacks'
step ``alpha`` defaults to ``2.5 · eps / steps`` (Madry et al.) instead of a fixed 2/255. The two
agree at torchattacks' own setting (ε = 8/255, 10 steps), but a fixed step cannot reach a larger
budget (10 × 2/255 = 20/255 < 32/255), which made PGD weaker than FGSM in an ε-sweep. All take ``model`` mapping
pixel-space inputs to logits, inputs ``x`` in pixel space and integer labels ``y``, and return
``x_adv`` inside ``bounds`` and within ``eps`` of ``x`` in the attack's norm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from compass_lightning.attacks._core import (
    Model,
    check_budget,
    check_kernel_length,
    default_step,
    diverse_input,
    gaussian_blur_matrices,
    input_gradient,
    per_sample_norm,
    random_linf_start,
    register,
    sign_gradient_attack,
    ti_kernel_length,
)
from compass_lightning.engine.checks import at_least_one, check_bool, non_negative, optional, positive, probability
from compass_lightning.engine.rng import draw

Bounds = tuple[float, float]


@register("fgsm")
def fgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None) -> Tensor:  # noqa: ANN001
    """FGSM (Goodfellow et al. 2015): one step of ``eps`` along the sign of the loss gradient.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.full((3, 1, 2, 2), 0.5)
        >>> x_adv = fgsm(model, x, torch.tensor([0, 1, 0]), eps=0.1)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    eps, bounds = check_budget(eps, bounds)
    return sign_gradient_attack(model, x, y, eps=eps, alpha=eps, steps=1, bounds=bounds)


@register("ifgsm", steps=at_least_one, alpha=optional(positive))
def ifgsm(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None,
) -> Tensor:
    """I-FGSM / BIM (Kurakin et al. 2017): ``steps`` FGSM steps of ``alpha`` (default ``eps/steps``)."""
    eps, bounds = check_budget(eps, bounds)
    alpha = eps / steps if alpha is None else alpha
    return sign_gradient_attack(model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds)


@register("pgd", steps=at_least_one, alpha=optional(positive), random_start=check_bool)
def pgd(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, random_start: bool = True,
) -> Tensor:
    """PGD, L∞ (Madry et al. 2018): I-FGSM from a uniformly random start in the ε-ball."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)
    start = random_linf_start(x, eps, bounds, generator) if random_start else None
    return sign_gradient_attack(model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, start=start)


@register("pgd_l2", norm="l2", steps=at_least_one, alpha=optional(positive), random_start=check_bool)
def pgd_l2(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, random_start: bool = True,
) -> Tensor:
    """PGD, L2: steps of ``alpha`` along the L2-normalised gradient, projected onto the L2 ε-ball."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)
    x = x.detach()
    x_adv = x.clone()
    if random_start:  # a uniformly random radius along a random direction, as torchattacks does
        direction = draw(torch.randn, tuple(x.shape), generator, x)
        radius = draw(torch.rand, (len(x),), generator, x).view(-1, *([1] * (x.ndim - 1)))
        x_adv = (x_adv + direction * radius / per_sample_norm(direction) * eps).clamp(*bounds)
    for _ in range(steps):
        gradient = input_gradient(model, x_adv, y)
        x_adv = x_adv + alpha * gradient / (per_sample_norm(gradient) + 1e-10)
        delta = x_adv - x
        delta = delta * torch.clamp(eps / per_sample_norm(delta), max=1.0)
        x_adv = (x + delta).clamp(*bounds).detach()
    return x_adv


@register("mifgsm", steps=at_least_one, alpha=optional(positive), decay=non_negative)
def mifgsm(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, decay: float = 1.0,
) -> Tensor:
    """MI-FGSM (Dong et al. 2018): I-FGSM on an accumulated, L1-normalised gradient (momentum)."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)
    return sign_gradient_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, decay=decay, normalise=True
    )


_diversity = {"resize_rate": positive, "diversity_prob": probability}


@register("difgsm", steps=at_least_one, alpha=optional(positive), decay=non_negative, random_start=check_bool, **_diversity)
def difgsm(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, decay: float = 0.0, random_start: bool = False,
    resize_rate: float = 0.9, diversity_prob: float = 0.5,
) -> Tensor:
    """DI-FGSM (Xie et al. 2019): MI-FGSM whose gradient is taken through a random resize-and-pad."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)
    start = random_linf_start(x, eps, bounds, generator) if random_start else None

    def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
        return input_gradient(model, x_adv, y, lambda t: diverse_input(t, resize_rate, diversity_prob, generator))

    return sign_gradient_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient, decay=decay,
        normalise=True, start=start,
    )


@register(
    "tifgsm", steps=at_least_one, alpha=optional(positive), decay=non_negative, random_start=check_bool,
    len_kernel=check_kernel_length, nsig=positive, **_diversity,
)
def tifgsm(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, decay: float = 0.0, random_start: bool = False,
    len_kernel: int | None = None, nsig: float = 3.0, resize_rate: float = 0.9, diversity_prob: float = 0.5,
) -> Tensor:
    """TI-FGSM (Dong et al. 2019): DI-FGSM with the gradient smoothed by a Gaussian kernel
    (``len_kernel=None``: see :func:`~compass_lightning.attacks._core.ti_kernel_length`)."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)
    rows, columns = gaussian_blur_matrices(ti_kernel_length(x, len_kernel), nsig, x.shape[-2], x.shape[-1], x)
    start = random_linf_start(x, eps, bounds, generator) if random_start else None

    def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
        raw = input_gradient(model, x_adv, y, lambda t: diverse_input(t, resize_rate, diversity_prob, generator))
        return rows @ raw @ columns  # the depthwise Gaussian convolution, as two matrix products

    return sign_gradient_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient, decay=decay,
        normalise=True, start=start,
    )


@register("sinifgsm", steps=at_least_one, alpha=optional(positive), decay=non_negative, m=at_least_one)
def sinifgsm(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, decay: float = 1.0, m: int = 5,
) -> Tensor:
    """SI-NI-FGSM (Lin et al. 2020): MI-FGSM with a Nesterov look-ahead, the gradient averaged over
    ``m`` copies scaled by ``1/2^i`` (scale invariance)."""
    eps, bounds = check_budget(eps, bounds)
    alpha = default_step(eps, steps, alpha)

    def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
        x_adv = x_adv.detach().requires_grad_(True)
        ahead = x_adv + decay * alpha * momentum
        total = torch.zeros_like(x_adv)
        for i in range(m):  # m scaled copies, accumulated in the same order as the reference
            total += torch.autograd.grad(torch.nn.functional.cross_entropy(model(ahead / 2**i), y), x_adv)[0]
        return total / m

    return sign_gradient_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient, decay=decay, normalise=True
    )
