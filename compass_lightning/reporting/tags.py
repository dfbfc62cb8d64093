"""Every scalar tag the monitors log: how tags are built, what each measures (direction, unit), and
how the charts group them.

A tag is ``compass/<module>/<parts...>/<metric>``. :func:`tag` builds one, :data:`METRICS` says for
the final ``<metric>`` part whether higher or lower is better and in what unit, and
:func:`describe` reads both for any logged tag. The callbacks' ``expected_tags``, the radar, the
HTML report's best values, the TensorBoard layout and the pruning joint analysis all read this
module, so a new metric is described in one place.

Example:
    >>> tag("robustness", "pgd", "asr")
    'compass/robustness/pgd/asr'
    >>> describe("compass/robustness/pgd/asr")
    TagInfo(module='robustness', metric='asr', direction='lower', unit='fraction')
    >>> describe("compass/neurons/coverage/kmnc/net.0").direction, module_of("compass/score/robustness")
    ('higher', 'score')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

Direction = Optional[Literal["higher", "lower"]]

ROOT = "compass"


def tag(module: str, *parts: str) -> str:
    """``compass/<module>/<parts...>``: the one way tags are spelt."""
    return "/".join((ROOT, module, *parts))


#: Tags that other parts of the library read back by name.
ERRORS = tag("errors")
BASIC_ACCURACY = tag("basic", "accuracy")
MEAN_MUTATION_ACCURACY = tag("mutation", "mean_accuracy")
MEAN_ASR = tag("robustness", "mean_asr")
PASSES = (tag("passes", "forward"), tag("passes", "backward"))


@dataclass(frozen=True)
class Metric:
    """What a tag's final part measures: ``direction`` (``"higher"``/``"lower"`` is better, ``None``
    for a count or a diagnostic without a better side) and ``unit``."""

    direction: Direction
    unit: str


_FRACTION_UP, _FRACTION_DOWN = Metric("higher", "fraction"), Metric("lower", "fraction")

#: Every metric name a monitor logs as a tag's final part.
METRICS: dict[str, Metric] = {
    # basic metrics (MutationMetrics, and the pruned copies)
    "accuracy": _FRACTION_UP, "precision": _FRACTION_UP, "recall": _FRACTION_UP, "f1": _FRACTION_UP,
    "roc_auc": _FRACTION_UP, "loss": Metric("lower", "nats"), "mean_accuracy": _FRACTION_UP,
    "tpr": _FRACTION_UP, "tnr": _FRACTION_UP, "ppv": _FRACTION_UP, "npv": _FRACTION_UP,
    "fpr": _FRACTION_DOWN, "fnr": _FRACTION_DOWN, "fdr": _FRACTION_DOWN,
    "accuracy_drop": _FRACTION_DOWN, "batch_dependence": Metric("lower", "probability"),
    # robustness
    "asr": _FRACTION_DOWN, "mean_asr": _FRACTION_DOWN, "robust_accuracy": _FRACTION_UP,
    "mean_linf": Metric(None, "perturbation-space units"), "mean_l2": Metric(None, "perturbation-space units"),
    "token_change_rate": Metric(None, "fraction of tokens"), "projected_asr": _FRACTION_DOWN,
    "broken_by": Metric(None, "fraction of the probe"), "passes": Metric(None, "sample passes per sample"),
    **{check: Metric("lower", "flag (1: fired)") for check in ("randomised", "probabilities", "zero_gradients",
                                                              "black_box", "dynamic")},
    # interpretability
    "insertion": Metric("higher", "AUC"), "deletion": Metric("lower", "AUC"),
    "insertion_minus_deletion": Metric("higher", "AUC"),
    # neurons
    "nc": _FRACTION_UP, "kmnc": _FRACTION_UP, "nbc": _FRACTION_UP, "snac": _FRACTION_UP, "tknc": _FRACTION_UP, "bknc": _FRACTION_UP,
    "fraction": Metric(None, "fraction"), "scaled_fraction": Metric(None, "fraction"), "top10_stability": Metric("higher", "Jaccard index"),
    "adversarial": Metric("higher", "cosine similarity"), "gaussian": Metric("higher", "cosine similarity"),
    "gap": Metric("lower", "cosine similarity"), "compromise_probability": _FRACTION_DOWN, "fooled": _FRACTION_DOWN,
    "error_rate": Metric("lower", "fraction of seeds"), "errors_found": Metric("lower", "tests per seed"),
    "categories": Metric("lower", "wrong classes per seed"), "mean_fitness": Metric(None, "fraction of neurons"),
    # Deep Validation
    "auc": Metric("higher", "ROC AUC"), "strength": Metric(None, "transform units"),
    "success_rate": Metric(None, "fraction of seeds"),
    # pruning
    "sparsity": Metric(None, "fraction"), "sparsity_all": Metric(None, "fraction"), "max_safe_rate": Metric("higher", "fraction"),
    # the Compass
    "errors": Metric("lower", "count"), "forward": Metric(None, "sample passes"), "backward": Metric(None, "sample passes"),
    "mutation_accuracy": _FRACTION_UP, "robustness": _FRACTION_UP, "interpretability": Metric("higher", "AUC"),
    "pruning": Metric("higher", "fraction"),
}

# Tags whose final part is a layer name rather than a metric: (regex, the metric part's group).
_LAYER_TAGS = (
    re.compile(r"^compass/robustness/.+/(broken_by)/[^/]+$"),  # the last part names the attack of a cascade
    re.compile(r"^compass/neurons/coverage/([^/]+)/.+$"),
    re.compile(r"^compass/neurons/[^/]+/(fraction|scaled_fraction)/.+$"),
)


@dataclass(frozen=True)
class TagInfo:
    """What :func:`describe` knows of a tag."""

    module: Optional[str]
    metric: str
    direction: Direction
    unit: str


def module_of(name: str) -> Optional[str]:
    """``"robustness"`` for ``compass/robustness/pgd/asr`` (``None`` for tags outside a module)."""
    parts = name.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == ROOT else None


def describe(name: str) -> TagInfo:
    """The module, metric, direction and unit of a logged tag (direction ``None`` and unit ``""``
    for a tag no monitor logs)."""
    metric = name.rsplit("/", 1)[-1]
    for pattern in _LAYER_TAGS:
        match = pattern.match(name)
        if match:
            metric = match.group(1)
    known = METRICS.get(metric, Metric(None, ""))
    return TagInfo(module_of(name), metric, known.direction, known.unit)


def best(name: str, values: list[float]) -> float:
    """The best of a tag's ``values``: the smallest where lower is better, the largest otherwise."""
    return min(values) if describe(name).direction == "lower" else max(values)


#: The modules' charts: ``{module: {chart title: tag regex}}`` (report figures and TensorBoard layout).
CHARTS: dict[str, dict[str, str]] = {
    "basic": {"accuracy, F1, ROC AUC": r"^compass/basic/(accuracy|f1|roc_auc)$", "loss": r"^compass/basic/loss$"},
    "mutation": {"accuracy under mutants": r"^compass/mutation/([^/]+/accuracy|mean_accuracy)$"},
    "robustness": {
        "attack success rate": r"^compass/robustness/([^/]+/asr|mean_asr)$",
        "robust accuracy": r"^compass/robustness/[^/]+/robust_accuracy$",
        "transfer attack success rate": r"^compass/robustness/transfer/.+/asr$",
        "gradient-masking checks (1: fired)": r"^compass/robustness/checks/[^/]+$",
    },
    "interpretability": {
        "insertion - deletion": r"^compass/interpretability/[^/]+/insertion_minus_deletion$",
        "insertion": r"^compass/interpretability/[^/]+/insertion$",
        "deletion": r"^compass/interpretability/[^/]+/deletion$",
    },
    "neurons": {
        "coverage": r"^compass/neurons/coverage/[^/]+$",
        "sensitive and excitable fractions (DeepSensor, λ on the raw scores)": r"^compass/neurons/(sensitivity|excitability)/fraction$",
        "scale-free fractions (per-layer min-max)": r"^compass/neurons/(sensitivity|excitability)/scaled_fraction$",
        "deviation gap per layer": r"^compass/neurons/deviation/.+/gap$",
        "DeepSensor test generation: seeds with errors": r"^compass/neurons/generation/error_rate$",
    },
    "validation": {
        "Deep Validation AUC (successful corner cases vs clean)": r"^compass/validation/([^/]+/)?auc$",
        "AUC per layer": r"^compass/validation/layer/[^/]+/auc$",
    },
    "pruning": {
        "max safe pruning rate": r"^compass/pruning/[^/]+/max_safe_rate$",
        "accuracy after pruning": r"^compass/pruning/[^/]+/rate_[0-9.]+/accuracy$",
    },
    "score": {"radar axes": r"^compass/score/[^/]+$"},
}


def tensorboard_layout() -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one category per module, one multi-line chart per entry of :data:`CHARTS`."""
    return {f"compass {module}": {title: ["Multiline", [regex]] for title, regex in charts.items()}
            for module, charts in CHARTS.items()}
