"""The few things the monitors need from Lightning that its public API does not offer, in one place.

Each function below reads a private attribute of Lightning because no public one exists (checked
against Lightning 2.2-2.6); ``tests/test_lightning_api.py`` exercises every one of them on a real
``Trainer``, so a Lightning release that renames them fails that test loudly instead of silently
changing what the monitors do.

* the fit loop's and the validation loop's data source: Lightning loads the training and
  validation dataloaders only when those loops start, but a bad ``probe_size`` or
  ``calibration_size`` should fail at fit start, before the first training step;
* ``ModelCheckpoint``'s schedule (``every_n_epochs``, ``every_n_train_steps``,
  ``train_time_interval`` are constructor arguments stored under private names), to refuse a
  checkpoint that would look for a tag on epochs where the monitor does not log it;
* whether the strategy launches its workers with multiprocessing (``ddp_spawn``), whose result
  pipe limits how many metrics a run may log.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher


def _source_loaders(source: Any) -> Any:
    """The dataloaders of a Lightning ``_DataLoaderSource``, or ``None`` when it has none."""
    return source.dataloader() if source.is_defined() else None


def training_loaders(trainer: pl.Trainer) -> Any:
    """The training dataloaders the fit loop will load (``None`` if it has no source); this may call
    the user's ``train_dataloader()``."""
    return _source_loaders(trainer.fit_loop._data_source)


def validation_loaders(trainer: pl.Trainer) -> Any:
    """The validation dataloaders the fit loop will load (``None`` if it has no source)."""
    return _source_loaders(trainer.fit_loop.epoch_loop.val_loop._data_source)


def checkpoint_every_n_epochs(callback: ModelCheckpoint) -> int | None:
    """Every how many epochs ``callback`` saves, or ``None`` when it saves by steps or by time."""
    if callback._every_n_train_steps or callback._train_time_interval is not None:
        return None
    return callback._every_n_epochs


def launches_with_multiprocessing(trainer: pl.Trainer) -> bool:
    """Whether the strategy starts its workers with ``multiprocessing`` (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``), which hand their metrics back through one pipe."""
    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
