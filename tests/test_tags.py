"""Every tag the monitors log is described once, in ``reporting/tags.py``: its direction and unit."""

from __future__ import annotations

from conftest import DigitsClassifier, digits_task

import compass_lightning as cl
from compass_lightning.callbacks._generation import generation_tags
from compass_lightning.reporting.tags import CHARTS, METRICS, best, describe, tag


def _every_tag() -> list[str]:
    compass = cl.Compass(task=digits_task(), robustness={"transfer_from": ["snapshot"], "eps": [2 / 255, 8 / 255]},
                         validation=True)
    compass.check_model(DigitsClassifier())  # resolves the layer names of the neuron tags
    generation = generation_tags()  # on its own schedule, so not among the tags every evaluation logs
    return [*compass.expected_tags(), *generation, "compass/errors", "compass/passes/forward", "compass/score/robustness"]


def test_every_tag_a_full_compass_logs_has_a_known_metric_and_unit():
    unknown = sorted({t for t in _every_tag() if describe(t).metric not in METRICS or not describe(t).unit})
    assert not unknown, f"tags without metadata in reporting/tags.py: {unknown[:10]}"


def test_directions_read_the_metric_not_the_layer_name():
    assert describe("compass/neurons/coverage/kmnc/net.0").metric == "kmnc"
    assert describe("compass/neurons/sensitivity/fraction/net.3").metric == "fraction"
    assert describe("compass/neurons/deviation/net.0/gap").direction == "lower"
    assert describe("compass/pruning/magnitude/rate_0.40/accuracy_drop").direction == "lower"
    assert describe("compass/mutation/noise/accuracy").direction == "higher"


def test_best_is_the_minimum_where_lower_is_better():
    assert best(tag("robustness", "pgd", "asr"), [0.4, 0.2, 0.3]) == 0.2
    assert best(tag("robustness", "pgd", "robust_accuracy"), [0.4, 0.2, 0.3]) == 0.4


def test_every_chart_of_the_layout_matches_a_tag_a_full_compass_logs():
    import re

    tags = _every_tag()
    for module, charts in CHARTS.items():
        for title, regex in charts.items():
            assert any(re.match(regex, t) for t in tags), f"{module}: chart {title!r} matches no tag"
