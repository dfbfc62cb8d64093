"""Transfer-oriented attacks, meant to be crafted on a surrogate model: SSA, NAA, ATA and TI-ATA.

None of the maintained attack libraries has all three; they are written here after their papers:

* SSA — Long et al., "Frequency Domain Model Augmentation for Adversarial Attack", ECCV 2022
  (S²I-FGSM): the gradient is averaged over spectrum-simulated copies
  ``IDCT(DCT(x + ξ) ⊙ M)``, ``ξ ~ N(0, σ²)``, ``M ~ U(1 − ρ, 1 + ρ)``; as in the authors' code, each
  copy's gradient is taken at the transformed image.
* NAA — Zhang et al., "Improving Adversarial Transferability via Neuron Attribution-Based
  Attacks", CVPR 2022: neuron weights ``W`` = the gradient of the true class' softmax probability
  with respect to a middle layer ``y``, averaged along the path from a black image to ``x``
  (``N`` steps); MI-FGSM then *minimises* the weighted attribution
  ``Σ max(A, 0) + γ·Σ min(A, 0)`` of ``A = (y(x') − y(black))·W``.
* ATA — Wu et al., "Boosting the Transferability of Adversarial Samples via Attention", CVPR 2020
  (thesis ch. 4): BIM (``K = 5`` steps of ``ε/K``) on ``CE + λ·‖Ĥ(x') − Ĥ(x)‖²`` where ``Ĥ`` is the
  Grad-CAM attention of the true class at the last conv layer (channel weights from the
  probability gradient scaled to [−1, 1]). The thesis does not report λ; here each map is scaled
  to a maximum of 1 and the distance is a mean over positions, so both terms are of order 1 and
  ``weight=1`` roughly balances them, as the thesis describes its choice. ``ti_ata`` is its
  combination with TI (thesis Eq. 4.9): the gradient convolved with TI-FGSM's Gaussian kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compass_lightning.attacks._core import (
    Model,
    check_budget,
    check_kernel_length,
    dct_matrix,
    gaussian_blur_matrices,
    input_gradient,
    register,
    sign_gradient_attack,
    ti_kernel_length,
)
from compass_lightning.engine.checks import at_least_one, module_name, non_negative, optional, positive, probability
from compass_lightning.engine.layers import capture
from compass_lightning.engine.sites import layer_site
from compass_lightning.engine.rng import draw

Bounds = tuple[float, float]


@register(
    "ssa", transfer=True, steps=at_least_one, alpha=optional(positive), copies=at_least_one, rho=probability,
    sigma=optional(non_negative), decay=non_negative,
)
def ssa(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    steps: int = 10, alpha: float | None = None, copies: int = 20, rho: float = 0.5, sigma: float | None = None,
    decay: float = 0.0,
) -> Tensor:
    """Spectrum simulation attack; ``alpha`` defaults to ``eps/steps``, ``sigma`` to ``eps``
    (the paper's 16/255 at ε = 16/255), ``decay > 0`` adds MI-FGSM momentum."""
    eps, bounds = check_budget(eps, bounds)
    alpha = eps / steps if alpha is None else alpha
    sigma = eps if sigma is None else sigma
    rows, columns = dct_matrix(x.shape[-2], x), dct_matrix(x.shape[-1], x)

    def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
        total = torch.zeros_like(x_adv)
        for _ in range(copies):  # one copy at a time keeps memory at one batch
            noisy = x_adv + sigma * draw(torch.randn, tuple(x.shape), generator, x)
            mask = 1 - rho + 2 * rho * draw(torch.rand, tuple(x.shape), generator, x)
            spectrum = rows @ noisy @ columns.T * mask
            total += input_gradient(model, rows.T @ spectrum @ columns, y)
        return total / copies

    return sign_gradient_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient, decay=decay, normalise=True
    )


NAA_LAYER, ATA_LAYER = "middle", "last"  # which Conv2d each attack uses when no layer is named


@register(
    "naa", transfer=True, layer_default=NAA_LAYER, layer=module_name, steps=at_least_one, alpha=optional(positive), decay=non_negative,
    integration_steps=at_least_one, gamma=non_negative,
)
def naa(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    layer: str | None = None, steps: int = 10, alpha: float | None = None, decay: float = 1.0,
    integration_steps: int = 30, gamma: float = 1.0,
) -> Tensor:
    """Neuron attribution-based attack at ``layer`` as it is (default: after the middle ``Conv2d``'s
    activation, the read-out of :mod:`compass_lightning.engine.sites`)."""
    eps, bounds = check_budget(eps, bounds)
    alpha = eps / steps if alpha is None else alpha
    x = x.detach()
    site = layer_site(model, layer, x[:1], default=NAA_LAYER)
    black = torch.full_like(x, bounds[0])
    with capture(site) as features:
        weights = 0.0
        for m in range(1, integration_steps + 1):  # integrated gradients of the layer, black -> x
            # the input requires grad so that the layer's output is part of a graph to differentiate
            point = (black + (x - black) * (m / integration_steps)).requires_grad_(True)
            probabilities = model(point).softmax(dim=1)
            true_class = probabilities.gather(1, y.unsqueeze(1)).sum()
            weights = weights + torch.autograd.grad(true_class, features.value)[0]
        weights = weights / integration_steps
        with torch.no_grad():
            model(black)
            baseline = features.value.detach()

        def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
            x_adv = x_adv.detach().requires_grad_(True)
            model(x_adv)
            attribution = (features.value - baseline) * weights
            weighted = torch.where(attribution >= 0, attribution, gamma * attribution).sum()
            return -torch.autograd.grad(weighted, x_adv)[0]  # descend: the attribution should fall

        return sign_gradient_attack(
            model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient, decay=decay,
            normalise=True,
        )


def _attention(logits: Tensor, activations: Tensor, y: Tensor, *, create_graph: bool) -> Tensor:
    """Grad-CAM of the true class from the probability gradient, channel weights scaled to [−1, 1]
    (the thesis' Eq. 4.4–4.5), each map scaled to a maximum of 1."""
    probability_of_truth = logits.softmax(dim=1).gather(1, y.unsqueeze(1)).sum()
    (gradient,) = torch.autograd.grad(probability_of_truth, activations, create_graph=create_graph)
    channel = gradient.sum(dim=(2, 3))
    channel = channel / channel.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    heat = F.relu((channel[:, :, None, None] * activations).sum(dim=1))
    return heat / heat.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


@register("ata", transfer=True, layer_default=ATA_LAYER, layer=module_name, steps=at_least_one, alpha=optional(positive), weight=non_negative)
def ata(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    layer: str | None = None, steps: int = 5, alpha: float | None = None, weight: float = 1.0,
) -> Tensor:
    """Attention-guided transfer attack at ``layer`` as it is (default: after the last ``Conv2d``'s
    activation, the read-out of :mod:`compass_lightning.engine.sites`); ``alpha``
    defaults to ``eps/steps``. The attention term is differentiated through Grad-CAM's weights."""
    return _ata(model, x, y, eps=eps, bounds=bounds, layer=layer, steps=steps, alpha=alpha, weight=weight)


@register("ti_ata", transfer=True, layer_default=ATA_LAYER, layer=module_name, steps=at_least_one, alpha=optional(positive),
          weight=non_negative, len_kernel=check_kernel_length, nsig=positive)
def ti_ata(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    layer: str | None = None, steps: int = 5, alpha: float | None = None, weight: float = 1.0,
    len_kernel: int | None = None, nsig: float = 3.0,
) -> Tensor:
    """TI-ATA (thesis Eq. 4.9): ATA with its gradient convolved with TI-FGSM's Gaussian kernel ``W``
    before the sign (``len_kernel``/``nsig`` as for ``tifgsm``; ``len_kernel=1`` is ATA itself)."""
    rows, columns = gaussian_blur_matrices(ti_kernel_length(x, len_kernel), nsig, x.shape[-2], x.shape[-1], x)
    return _ata(model, x, y, eps=eps, bounds=bounds, layer=layer, steps=steps, alpha=alpha, weight=weight,
                smooth=lambda g: rows @ g @ columns)


def _ata(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds, layer: str | None, steps: int, alpha: float | None,
    weight: float, smooth: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """ATA's BIM on ``CE + weight·‖Ĥ(x') − Ĥ(x)‖²``, its gradient passed through ``smooth`` (TI) first."""
    eps, bounds = check_budget(eps, bounds)
    alpha = eps / steps if alpha is None else alpha
    x = x.detach()
    site = layer_site(model, layer, x[:1], default=ATA_LAYER)
    with capture(site) as features:
        clean = x.clone().requires_grad_(True)  # the layer's output must be part of a graph
        clean_attention = _attention(model(clean), features.value, y, create_graph=False).detach()

        def gradient(x_adv: Tensor, momentum: Tensor) -> Tensor:
            x_adv = x_adv.detach().requires_grad_(True)
            logits = model(x_adv)
            attention = _attention(logits, features.value, y, create_graph=True)
            objective = F.cross_entropy(logits, y) + weight * (attention - clean_attention).pow(2).mean()
            raw = torch.autograd.grad(objective, x_adv)[0]
            return raw if smooth is None else smooth(raw)

        return sign_gradient_attack(model, x, y, eps=eps, alpha=alpha, steps=steps, bounds=bounds, gradient=gradient)
