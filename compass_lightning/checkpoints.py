"""Comparing saved checkpoints of a run with the Compass: a table and the radar."""

from __future__ import annotations

import contextlib
import copy
import math
import pathlib
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor

from compass_lightning.callbacks.compass import Compass
from compass_lightning.reporting.radar import AXES, axis_values, radar_chart, radar_scores
from compass_lightning.reporting.reporter import CompassWarning


@dataclass
class CheckpointComparison:
    """What :func:`compare_checkpoints` found: per checkpoint every compass scalar, the radar axis
    values and scores (best = 5), and the radar figure ``(3, H, W)``."""

    metrics: dict[str, dict[str, float]]
    axes: dict[str, dict[str, Optional[float]]]
    scores: dict[str, dict[str, Optional[float]]]
    radar: Tensor

    def table(self) -> str:
        """The axis values and scores as a Markdown table.

        Example:
            >>> import torch
            >>> CheckpointComparison({}, {"a.ckpt": {"accuracy": 0.9}}, {"a.ckpt": {"accuracy": 5.0}}, torch.zeros(3, 1, 1)).table().splitlines()[2]
            '| a.ckpt | 0.9 (5.0) |  |  |  |  |'
        """
        cell = lambda v, s: "" if v is None or not math.isfinite(v) else f"{v:.3g} ({s:.1f})"  # noqa: E731
        lines = ["| checkpoint | " + " | ".join(AXES) + " |", "|---" * (len(AXES) + 1) + "|"]
        for label, values in self.axes.items():
            lines.append(f"| {label} | " + " | ".join(cell(values.get(a), self.scores[label].get(a) or 0.0) for a in AXES) + " |")
        return "\n".join(lines)


#: Types that ``weights_only`` loading may construct besides tensors and plain containers: paths, which
#: ordinary checkpoints' hyper-parameters hold (``save_hyperparameters()`` of a ``data_dir: Path``).
SAFE_TYPES = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)


def _safe_paths() -> contextlib.AbstractContextManager:
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe(list(SAFE_TYPES)) if safe is not None else contextlib.nullcontext()


def compare_checkpoints(
    model_cls: type[pl.LightningModule],
    ckpt_paths: Sequence[str | Path],
    *,
    datamodule: pl.LightningDataModule,
    compass: Optional[Compass] = None,
    trainer_kwargs: Optional[Mapping[str, Any]] = None,
) -> CheckpointComparison:
    """Evaluate every checkpoint with ``trainer.validate`` and a copy of ``compass`` (default:
    ``Compass()``), and score them on the radar.

    Checkpoints are loaded with ``weights_only=True``: tensors and plain containers only, so a
    checkpoint cannot run code when it is read (a crafted pickle is refused).

    Example (with the digits example's classes and checkpoints)::

        result = compare_checkpoints(DigitsClassifier, ["accurate.ckpt", "robust.ckpt"], datamodule=DigitsDataModule())
        print(result.table())
    """
    if isinstance(ckpt_paths, (str, Path)) or not ckpt_paths:
        raise ValueError("ckpt_paths must be a non-empty list of checkpoint paths")
    missing = [str(p) for p in ckpt_paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"ckpt_paths: no such checkpoint file: {missing[0]}")
    compass = compass if compass is not None else Compass()
    options = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
               "enable_checkpointing": False, "accelerator": "auto", "devices": 1, **(trainer_kwargs or {})}
    # Without a logger the monitors write their history and pruning report into the trainer's root
    # directory, which Lightning defaults to the working directory: keep such files out of it.
    with tempfile.TemporaryDirectory(prefix="compass-compare-") as scratch:
        options.setdefault("default_root_dir", scratch)
        metrics = _validate_each(model_cls, ckpt_paths, datamodule, compass, options)
    axes = {label: axis_values(values) for label, values in metrics.items()}
    scores = radar_scores(axes)
    return CheckpointComparison(metrics, axes, scores, radar_chart(scores, values=axes, title="checkpoints: best = 5 per axis"))


def _validate_each(
    model_cls: type[pl.LightningModule],
    ckpt_paths: Sequence[str | Path],
    datamodule: pl.LightningDataModule,
    compass: Compass,
    options: Mapping[str, Any],
) -> dict[str, dict[str, float]]:
    """Every compass scalar of each checkpoint, from one ``trainer.validate`` per checkpoint."""
    metrics: dict[str, dict[str, float]] = {}
    for path in ckpt_paths:
        with _safe_paths():  # hyper-parameters often hold paths; constructing one runs no code
            model = model_cls.load_from_checkpoint(path, weights_only=True, map_location="cpu")
        label = Path(path).name
        while label in metrics:
            label += "'"
        monitor = copy.deepcopy(compass)  # each checkpoint gets a fresh history and surrogate
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*has no logger.*", category=CompassWarning)
            (results,) = pl.Trainer(callbacks=[monitor], **options).validate(model, datamodule=datamodule, verbose=False)
        metrics[label] = {k: float(v) for k, v in results.items() if k.startswith("compass/")}
    return metrics
