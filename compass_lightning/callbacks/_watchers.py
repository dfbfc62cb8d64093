"""What a monitor's schedule means for the rest of the run: the callbacks that watch its tags, and
``ddp_spawn``'s limit on logged metrics (both fail or warn at fit start, before the first step),
and what the watchers see of an undefined tag (:func:`held_for_watchers`).

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

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, Optional

import lightning.pytorch as pl
import torch
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


def warn_about_schedule(trainer: pl.Trainer, every_n_epochs: Optional[int], name: str) -> None:
    """Warn at fit start when a monitor's ``every_n_epochs`` does not fall on validation epochs
    (``Trainer(check_val_every_n_epoch=...)``): it runs only where both coincide — never, if that
    is beyond ``max_epochs``."""
    every_val = getattr(trainer, "check_val_every_n_epoch", None)
    if every_n_epochs is None or not isinstance(every_val, int) or every_val < 1:
        return
    period = math.lcm(every_n_epochs, every_val)
    if period == every_n_epochs:
        return
    max_epochs = trainer.max_epochs
    when = (f"never runs within max_epochs={max_epochs}" if max_epochs is not None and 0 < max_epochs < period
            else f"runs only every {period} epochs")
    rank_zero_warn(f"{name}(every_n_epochs={every_n_epochs}) runs at validation epochs, and the Trainer validates every "
                   f"{every_val} (check_val_every_n_epoch={every_val}), so it {when}; make every_n_epochs a multiple "
                   "of check_val_every_n_epoch", category=CompassWarning)


def held_for_watchers(scalars: Mapping[str, float], history: Sequence[Mapping[str, Any]],
                      callbacks: Iterable[Any]) -> tuple[dict[str, float], dict[str, float]]:
    """What Lightning gets (the loggers and ``callback_metrics``) of one evaluation's ``scalars``,
    and which undefined tags were held: a tag an ``EarlyStopping`` watches that is NaN (its
    analysis failed, or the value is undefined, as the success rate of an attack on a model that
    classifies nothing correctly) is logged as its last defined value in ``history`` — before it
    had one, as the watcher's ``divergence_threshold``, else the worst finite value for its mode —
    because ``EarlyStopping(check_finite=True)``, its default, stops the run on a NaN. The history
    keeps the NaN. Tags only a ``ModelCheckpoint`` watches stay NaN: it ranks NaN as the worst.

    Example:
        >>> stop = EarlyStopping(monitor="compass/robustness/fgsm/asr", mode="min")
        >>> past = [{"metrics": {"compass/robustness/fgsm/asr": 0.4}}]
        >>> held_for_watchers({"compass/robustness/fgsm/asr": float("nan"), "compass/other": float("nan")}, past, [stop])
        ({'compass/robustness/fgsm/asr': 0.4, 'compass/other': nan}, {'compass/robustness/fgsm/asr': 0.4})
    """
    out, held = dict(scalars), {}
    for callback in callbacks:
        tag = getattr(callback, "monitor", None)
        if not isinstance(callback, EarlyStopping) or tag not in out or math.isfinite(out[tag]):
            continue
        defined = (r["metrics"].get(tag) for r in reversed(history))
        last = next((v for v in defined if isinstance(v, (int, float)) and math.isfinite(v)), None)
        if last is None and callback.divergence_threshold is not None:
            last = float(callback.divergence_threshold)  # the divergence rule stops only beyond it
        if last is None:
            last = float(torch.finfo(torch.float32).max) * (1.0 if callback.mode == "min" else -1.0)
        out[tag] = held[tag] = last
    return out, held
