"""compass_lightning: PyTorch Lightning callbacks that watch a model's trustworthiness while it trains.

Example:
    >>> import lightning.pytorch as pl
    >>> import compass_lightning as cl
    >>> trainer = pl.Trainer(callbacks=[cl.MutationMetrics(every_n_epochs=1)], logger=False)
"""

__version__ = "0.1.0"

from compass_lightning.callbacks import (
    AttackSuccessRate,
    AttributionScores,
    Compass,
    CompassCallback,
    Evaluation,
    MutationMetrics,
    NeuronAnalysis,
    PruningAnalysis,
)
from compass_lightning.guard import analysis_mode
from compass_lightning.probe import ProbeSet
from compass_lightning.report import CompassWarning
from compass_lightning.task import Classification

__all__ = [
    "AttackSuccessRate",
    "AttributionScores",
    "Classification",
    "Compass",
    "CompassCallback",
    "CompassWarning",
    "Evaluation",
    "MutationMetrics",
    "NeuronAnalysis",
    "ProbeSet",
    "PruningAnalysis",
    "__version__",
    "analysis_mode",
]
