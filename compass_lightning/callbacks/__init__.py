"""Lightning callbacks: thin layers that schedule the analyses and report their results."""

from compass_lightning.callbacks.base import CompassCallback, Evaluation
from compass_lightning.callbacks.mutation import MutationMetrics

__all__ = ["CompassCallback", "Evaluation", "MutationMetrics"]
