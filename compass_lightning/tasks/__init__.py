"""Task adapters: the interface (:class:`Task`), image classification and text classification."""

from compass_lightning.tasks.base import KINDS, Task
from compass_lightning.tasks.classification import Classification, PixelModel
from compass_lightning.tasks.text import TextClassification

__all__ = ["KINDS", "Classification", "PixelModel", "Task", "TextClassification"]
