"""Lightning callbacks: thin layers that schedule the analyses and report their results."""

from compass_lightning.callbacks.base import CompassCallback
from compass_lightning.callbacks.compass import Compass
from compass_lightning.callbacks.interpretability import AttributionScores
from compass_lightning.callbacks.mutation import MutationMetrics
from compass_lightning.callbacks.neurons import NeuronAnalysis
from compass_lightning.callbacks.pruning import PruningAnalysis
from compass_lightning.callbacks.robustness import AttackSuccessRate
from compass_lightning.callbacks.validation import DeepValidation

__all__ = ["AttackSuccessRate", "AttributionScores", "Compass", "CompassCallback", "DeepValidation", "MutationMetrics",
           "NeuronAnalysis", "PruningAnalysis"]
