"""An analysis that runs when training ends survives a crash in it: :class:`EndOfFit`.

Lightning calls ``on_train_end`` from the fit loop, which it skips when a run resumes from the
checkpoint of a finished fit (killed during the end-of-fit analysis, say, and resumed from
``last.ckpt``); ``on_fit_end`` is called either way. A callback with this mixin runs its
``on_train_end`` from ``on_fit_end`` when the fit loop did not, so the analysis is not lost; the
callback's ``on_train_end`` decides itself whether its history already holds it.

Example:
    >>> import lightning.pytorch as pl
    >>> class Ends(EndOfFit, pl.Callback):
    ...     def on_train_end(self, trainer, pl_module):
    ...         super().on_train_end(trainer, pl_module)
    ...         print("analysed")
    >>> ends = Ends()
    >>> ends.on_fit_start(None, None)
    >>> ends.on_fit_end(None, None)   # a resumed, finished fit: on_train_end was skipped
    analysed
"""

from __future__ import annotations

from typing import Any



class EndOfFit:
    """Mixin: ``on_train_end`` runs once per fit, from ``on_fit_end`` if Lightning skipped it."""

    _train_ended = True  # outside a fit (a module hosted by the Compass): nothing to catch up

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_ended = False
        parent = getattr(super(), "on_fit_start", None)
        if parent is not None:
            parent(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._train_ended = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._train_ended:
            self.on_train_end(trainer, pl_module)
