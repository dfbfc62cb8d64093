"""Neuron analysis (AI-Compass module 5 beyond pruning, DeepSensor, the explainable-attacks paper).

- :mod:`~compass_lightning.neurons.coverage`: DeepGauge coverage (NC, KMNC, NBC, SNAC, TKNC, and
  BKNC, TKNC's bottom-k mirror) against ranges profiled on training data;
- :mod:`~compass_lightning.neurons.sensitivity`: DeepSensor neuron sensitivity, and the first-order
  excitable-neuron proxy;
- :mod:`~compass_lightning.neurons.generation`: DeepSensor's particle-swarm test generation around
  seed inputs (:func:`generate_tests`);
- :mod:`~compass_lightning.neurons.validation`: Deep Validation, per-layer per-class one-class models
  of the hidden layers and the discrepancy that flags corner cases (scikit-learn, the
  ``validation`` extra, imported when first used);
- :mod:`~compass_lightning.neurons.deviation`: Grad-CAM at every convolution under attack and under
  matched Gaussian noise, and which layers the attack compromises.

Every analysis reads the same layers (:func:`select_layers`): every ``Conv2d`` and ``Linear``, after
its activation for any model (:mod:`compass_lightning.engine.sites`; the place Grad-CAM and the
transfer attacks read too), or the names given; a neuron is a conv channel (spatial mean) or a
linear unit. The forward hooks are removed on exit, even on error.
"""

from compass_lightning.neurons._layers import Layer, neuron_values, record, select_layers
from compass_lightning.neurons.coverage import CRITERIA, Coverage, coverage, profile_ranges
from compass_lightning.neurons.deviation import (
    STRENGTHS,
    compromised_layers,
    conv_neuron_layers,
    cosine,
    layer_deviation,
    matched_gaussian,
    most_vulnerable,
    summarise_deviation,
    summarise_strengths,
)
from compass_lightning.neurons.generation import GeneratedTests, generate_tests, swarm_fitness
from compass_lightning.neurons.sensitivity import (
    jaccard,
    neuron_excitability,
    neuron_sensitivity,
    paper_fraction,
    sensitive_fraction,
    sensitivity,
    top_neurons,
)

__all__ = [
    "STRENGTHS",
    "compromised_layers",
    "CRITERIA",
    "Coverage",
    "Layer",
    "conv_neuron_layers",
    "cosine",
    "coverage",
    "GeneratedTests",
    "generate_tests",
    "jaccard",
    "layer_deviation",
    "matched_gaussian",
    "most_vulnerable",
    "neuron_excitability",
    "neuron_sensitivity",
    "neuron_values",
    "profile_ranges",
    "record",
    "select_layers",
    "paper_fraction",
    "sensitive_fraction",
    "sensitivity",
    "summarise_deviation",
    "summarise_strengths",
    "swarm_fitness",
    "top_neurons",
]
