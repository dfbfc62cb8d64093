"""What ``PruningAnalysis`` will cost before it has run: the a-priori estimate the time budget
plans the end-of-fit evaluation with (:meth:`~compass_lightning.engine.budget.Budget.final_plan`).

Pruning runs once, when training ends, so the budget has never measured it when it must decide
how much of the probe the end-of-fit evaluation can afford. The estimate counts the analysis'
passes in units of one measured forward of one sample (the evaluation's clean forward), a
backward as two forwards (its usual cost): the importances on the calibration set (whatever the
probe), the sweep's forwards of every pruned copy and the joint attacks (per probe sample), the
joint attributions (per sample of their subset, at most ``attribution_samples``).

Example:
    >>> cost = pruning_cost(0.001, methods=["magnitude", "taylor"], rates=22, calibration=256, attacks={},
    ...                     attributions={}, joint_copies=0, attribution_samples=0, attribution_steps=16)
    >>> round(cost(0), 3), round(cost(100) - cost(0), 3)   # taylor: 256 forward+backwards; 1 + 2 x 22 forwards a sample
    (0.768, 4.5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: A forward+backward in forwards.
BACKWARD = 3.0
#: Importance criteria in forward+backward passes of the calibration set (OBD's closed form costs
#: about 1.5 of them, see benchmarks/pruning.py; magnitude needs none).
IMPORTANCE_PASSES = {"magnitude": 0.0, "obd": 1.5}


def _steps(params: Mapping[str, Any]) -> int:
    return int(params.get("steps") or params.get("samples") or 1)


def pruning_cost(
    forward: float, *, methods: Sequence[str], rates: int, calibration: int, attacks: Mapping[str, Mapping[str, Any]],
    attributions: Mapping[str, Mapping[str, Any]], joint_copies: int, attribution_samples: int, attribution_steps: int,
) -> Callable[[int], float]:
    """The seconds of one pruning analysis as a function of its probe size, ``forward`` being the
    seconds of one sample's forward (see the module docstring)."""
    sweep = 1 + len(methods) * rates  # the unpruned reference and every pruned copy, once per sample
    attack = sum(1 + BACKWARD * _steps(params) for params in attacks.values())  # each step and the scoring forward
    attribution = sum(BACKWARD * _steps(params) + 2 * attribution_steps for params in attributions.values())
    importances = sum(IMPORTANCE_PASSES.get(m, 1.0) * BACKWARD for m in methods) * calibration
    per_sample = sweep + joint_copies * attack
    joint = joint_copies * attribution
    return lambda size: forward * (importances + per_sample * size + joint * min(size, attribution_samples))
