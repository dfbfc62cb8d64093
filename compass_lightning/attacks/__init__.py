"""Adversarial attacks (AI-Compass module 3) as pure, batched torch functions.

Every attack has the signature ``attack(model, x, y, *, eps, bounds=(0, 1), generator=None,
**params) -> x_adv``: ``x`` is in pixel space, ``model`` maps pixel-space inputs to logits (see
:meth:`~compass_lightning.tasks.Classification.pixel_model`), gradients are taken with
``torch.autograd.grad`` with respect to the input only, and ``x_adv`` lies in ``bounds`` and within
``eps`` of ``x`` in the attack's norm (:attr:`Attack.norm`). Randomness comes from ``generator``.

========== ===== ==========================================================================
name       norm  attack
========== ===== ==========================================================================
fgsm       L∞    FGSM
ifgsm      L∞    I-FGSM / BIM
pgd        L∞    PGD with random start
pgd_l2     L2    PGD, L2
mifgsm     L∞    MI-FGSM (momentum)
difgsm     L∞    DI-FGSM (input diversity)
tifgsm     L∞    TI-FGSM (translation invariance)
sinifgsm   L∞    SI-NI-FGSM (scale invariance, Nesterov)
cw         L2    C&W L2, budgeted by eps
deepfool   L2    DeepFool, budgeted by eps
ssa        L∞    spectrum simulation attack (transfer)
naa        L∞    neuron attribution-based attack (transfer)
ata        L∞    attention-guided transfer attack (transfer)
ti_ata     L∞    ATA with TI's smoothed gradient, thesis Eq. 4.9 (transfer)
apgd_ce    L∞    APGD, cross-entropy (AutoAttack); ``apgd_ce_l2`` in L2
apgd_dlr   L∞    APGD, difference of logits ratio; ``apgd_dlr_l2`` in L2
apgd_t     L∞    APGD, targeted DLR over the most likely wrong classes; ``apgd_t_l2`` in L2
square     L∞    Square Attack, score-based black box; ``square_l2`` in L2
autoattack L∞    the AutoAttack cascade, per-sample worst case; ``autoattack_l2`` in L2
hotflip    —     HotFlip: at most ``k`` first-order token flips (text models only)
========== ===== ==========================================================================

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    >>> x_adv = run_attack("pgd", model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from compass_lightning.attacks._core import ATTACKS, Attack, Model
from compass_lightning.attacks.gradient import difgsm, fgsm, ifgsm, mifgsm, pgd, pgd_l2, sinifgsm, tifgsm
from compass_lightning.attacks.hotflip import hotflip
from compass_lightning.attacks.minimal import cw, deepfool
from compass_lightning.attacks.success import attack_success_rate, mean_attack_success_rate, robust_accuracy
from compass_lightning.attacks.transfer import ata, naa, ssa, ti_ata

# registered after the classic attacks, which the lists of choices name first
from compass_lightning.attacks.apgd import apgd_ce, apgd_ce_l2, apgd_dlr, apgd_dlr_l2, apgd_t, apgd_t_l2  # noqa: E402, I001
from compass_lightning.attacks.square import square, square_l2  # noqa: E402
from compass_lightning.attacks.autoattack import autoattack, autoattack_l2, cascade  # noqa: E402


def run_attack(
    name: str,
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    **params: Any,
) -> Tensor:
    """Run the attack called ``name`` with ``params`` checked against its parameters."""
    attack = ATTACKS.lookup(name, "attack")
    return attack.function(model, x, y, eps=eps, bounds=bounds, generator=generator, **attack.resolve(params))


__all__ = [
    "ATTACKS",
    "Attack",
    "apgd_ce",
    "apgd_ce_l2",
    "apgd_dlr",
    "apgd_dlr_l2",
    "apgd_t",
    "apgd_t_l2",
    "ata",
    "autoattack",
    "autoattack_l2",
    "cascade",
    "attack_success_rate",
    "cw",
    "hotflip",
    "deepfool",
    "difgsm",
    "fgsm",
    "ifgsm",
    "mean_attack_success_rate",
    "mifgsm",
    "naa",
    "pgd",
    "pgd_l2",
    "robust_accuracy",
    "run_attack",
    "sinifgsm",
    "ti_ata",
    "square",
    "square_l2",
    "ssa",
    "tifgsm",
]
