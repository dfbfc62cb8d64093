"""Task adapters: the interface (:class:`Task`) and its image-classification implementation."""

from compass_lightning.tasks.base import KINDS, Task
from compass_lightning.tasks.classification import Classification, PixelModel

__all__ = ["KINDS", "Classification", "PixelModel", "Task"]
