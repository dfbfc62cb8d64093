"""Where results go: Lightning's loggers, image files, and the run's JSON-lines history.

* Scalars go through ``pl_module.log`` in the epoch-end hooks where Lightning allows it, so
  ``ModelCheckpoint(monitor="compass/basic/accuracy")`` and ``EarlyStopping`` can watch them, and
  through every logger's ``log_metrics`` elsewhere (e.g. at the end of fit).
* Images go to TensorBoard (``add_image``), or as PNG files under the log directory for other
  loggers (``<dir>/compass_images/<tag>/step_<global_step>.png``); without a logger they are
  dropped with a one-time warning.
* Pictures made of text (token heatmaps) are appended to ``compass_texts.jsonl`` there too, for
  the HTML report (:func:`~compass_lightning.reporting.history.read_texts`).
* Every evaluation is appended to ``compass_history.jsonl`` in the log directory — plain JSON, one
  object per line: ``{"epoch", "global_step", "callback", "key", "stage", "metrics"}``.

The log directory is the trainer's (its first logger's), else ``trainer.default_root_dir`` — as under
``fast_dev_run``, whose logger has no directory, or with a logger without ``save_dir`` — so nothing
is written into the working directory unless it is the run's root; without any directory the files
are not written, and one warning says so.

Only the global-zero process writes images and files.
"""

from __future__ import annotations

import json
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.loggers import TensorBoardLogger
import torch
from torch import Tensor

from compass_lightning.reporting.history import HISTORY_FILE, TEXTS_FILE, append_lines, read_history
from compass_lightning.reporting.tags import tensorboard_layout

IMAGE_DIR = "compass_images"


class CompassWarning(UserWarning):
    """Warnings from compass_lightning monitors (failed analyses, findings that need attention)."""


_LAYOUTS: weakref.WeakSet[Any] = weakref.WeakSet()  # TensorBoard writers that have the layout


def _is_tensorboard(logger: Any) -> bool:
    # Lightning's TensorBoardLogger derives from Fabric's: one isinstance covers both.
    return isinstance(logger, TensorBoardLogger) and hasattr(logger.experiment, "add_image")


class Reporter:
    """Sends one callback's results to the trainer's loggers, image files and history file.

    Create it in a hook that every process runs (``setup``): finding the log directory is a
    collective under DDP.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(logger=False, default_root_dir="/tmp/compass-doc", enable_progress_bar=False)
        >>> Reporter(trainer).log_dir
        '/tmp/compass-doc'
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self.log_dir: str | None = trainer.log_dir or trainer.default_root_dir or None
        self.is_global_zero = trainer.is_global_zero
        self._warned_no_logger = False
        self._warned_no_directory = False
        self._history_keys: set[str] = set()

    def register_layout(self, trainer: pl.Trainer) -> None:
        """Group the compass charts per module in TensorBoard's Custom Scalars tab (once per run)."""
        if not self.is_global_zero:
            return
        for logger in trainer.loggers:
            if _is_tensorboard(logger) and logger.experiment not in _LAYOUTS:
                _LAYOUTS.add(logger.experiment)
                logger.experiment.add_custom_scalars(tensorboard_layout())

    # -- scalars -------------------------------------------------------------------------------

    def log_scalars(self, trainer: pl.Trainer, values: Mapping[str, float],
                    pl_module: pl.LightningModule | None = None) -> None:
        """Log scalars to every logger at the trainer's step, and into ``trainer.callback_metrics``,
        where ``ModelCheckpoint``, ``EarlyStopping`` and learning-rate schedulers read them; through
        ``pl_module.log`` when it is given (``trainer.validate``/``test``, whose returned metrics
        are what ``self.log`` logged).

        In a fit not through ``pl_module.log``: its result collection costs about half a
        millisecond per tag and epoch (measured: 300 tags added 0.15 s to every epoch of the digits
        example, outside the monitor's own time), and Lightning forbids it in ``on_train_end``. The
        values are the same on every process (the analyses gather before they reduce); loggers
        write on global zero.
        """
        if not values:
            return
        if pl_module is not None:
            for name, value in values.items():
                # reduce_fx="max": "compass/errors" is logged by every compass callback in the same
                # hook as a running total, and the largest is the total; other names are logged once.
                pl_module.log(name, value, on_step=False, on_epoch=True, batch_size=1, reduce_fx="max")
            return
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=trainer.global_step)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in values.items()})

    # -- images --------------------------------------------------------------------------------

    def wants_images(self, trainer: pl.Trainer) -> bool:
        """Whether images would be kept: on global zero with a logger (a one-time warning without)."""
        if not self.is_global_zero:
            return False
        if not trainer.loggers and not self._warned_no_logger:
            warnings.warn(
                "compass_lightning: the Trainer has no logger, so images are not saved "
                "(scalars are still in trainer.callback_metrics and the history file)",
                CompassWarning,
                stacklevel=2,
            )
            self._warned_no_logger = True
        return bool(trainer.loggers)

    def log_images(self, trainer: pl.Trainer, images: Mapping[str, Tensor]) -> None:
        """Log ``(3, H, W)`` images in ``[0, 1]`` to every logger (global zero only)."""
        if not images or not self.wants_images(trainer):
            return
        written: set[Path] = set()
        for logger in trainer.loggers:
            if _is_tensorboard(logger):
                for tag, image in images.items():
                    logger.experiment.add_image(tag, image.clamp(0, 1), global_step=trainer.global_step)
                continue
            directory = self._directory_of(logger)
            if directory is not None and directory not in written:
                written.add(directory)
                self._save_pngs(directory, images, trainer.global_step)

    def _directory_of(self, logger: Any) -> Path | None:
        """Where a logger without TensorBoard gets its PNGs: its own directory, else the run's."""
        for candidate in (getattr(logger, "log_dir", None), getattr(logger, "save_dir", None), self.log_dir):
            if isinstance(candidate, (str, Path)) and str(candidate):
                return Path(candidate)
        self._nowhere()
        return None

    def _nowhere(self) -> None:
        if not self._warned_no_directory:
            self._warned_no_directory = True
            warnings.warn("compass_lightning: this run has no log directory (no logger directory and no "
                          "default_root_dir), so the history file and images are not written; give the "
                          "Trainer a default_root_dir", CompassWarning, stacklevel=3)

    @staticmethod
    def _save_pngs(directory: Path, images: Mapping[str, Tensor], step: int) -> None:
        from torchvision.utils import save_image

        for tag, image in images.items():
            path = directory / IMAGE_DIR / tag / f"step_{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(image.clamp(0, 1), path)

    def write_texts(self, trainer: pl.Trainer, texts: Mapping[str, Sequence[Mapping[str, Any]]], epoch: int) -> None:
        """Append each ``{tag: rows}`` picture made of text to ``compass_texts.jsonl`` (global zero)."""
        if not texts or not self.log_dir or not self.wants_images(trainer):
            return
        append_lines(Path(self.log_dir) / TEXTS_FILE, [
            json.dumps({"epoch": epoch, "global_step": trainer.global_step, "tag": tag, "rows": list(rows)}, allow_nan=False)
            for tag, rows in texts.items()
        ])

    # -- history -------------------------------------------------------------------------------

    @property
    def history_path(self) -> Path | None:
        """The run's ``compass_history.jsonl`` (``None`` when there is no log directory)."""
        return Path(self.log_dir) / HISTORY_FILE if self.log_dir else None

    def write_history(self, key: str, history: Sequence[Mapping[str, Any]]) -> None:
        """Append the newest record of a callback's ``history`` to the history file.

        The first call of a run also writes the earlier records the file lacks, such as those
        restored from a checkpoint when a resumed run logs into a new directory.
        """
        path = self.history_path
        if not self.is_global_zero or not history:
            return
        if path is None:
            self._nowhere()
            return
        pending = list(history[-1:])
        if key not in self._history_keys:
            self._history_keys.add(key)
            present = set()
            if path.exists():
                present = {
                    (r["epoch"], r["global_step"], r["stage"]) for r in read_history(path) if r.get("key") == key
                }
            pending = [r for r in history if (r["epoch"], r["global_step"], r["stage"]) not in present]
        append_lines(path, [json.dumps(record, allow_nan=False) for record in pending])
