"""The reductions of an attack's outcome to the numbers the monitor logs (DESIGN.md, "ASR").

Pure functions of per-sample booleans, so that every caller (the robustness monitor, the pruning
analysis, a user's own loop) computes them the same way and each definition has its own test.

Example:
    >>> import torch
    >>> clean = torch.tensor([True, True, True, False])       # correct before the attack
    >>> attacked = torch.tensor([False, True, True, True])    # correct after it
    >>> attack_success_rate(clean, attacked).item(), robust_accuracy(attacked).item()
    (0.3333333432674408, 0.75)
    >>> mean_attack_success_rate([torch.tensor(0.2), torch.tensor(float("nan")), torch.tensor(0.4)]).item()
    0.30000001192092896
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def attack_success_rate(clean_correct: Tensor, adversarial_correct: Tensor) -> Tensor:
    """Untargeted ASR: among the samples classified correctly before the attack, the fraction
    misclassified after it; NaN when no sample was correct before (the rate is undefined)."""
    clean_correct, adversarial_correct = clean_correct.bool(), adversarial_correct.bool()
    if not clean_correct.any():
        return torch.tensor(float("nan"))
    return (clean_correct & ~adversarial_correct).sum() / clean_correct.sum()


def robust_accuracy(adversarial_correct: Tensor) -> Tensor:
    """The fraction of all samples classified correctly after the attack."""
    return adversarial_correct.float().mean()


def mean_attack_success_rate(rates: Sequence[Tensor]) -> Tensor:
    """The mean ASR over attacks, leaving out the undefined (NaN) ones; NaN if all are."""
    if not rates:
        return torch.tensor(float("nan"))
    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rates]).nanmean()
