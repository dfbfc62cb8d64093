"""What a monitor's schedule means for the rest of the run: the callbacks that watch its tags, and
``ddp_spawn``'s limit on logged metrics. Both fail or warn at fit start, before the first step.

Example:
    >>> from lightning.pytorch.callbacks import ModelCheckpoint
    >>> check_watchers([ModelCheckpoint(monitor="compass/basic/accuracy", every_n_epochs=4)],
    ...                {"compass/basic/accuracy"}, 2, "MutationMetrics")   # every 4th epoch is one of every 2nd
    >>> check_watchers([ModelCheckpoint(monitor="compass/basic/accuracy")], {"compass/basic/accuracy"}, 2, "MutationMetrics")
    Traceback (most recent call last):
    ...
    ValueError: ModelCheckpoint(monitor='compass/basic/accuracy') checks every epoch, but MutationMetrics logs ...
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from compass_lightning.callbacks._lightning import checkpoint_every_n_epochs, launches_with_multiprocessing
from compass_lightning.reporting.reporter import CompassWarning

#: Scalars beyond which ``ddp_spawn`` cannot hand ``callback_metrics`` back (about 64 KB pickled).
SPAWN_SAFE_SCALARS = 200
_spawn_warned = False


def warn_about_spawn(trainer: pl.Trainer, tags: Set[str]) -> None:
    """Warn once when ``ddp_spawn`` would hang on the number of scalars (``tags``) the compass monitors log."""
    global _spawn_warned
    if _spawn_warned or not launches_with_multiprocessing(trainer) or not trainer.is_global_zero:
        return
    if len(tags) > SPAWN_SAFE_SCALARS:
        _spawn_warned = True
        rank_zero_warn(
            f"compass_lightning: the compass monitors log {len(tags)} scalars, and strategy='ddp_spawn' sends "
            "every logged metric back to the main process through a pipe that Lightning reads only after the "
            "workers exit: above about 64 KB the run hangs when it ends. Use strategy='ddp' (or fewer modules).",
            category=CompassWarning,
        )


def check_watchers(callbacks: Iterable[Any], tags: Set[str], every_n_epochs: Optional[int], name: str) -> None:
    """Fail now if a checkpoint or early-stopping callback would look for one of ``tags`` on epochs
    where the monitor ``name`` (run every ``every_n_epochs``, ``None``: at the end of fit) does not
    log it: Lightning raises when a monitored key is missing, which would stop the run at the first
    such epoch."""
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if monitor not in tags or every_n_epochs == 1:
            continue
        if every_n_epochs is None:
            raise ValueError(
                f"{type(callback).__name__}(monitor={monitor!r}) checks every epoch, but {name} logs "
                f"{monitor!r} only at the end of fit (every_n_epochs=None); set {name}(every_n_epochs=...) "
                "to the callback's schedule"
            )
        if isinstance(callback, ModelCheckpoint):
            every = checkpoint_every_n_epochs(callback)
            if every and every % every_n_epochs == 0:
                continue
            advice = f"ModelCheckpoint(monitor={monitor!r}, every_n_epochs={every_n_epochs})"
        elif isinstance(callback, EarlyStopping):
            advice = f"{name}(every_n_epochs=1) with Trainer(check_val_every_n_epoch={every_n_epochs})"
        else:
            continue
        raise ValueError(
            f"{type(callback).__name__}(monitor={monitor!r}) checks every epoch, but {name} logs "
            f"{monitor!r} only every {every_n_epochs} epochs (every_n_epochs={every_n_epochs}), so "
            f"Lightning would stop the run at the first epoch without it; use {advice}"
        )
