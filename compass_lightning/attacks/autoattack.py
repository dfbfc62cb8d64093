"""The AutoAttack cascade (Croce & Hein 2020) on a batch: APGD-CE, then APGD-T, then Square.

Each attack runs only on the samples that every earlier one left classified correctly, so the
result is the per-sample worst case of the cascade at the cost of attacking the robust samples
only: a sample counts as robust when no attack broke it. Two versions:

========== ========================================================================== ============
version    attacks                                                                    use
========== ========================================================================== ============
lite       APGD-CE 20 steps; APGD-T 20 steps × 3 targets; Square 300 queries          every epoch
standard   APGD-CE 100 steps; APGD-T 100 steps × 9 targets; Square 5000 queries       end of fit
========== ========================================================================== ============

``standard`` is AutoAttack's standard evaluation without FAB-T, the one attack of it not built here
(in the authors' reports FAB-T breaks almost no sample that APGD-T leaves, and torchattacks'
``AutoAttack`` runs its APGDs with 10 steps, not the paper's 100). The worst case costs at most
``steps × (1 + targets)`` forward-backward passes plus ``queries`` forwards per robust sample; a
non-robust model costs far less, its samples leaving the cascade at APGD-CE.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    >>> x, y = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    >>> found = cascade(model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0))
    >>> sorted(found.rows)
    ['broken_by/apgd_ce', 'broken_by/apgd_t', 'broken_by/square', 'passes']
    >>> bool((found.adversarial - x).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compass_lightning.attacks._core import Model, check_budget, register
from compass_lightning.attacks.apgd import apgd
from compass_lightning.attacks.square import square_attack
from compass_lightning.engine.checks import check_choice

Bounds = tuple[float, float]
STAGES = ("apgd_ce", "apgd_t", "square")
VERSIONS = {
    "lite": {"steps": 20, "targets": 3, "queries": 300},
    "standard": {"steps": 100, "targets": 9, "queries": 5000},
}
METRICS = (*(f"broken_by/{stage}" for stage in STAGES), "passes")


class _Counted:
    """The model, counting the samples it sees: a forward that builds a graph counts two passes
    (the attacks always take its gradient), one without a graph counts one."""

    def __init__(self, model: Model) -> None:
        self.model, self.passes = model, 0

    def __call__(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        self.passes += len(x) * (2 if logits.requires_grad else 1)
        return logits


@dataclass(frozen=True)
class Cascade:
    """The cascade's adversarial examples and per-sample rows: ``broken_by/<stage>`` (whether that
    stage broke the sample; all ``False`` for a robust or a misclassified sample) and ``passes``
    (the batch's forward and backward passes per sample, the same in every row)."""

    adversarial: Tensor
    rows: dict[str, Tensor]


def cascade(
    model: Model, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None, version: str = "lite",
) -> Cascade:
    """Run the cascade of ``version`` on ``x`` (see the module docstring)."""
    eps, bounds = check_budget(eps, bounds)
    setting = VERSIONS[check_choice("version", version, tuple(VERSIONS))]
    counted = _Counted(model)
    x, adv = x.detach(), x.detach().clone()
    with torch.no_grad():
        robust = counted(x).argmax(1) == y
    broken = {stage: torch.zeros(len(x), dtype=torch.bool, device=x.device) for stage in STAGES}
    for stage in STAGES:
        index = robust.nonzero().squeeze(1)  # the samples no earlier stage broke
        if len(index) == 0:
            break
        common = {"eps": eps, "norm": norm, "bounds": bounds, "generator": generator}
        if stage == "square":
            found = square_attack(counted, x[index], y[index], **common, queries=setting["queries"], p_init=0.8,
                                  restarts=1, loss="margin", rescale=True)
        else:
            found = apgd(counted, x[index], y[index], **common, steps=setting["steps"], restarts=1, rho=0.75,
                         loss="ce" if stage == "apgd_ce" else "targeted", targets=setting["targets"])
        with torch.no_grad():
            fooled = counted(found).argmax(1) != y[index]
        adv[index[fooled]] = found[fooled]
        robust[index[fooled]] = False
        broken[stage][index[fooled]] = True
    passes = torch.full((len(x),), counted.passes / max(len(x), 1), device=x.device)
    return Cascade(adv, {**{f"broken_by/{stage}": broken[stage] for stage in STAGES}, "passes": passes})


def _details(norm: str):  # noqa: ANN202
    def details(model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
                version: str = "lite") -> tuple[Tensor, dict[str, Tensor]]:
        found = cascade(model, x, y, eps=eps, norm=norm, bounds=bounds, generator=generator, version=version)
        return found.adversarial, found.rows

    return details


def _version(name: str, value: object) -> str:
    return check_choice(name, value, tuple(VERSIONS))


@register("autoattack", details=_details("linf"), metrics=METRICS, version=_version)
def autoattack(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    version: str = "lite",
) -> Tensor:
    """The AutoAttack cascade, L∞ (see the module docstring): the worst case over its attacks."""
    return cascade(model, x, y, eps=eps, bounds=bounds, generator=generator, version=version).adversarial


@register("autoattack_l2", norm="l2", details=_details("l2"), metrics=METRICS, version=_version)
def autoattack_l2(
    model: Model, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0), generator=None,  # noqa: ANN001
    version: str = "lite",
) -> Tensor:
    """The AutoAttack cascade, L2."""
    return cascade(model, x, y, eps=eps, norm="l2", bounds=bounds, generator=generator, version=version).adversarial
