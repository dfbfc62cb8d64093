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
    DeepValidation,
    MutationMetrics,
    NeuronAnalysis,
    PruningAnalysis,
)
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.reporting.reporter import CompassWarning
from compass_lightning.tasks import Classification, Task, TextClassification

__all__ = [
    "AttackSuccessRate",
    "AttributionScores",
    "Classification",
    "Compass",
    "CompassCallback",
    "CompassWarning",
    "DeepValidation",
    "Evaluation",
    "MutationMetrics",
    "NeuronAnalysis",
    "ProbeSet",
    "PruningAnalysis",
    "Task",
    "TextClassification",
    "__version__",
    "analysis_mode",
]
