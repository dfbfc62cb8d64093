"""AI-Compass's radar: five higher-is-better axes, the best model scoring 5 and the others proportionally.

==================  ====================================================================
axis                value (from the logged scalars)
==================  ====================================================================
accuracy            ``compass/basic/accuracy``
mutation_accuracy   ``compass/mutation/mean_accuracy``: mean accuracy under the mutants
robustness          ``1 − compass/robustness/mean_asr``: 1 − mean white-box attack success rate
interpretability    mean ``insertion − deletion`` over the attribution methods (not ``random``)
pruning             mean ``max_safe_rate`` over the pruning methods
==================  ====================================================================

Across the compared epochs, checkpoints or runs the best value of an axis scores 5 and the
others ``5·x/best`` (negative values count as 0; when the best is 0, every model scores 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from compass_lightning.reporting.figures import _colours, render
from compass_lightning.reporting.tags import BASIC_ACCURACY, MEAN_ASR, MEAN_MUTATION_ACCURACY, describe, module_of

AXES = ("accuracy", "mutation_accuracy", "robustness", "interpretability", "pruning")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def axis_values(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The five axis values of one evaluation's scalars (``None`` where a module did not run).

    Example:
        >>> axis_values({"compass/basic/accuracy": 0.9, "compass/robustness/mean_asr": 0.25})["robustness"]
        0.75
    """
    def get(tag: str) -> float | None:
        value = metrics.get(tag)
        return float(value) if value is not None and math.isfinite(float(value)) else None

    asr = get(MEAN_ASR)
    return {
        "accuracy": get(BASIC_ACCURACY),
        "mutation_accuracy": get(MEAN_MUTATION_ACCURACY),
        "robustness": None if asr is None else 1.0 - asr,
        "interpretability": _mean([
            get(tag) for tag in metrics
            if module_of(tag) == "interpretability" and describe(tag).metric == "insertion_minus_deletion"
            and not tag.startswith("compass/interpretability/random/")
        ]),
        "pruning": _mean([
            get(tag) for tag in metrics if module_of(tag) == "pruning" and describe(tag).metric == "max_safe_rate"
        ]),
    }


def radar_scores(rows: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """``{label: {axis: score}}``: per axis the best value scores 5 and the others ``5·x/best``.

    Example:
        >>> radar_scores({"a": {"accuracy": 0.8}, "b": {"accuracy": 0.4}, "c": {"accuracy": None}})
        {'a': {'accuracy': 5.0}, 'b': {'accuracy': 2.5}, 'c': {'accuracy': None}}
    """
    axes = [a for a in AXES if any(a in row for row in rows.values())]
    scores: dict[str, dict[str, float | None]] = {label: {} for label in rows}
    for axis in axes:
        values = {label: row.get(axis) for label, row in rows.items()}
        known = {label: max(v, 0.0) for label, v in values.items() if v is not None and math.isfinite(v)}
        best = max(known.values(), default=None)
        for label in rows:
            if label not in known:
                scores[label][axis] = None
            else:
                scores[label][axis] = 5.0 if best == 0 else 5.0 * known[label] / best
    return scores


def radar_chart(scores: Mapping[str, Mapping[str, float | None]], *, title: str = "") -> Tensor:
    """One polygon per entry of ``scores`` on the five axes (0–5; a missing axis is drawn at 0).

    Example:
        >>> radar_chart({"epoch 3": {"accuracy": 5.0, "robustness": 3.0}}).shape[0]
        3
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 5.0), dpi=100)
    axes = figure.add_axes((0.08, 0.08, 0.58, 0.78), projection="polar")
    angles = [2 * math.pi * i / len(AXES) for i in range(len(AXES))]
    colours = _colours()
    for index, (label, row) in enumerate(scores.items()):
        values = [row.get(axis) or 0.0 for axis in AXES]
        axes.plot([*angles, angles[0]], [*values, values[0]], color=colours[index % len(colours)], label=label, marker="o", markersize=3)
        axes.fill([*angles, angles[0]], [*values, values[0]], color=colours[index % len(colours)], alpha=0.08)
    axes.set_xticks(angles, [a.replace("_", "\n") for a in AXES], fontsize=8)
    axes.set_ylim(0, 5)
    axes.set_yticks([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"], fontsize=7)
    axes.set_title(title, fontsize=10, pad=18)
    axes.legend(loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=8, frameon=False)
    return render(figure)
