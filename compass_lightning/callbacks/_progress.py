"""A "Compass" line in Lightning's progress bar while an evaluation runs: :class:`EvaluationProgress`.

Without it the bar freezes at the end of the validation epoch for as long as the monitors take.
The line is drawn by the trainer's own ``progress_bar_callback``: a task of its ``rich`` progress
under :class:`~lightning.pytorch.callbacks.RichProgressBar`, a ``tqdm`` bar below the training bar
under :class:`~lightning.pytorch.callbacks.TQDMProgressBar` (at its ``process_position``, on the
stream it writes to). Nothing is drawn when the bar is disabled, on processes other than global
zero, or with a progress bar of another kind (it is left alone rather than guessed at).

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(enable_progress_bar=False, logger=False, default_root_dir="/tmp/compass-doc")
    >>> with EvaluationProgress(trainer, "Compass", 3) as progress:   # disabled bar: silent
    ...     progress.show("robustness")
    >>> progress.shown
    ['robustness']
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class EvaluationProgress:
    """Shows ``title: <step>`` and ``done/total`` in the trainer's progress bar while it is open.

    Args:
        trainer: the trainer whose ``progress_bar_callback`` draws the line.
        title: the line's name (the monitor's).
        total: how many steps (modules) the evaluation has.
    """

    def __init__(self, trainer: pl.Trainer, title: str, total: int) -> None:
        self.title, self.total = title, total
        self.shown: list[str] = []  # the steps shown, in order (also when nothing is drawn)
        bar = trainer.progress_bar_callback
        enabled = trainer.is_global_zero and bar is not None and not bar.is_disabled
        self._rich = bar if enabled and isinstance(bar, RichProgressBar) and bar.progress is not None else None
        self._tqdm_bar = bar if enabled and isinstance(bar, TQDMProgressBar) else None
        self._task: Any = None
        self._line: Any = None

    def __enter__(self) -> EvaluationProgress:
        if self._rich is not None:
            self._task = self._rich.progress.add_task(f"{self.title}", total=max(self.total, 1))
        elif self._tqdm_bar is not None:
            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            # below the training and validation bars of this process
            self._line = Tqdm(desc=self.title, total=self.total, position=2 * self._tqdm_bar.process_position + 2,
                              leave=False, dynamic_ncols=True, file=sys.stdout, bar_format=self._tqdm_bar.BAR_FORMAT)
        return self

    def show(self, step: str) -> None:
        """Step ``step`` starts now (the steps before it are done)."""
        self.shown.append(step)
        done = len(self.shown) - 1
        if self._task is not None:
            self._rich.progress.update(self._task, description=f"{self.title}: {step}", completed=done)
            self._rich.refresh()
        elif self._line is not None:
            self._line.set_description_str(f"{self.title}: {step}", refresh=False)
            self._line.n = done
            self._line.refresh()

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._rich.progress.remove_task(self._task)
            self._rich.refresh()
        elif self._line is not None:
            self._line.close()
