"""AI-Compass's radar: five higher-is-better axes, the best model scoring 5 and the others proportionally.

==================  ====================================================================
axis                value (from the logged scalars)
==================  ====================================================================
accuracy            ``compass/basic/accuracy``
mutation_accuracy   ``compass/mutation/mean_accuracy``: mean accuracy under the mutants
robustness          ``1 − compass/robustness/mean_asr``: 1 − mean white-box attack success rate;
                    where the AutoAttack cascade ran, ``1 − compass/robustness/autoattack/asr``
                    (its per-sample worst case: the number a masked model cannot inflate)
interpretability    mean ``insertion − deletion`` over the attribution methods (not ``random``)
pruning             mean ``max_safe_rate`` over the pruning methods
==================  ====================================================================

Across the compared epochs, checkpoints or runs the best value of an axis scores 5 and the
others ``5·x/best``, a negative value (insertion below deletion) 0. An axis is scored only where
its best is positive: when every compared model has 0 (a model that classifies nothing correctly,
a pruning rate no method reaches), nobody is best and the axis is drawn as not scored, as an axis
no module measured is — never as 5 for everyone, nor as 0. The chart prints the absolute values
beside the scores, as a relative score alone hides whether the best model is any good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from compass_lightning.reporting.figures import _colours, render
from compass_lightning.reporting.tags import BASIC_ACCURACY, MEAN_ASR, MEAN_MUTATION_ACCURACY, describe, module_of, tag

AUTOATTACK_ASR, AUTOATTACK_L2_ASR = tag("robustness", "autoattack", "asr"), tag("robustness", "autoattack_l2", "asr")
AXES = ("accuracy", "mutation_accuracy", "robustness", "interpretability", "pruning")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def axis_values(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The five axis values of one evaluation's scalars (``None`` where a module did not run).

    Example:
        >>> axis_values({"compass/basic/accuracy": 0.9, "compass/robustness/mean_asr": 0.25})["robustness"]
        0.75
        >>> axis_values({"compass/robustness/mean_asr": 0.25, "compass/robustness/autoattack/asr": 0.5})["robustness"]
        0.5
    """
    def get(tag: str) -> float | None:
        value = metrics.get(tag)
        return float(value) if value is not None and math.isfinite(float(value)) else None

    worst = [get(t) for t in (AUTOATTACK_ASR, AUTOATTACK_L2_ASR)]
    asr = max((w for w in worst if w is not None), default=None)
    asr = get(MEAN_ASR) if asr is None else asr
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
    """``{label: {axis: score}}``: per axis with a positive best value the best scores 5 and the
    others ``5·max(x, 0)/best``; ``None`` where a value is missing or the axis has no positive best.

    Example:
        >>> radar_scores({"a": {"accuracy": 0.8}, "b": {"accuracy": 0.4}, "c": {"accuracy": None}})
        {'a': {'accuracy': 5.0}, 'b': {'accuracy': 2.5}, 'c': {'accuracy': None}}
        >>> radar_scores({"a": {"accuracy": 0.0}, "b": {"accuracy": 0.0}})   # nobody is best
        {'a': {'accuracy': None}, 'b': {'accuracy': None}}
    """
    axes = [a for a in AXES if any(a in row for row in rows.values())]
    scores: dict[str, dict[str, float | None]] = {label: {} for label in rows}
    for axis in axes:
        values = {label: row.get(axis) for label, row in rows.items()}
        known = {label: v for label, v in values.items() if v is not None and math.isfinite(v)}
        best = max(known.values(), default=0.0)
        for label in rows:
            scores[label][axis] = 5.0 * max(known[label], 0.0) / best if label in known and best > 0 else None
    return scores


def _number(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def radar_chart(scores: Mapping[str, Mapping[str, float | None]], *, title: str = "",
                values: Mapping[str, Mapping[str, float | None]] | None = None) -> Tensor:
    """One polygon per entry of ``scores`` on the five axes (0–5) through its scored axes only; an
    axis nobody is scored on is labelled "not scored" and greyed; ``values`` (the absolute axis
    values, by the same labels) are printed in a table beside the chart.

    Example:
        >>> radar_chart({"epoch 3": {"accuracy": 5.0, "robustness": 3.0}},
        ...             values={"epoch 3": {"accuracy": 0.9, "robustness": 0.4}}).shape[0]
        3
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 5.0), dpi=100)
    axes = figure.add_axes((0.06, 0.1, 0.46, 0.74), projection="polar")
    angles = [2 * math.pi * i / len(AXES) for i in range(len(AXES))]
    colours = _colours()
    for index, (label, row) in enumerate(scores.items()):
        colour = colours[index % len(colours)]
        # NaN breaks the outline at an unscored axis instead of drawing it at 0
        radii = [math.nan if row.get(axis) is None else row[axis] for axis in AXES]
        axes.plot([*angles, angles[0]], [*radii, radii[0]], color=colour, label=label, marker="o", markersize=3)
        shown = [(a, r) for a, r in zip(angles, radii) if not math.isnan(r)]
        if len(shown) >= 3:
            axes.fill([a for a, _ in shown], [r for _, r in shown], color=colour, alpha=0.08)
    scored = {axis: any(row.get(axis) is not None for row in scores.values()) for axis in AXES}
    axes.set_xticks(angles, [a.replace("_", "\n") + ("" if scored[a] else "\n(not scored)") for a in AXES], fontsize=8)
    for tick, axis in zip(axes.get_xticklabels(), AXES):
        if not scored[axis]:
            tick.set_color("0.6")
    axes.tick_params(axis="x", pad=10)  # labels clear of the outer circle
    axes.set_ylim(0, 5)
    axes.set_yticks([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"], fontsize=7)
    figure.suptitle(title, fontsize=10)
    side = figure.add_axes((0.58, 0.1, 0.4, 0.78))
    side.axis("off")
    if not values:
        handles, labels = axes.get_legend_handles_labels()
        side.legend(handles, labels, loc="upper left", fontsize=8, frameon=False)
        return render(figure)
    # the table is the legend: each row label in its polygon's colour, the absolute values beside
    short = {"accuracy": "acc", "mutation_accuracy": "mut", "robustness": "rob", "interpretability": "int", "pruning": "prune"}
    cells = [[f"\u25a0 {label[:28]}", *(_number(values.get(label, {}).get(axis)) for axis in AXES)] for label in scores]
    height = min(1.0, 0.075 * (len(cells) + 1))
    table = side.table(cellText=cells, colLabels=["", *(short[a] for a in AXES)], colWidths=[0.4] + [0.12] * len(AXES),
                       loc="upper left", bbox=(0.0, 1.0 - height, 1.0, height))
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for index in range(len(cells)):
        table[index + 1, 0].get_text().set_color(colours[index % len(colours)])
        table[index + 1, 0].set_text_props(ha="left")
    side.text(0.0, 1.0 - height - 0.03, "absolute values; the polygons are the scores (best = 5)", fontsize=7,
              va="top", transform=side.transAxes)
    return render(figure)
