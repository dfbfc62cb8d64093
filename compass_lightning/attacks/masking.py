"""Gradient-masking checks: does a robustness number mean what it says? (AutoAttack's ``checks.py``)

A model can look robust to gradient attacks without being robust: its gradients are zero, noisy
or point nowhere (quantised or saturating inputs, randomised or input-optimising defences,
probabilities in place of logits), and FGSM/PGD then fail for a reason that is no robustness at
all. The checks below are the ones AutoAttack runs before trusting its own numbers; each is a pure
function returning whether it fires, and :func:`masking_checks` runs them on one probe batch for
the robustness monitor, which logs ``compass/robustness/checks/<check>`` (1 fired, 0 silent).

============== ===================================================================================
check          fires when
============== ===================================================================================
randomised     two forward passes of the same batch in eval mode differ (a random defence, or a
               model left sampling: gradients of one pass do not describe the next)
probabilities  the outputs are non-negative and each row sums to 1 (softmax applied inside the
               model: cross-entropy gradients vanish where it saturates)
zero_gradients the input gradient of the margin ``z_y - max_{j≠y} z_j`` is exactly zero for more
               than 5 % of the batch (AutoAttack uses the loss gradient; the margin does not
               vanish on confidently classified samples, so a trained model stays silent)
black_box      a score-based attack (Square) breaks more than 2 % of the correctly classified
               samples that every white-box attack left alone: the classic sign of masking
dynamic        the forward pass itself calls autograd (a defence that optimises its input)
============== ===================================================================================

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    >>> randomised(model, x), probabilities(model(x)), float(zero_gradient_share(model, x, y)), dynamic(model, x)
    (False, False, 0.0, False)
    >>> quantised = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> float(zero_gradient_share(lambda t: quantised(torch.round(t * 4) / 4), x, y))
    1.0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

import torch
from torch import Tensor

from compass_lightning.attacks._core import Model, best_other_logit

CHECKS = ("randomised", "probabilities", "zero_gradients", "black_box", "dynamic")
ZERO_GRADIENT_SHARE = 0.05
BLACK_BOX_SHARE = 0.02
BLACK_BOX = ("square", "square_l2")
CASCADES = ("autoattack", "autoattack_l2")
AUTOGRAD_CALLS = ("grad", "backward", "_make_grads")  # what AutoAttack's check_dynamic traces

WARNINGS = {
    "randomised": "two forward passes of the same probe batch in eval mode differ: the model is randomised, so the "
                  "gradient of one pass does not describe the next and gradient attacks overstate its robustness "
                  "(evaluate it with expectation over transformation, or make the forward deterministic)",
    "probabilities": "the model's outputs are probabilities (non-negative, rows summing to 1), not logits: "
                     "cross-entropy gradients vanish where the softmax saturates; return logits",
    "zero_gradients": "the input gradient is exactly zero for part of a probe batch: gradient attacks cannot move "
                      "those inputs, so their robustness is gradient masking; trust square or autoattack",
    "black_box": "the black-box Square attack breaks samples that every white-box attack left alone: the white-box "
                 "numbers are gradient masking, not robustness; trust autoattack's worst case",
    "dynamic": "the forward pass calls autograd (an input-optimising defence): attacks that ignore this "
               "overstate its robustness",
}


def randomised(model: Model, x: Tensor) -> bool:
    """Whether two forward passes of ``x`` differ beyond float round-off."""
    with torch.no_grad():
        first, second = model(x), model(x)
    return not torch.allclose(first, second, rtol=1e-4, atol=1e-5)


def probabilities(outputs: Tensor) -> bool:
    """Whether ``outputs`` ``(N, C)`` look like probabilities: non-negative, each row summing to 1."""
    return bool((outputs >= 0).all()) and torch.allclose(outputs.sum(1), torch.ones(len(outputs), dtype=outputs.dtype,
                                                                                      device=outputs.device), atol=1e-4)


def zero_gradient_share(model: Model, x: Tensor, y: Tensor) -> Tensor:
    """The fraction of samples whose margin ``z_y - max_{j≠y} z_j`` has an input gradient exactly zero."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        margin = logits[torch.arange(len(y), device=y.device), y] - best_other_logit(logits, y)
        (gradient,) = torch.autograd.grad(margin.sum(), x, allow_unused=True)
    if gradient is None:  # the output does not depend on the input through autograd at all
        return torch.tensor(1.0)
    return (gradient.flatten(1).abs().amax(1) == 0).float().mean().cpu()


def dynamic(model: Model, x: Tensor) -> bool:
    """Whether a forward pass of ``x`` calls autograd (``torch.autograd.grad`` or ``backward``)."""
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:  # noqa: ANN401
        if event == "call" and frame.f_code.co_name in AUTOGRAD_CALLS and "torch" in frame.f_code.co_filename:
            calls.append(frame.f_code.co_name)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.setprofile(previous)
    return bool(calls)


def black_box_share(clean_correct: Tensor, white_correct: list[Tensor], black_correct: list[Tensor]) -> Tensor:
    """Among samples classified correctly before any attack, the fraction that some black-box attack
    broke while every white-box attack left them correct (NaN without correct samples).

    Example:
        >>> clean = torch.tensor([True, True, True, True])
        >>> float(black_box_share(clean, [torch.tensor([True, True, False, False])], [torch.tensor([False, True, False, True])]))
        0.25
    """
    if not clean_correct.any():
        return torch.tensor(float("nan"))
    white_left = torch.stack(white_correct).all(0)
    black_broke = ~torch.stack(black_correct).all(0)
    return (clean_correct & white_left & black_broke).sum() / clean_correct.sum()


def masking_checks(model: Model, x: Tensor, y: Tensor, clean_correct: Tensor,
                   outcomes: Mapping[str, Mapping[str, Tensor]]) -> dict[str, bool]:
    """Every check of :data:`CHECKS` that applies: ``model`` maps the batch ``x`` (perturbation
    space) to logits, ``y`` its labels; ``outcomes`` holds the per-sample rows of the attacks that
    ran on the whole probe (``correct`` after each, from
    :func:`~compass_lightning.attacks.scoring.attack_probe`), ``clean_correct`` the probe before them.
    ``black_box`` is left out unless a black-box and a white-box attack (or a cascade) both ran."""
    with torch.no_grad():
        outputs = model(x)
    fired = {
        "randomised": randomised(model, x),
        "probabilities": probabilities(outputs),
        "zero_gradients": bool(zero_gradient_share(model, x, y) > ZERO_GRADIENT_SHARE),
        "dynamic": dynamic(model, x[:8]),
    }
    white, black = [], []
    for name, rows in outcomes.items():
        if name in CASCADES:  # the cascade's Square ran only where its APGDs failed
            white.append(clean_correct & ~rows["broken_by/apgd_ce"] & ~rows["broken_by/apgd_t"])
            black.append(~rows["broken_by/square"])
        else:
            (black if name in BLACK_BOX else white).append(rows["correct"])
    if white and black:
        fired["black_box"] = bool(black_box_share(clean_correct, white, black) > BLACK_BOX_SHARE)
    return fired
