"""The base every compass monitor stands on: schedule, probe set, guard, fault isolation, reporting.

A monitor subclasses :class:`CompassCallback` and implements :meth:`CompassCallback.evaluate`,
which runs inside :func:`~compass_lightning.engine.guard.analysis_mode` and fills an :class:`Evaluation`
with scalars and images; the base does everything Lightning-specific around it.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from compass_lightning.callbacks._budget import BudgetedRuns, budget_schedule
from compass_lightning.callbacks._data import ProbeData, Sampling, check_probe_data
from compass_lightning.callbacks._progress import EvaluationProgress
from compass_lightning.callbacks._refusal import Selection, applicable
from compass_lightning.callbacks._watchers import check_watchers, held_for_watchers, warn_about_schedule, warn_about_spawn
from compass_lightning.engine.batching import auto_batch_size
from compass_lightning.engine.budget import Plan
from compass_lightning.engine.checks import at_least_one, check_bool, check_int, optional
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.engine.samples import take, to
from compass_lightning.metrics import to_floats
from compass_lightning.reporting.history import history_record
from compass_lightning.reporting.reporter import CompassWarning, Reporter
from compass_lightning.reporting.tags import ERRORS
from compass_lightning.tasks import Classification, Task

#: The batch size of an evaluation whose model fails the forward that chooses one (the evaluation then reports the failure).
FALLBACK_BATCH_SIZE = 128

#: ``images_every_n``'s default (the README's "Cost" section has the measurements behind it).
IMAGES_EVERY_N = 5
#: The methods a task adapter must have (named in the error for an object that lacks some).
_TASK_METHODS = tuple(m for m in vars(Task) if not m.startswith("_") and callable(getattr(Task, m)))


#: The monitors a :class:`~compass_lightning.Compass` hosts, by module name (see :func:`compass_module`).
COMPASS_MODULES: dict[str, type[CompassCallback]] = {}


def compass_module(name: str) -> Callable[[type[CompassCallback]], type[CompassCallback]]:
    """Register a monitor class as the Compass module ``name`` (its configuration argument).

    Example:
        >>> sorted(COMPASS_MODULES)  # the library's six, registered where each is defined
        ['interpretability', 'mutation', 'neurons', 'pruning', 'robustness', 'validation']
    """

    def register(cls: type[CompassCallback]) -> type[CompassCallback]:
        if name in COMPASS_MODULES and COMPASS_MODULES[name] is not cls:
            raise ValueError(f"the Compass module {name!r} is already {COMPASS_MODULES[name].__name__}")
        COMPASS_MODULES[name] = cls
        cls.module_name = name
        return cls

    return register


def _any_rank(strategy: Any, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process (a collective: every process must call it)."""
    return bool(strategy.reduce(torch.tensor(float(flag), device=device), reduce_op="sum") > 0)


class CompassCallback(BudgetedRuns, Sampling, Callback):
    """Base class of the compass monitors: runs :meth:`evaluate` on a fixed probe set at validation epochs.

    It runs in ``on_validation_epoch_end`` every ``every_n_epochs`` epochs of ``fit`` (never in the
    sanity check), and at every ``trainer.validate()`` and ``trainer.test()``. The analysis runs in
    :func:`~compass_lightning.engine.guard.analysis_mode`; an exception in it becomes a warning (once per
    cause) and a count in ``compass/errors`` unless ``fail_fast``. The history of every evaluation
    is in ``state_dict``, so a run resumed from a checkpoint continues the same curves.

    Args:
        every_n_epochs: run after every ``n``-th training epoch (epochs ``n-1``, ``2n-1``, ... counted
            from 0), when validation runs in that epoch.
        probe_size: number of validation samples analysed (test samples under ``trainer.test()``);
            ``None`` uses the callback's default, or all the data if it is smaller. Larger than the
            data is a ``ValueError`` before training starts.
        batch_size: how many probe samples go through the model at once; ``None`` (the default):
            chosen from the model's activations and the device at the first evaluation (see
            :mod:`compass_lightning.engine.batching`: a few dozen for a CNN on a CPU, more on a GPU).
        seed: seed of the probe selection and of every random number the analysis draws.
        task: the task adapter: how to read batches, where perturbations live, what counts as
            correct (any :class:`~compass_lightning.tasks.base.Task`; default:
            :class:`~compass_lightning.tasks.Classification` with pixel data in ``[0, 1]``).
        probe_data: draw the probe from this dataset or ``(inputs, targets)`` pair instead of the
            validation dataloader.
        fail_fast: raise an analysis' exception instead of warning and continuing.
        budget: the largest fraction of the fit's wall time the monitor may take (e.g. ``0.1``): at
            each of its epochs it runs on a probe scaled down to fit (down to 16 samples), or is
            postponed (see :mod:`compass_lightning.engine.budget`); ``None``: no budget.
        final: with a ``budget``, evaluate once more on the whole probe when training ends.
        images_every_n: draw figures at the first and every ``n``-th evaluation of a fit (under a
            ``budget``: at the ``n``-th, ``2n``-th, ...), and at every end-of-fit, validate and test
            evaluation: a figure costs about as much as analysing dozens of samples.

    Example:
        >>> class Accuracy(CompassCallback):
        ...     def evaluate(self, trainer, evaluation):
        ...         logits = evaluation.outputs(evaluation.probe.inputs)
        ...         accuracy = evaluation.task.correct(logits, evaluation.probe.targets).float().mean()
        ...         evaluation.scalars["compass/example/accuracy"] = accuracy
        >>> callback = Accuracy(every_n_epochs=2, probe_size=64)
    """

    #: Probe size used when ``probe_size=None`` (capped at the size of the data).
    default_probe_size: int = 256

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        probe_size: Optional[int] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        task: Optional[Task] = None,
        probe_data: Optional[ProbeData] = None,
        fail_fast: bool = False,
        budget: Optional[float] = None,
        final: bool = True,
        images_every_n: int = IMAGES_EVERY_N,
    ) -> None:
        #: The time budget's bookkeeping (``None`` without a budget).
        self.schedule = budget_schedule(budget, final)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.probe_size = optional(at_least_one)("probe_size", probe_size)
        self.batch_size = optional(at_least_one)("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)  # numpy's and Lightning's seed range
        if task is not None and not isinstance(task, Task):
            missing = [m for m in ("input_range", *_TASK_METHODS) if not hasattr(task, m)]
            raise TypeError(
                f"task must be a task adapter (compass_lightning.tasks.Task, e.g. Classification); {task!r} "
                f"lacks {', '.join(missing)}"
            )
        self.task = task if task is not None else Classification()
        self.probe_data = self._check_probe_data(probe_data)
        self.fail_fast = check_bool("fail_fast", fail_fast)
        self.images_every_n = check_int("images_every_n", images_every_n, minimum=1)
        self.history: list[dict[str, Any]] = []
        self._errors = 0
        self._probe: ProbeSet | None = None
        self._auto_batch_size: int | None = None
        #: Where results go; made in ``setup`` (a host such as the Compass hands its own to its modules).
        self.reporter: Reporter | None = None
        self._warned: set[tuple[str, str]] = set()
        #: The progress bar's line of the evaluation running (hosts show each module on it).
        self.progress: EvaluationProgress | None = None

    def _check_probe_data(self, probe_data: object) -> ProbeData | None:
        return check_probe_data(probe_data, self.probe_size)

    # -- what subclasses provide ---------------------------------------------------------------

    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        """Run the analysis on ``evaluation.probe`` and fill ``evaluation.scalars``/``images``."""
        raise NotImplementedError

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Raise a ``ValueError`` at fit start if the settings do not fit the model (e.g. its layers)."""

    def applicable(self, kind: str, selection: Selection, argument: str, *, explicit: bool) -> Selection:
        """The entries of ``selection`` whose ``kind`` applies to the task (see :func:`applicable`)."""
        return applicable(self.task, type(self).__name__, kind, selection, argument, explicit=explicit)

    def prepare(self, trainer: pl.Trainer) -> None:
        """Fit-start work that needs the trainer, such as sampling training data, so that bad sizes
        fail before the first training step."""

    def expected_tags(self) -> list[str]:
        """The scalar tags a successful evaluation logs (a failed one logs them as NaN)."""
        return []

    def progress_steps(self) -> list[str]:
        """The steps of an evaluation the progress bar counts (this monitor; a host's modules)."""
        return [self.budget_name]

    def hosted(self) -> list[CompassCallback]:
        """The monitors this one runs inside its own evaluations (the Compass' modules); their
        failures count as this monitor's."""
        return []

    @property
    def error_count(self) -> int:
        """How many analyses have failed so far: this monitor's and those of the monitors it hosts."""
        return self._errors + sum(monitor.error_count for monitor in self.hosted())

    @property
    def probe(self) -> ProbeSet | None:
        """The probe set of this run (built at fit start, or at the first evaluation)."""
        return self._probe

    def _state_key_fields(self) -> dict[str, Any]:
        """Settings that distinguish two instances of the callback in a checkpoint."""
        return {"every_n_epochs": self.every_n_epochs, "probe_size": self.probe_size, "seed": self.seed}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_fields())

    def generator(self, key: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from ``seed`` and ``key``: the same stream every evaluation (so epochs
        compare), and a separate stream per key (adding an analysis does not change the others)."""
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))

    # -- fault isolation -----------------------------------------------------------------------

    @contextlib.contextmanager
    def isolate(self, what: str) -> Iterator[None]:
        """Run a block whose exception is reported and skipped (re-raised with ``fail_fast``)."""
        try:
            yield
        except Exception as error:
            if self.fail_fast:
                raise
            self._errors += 1
            cause = (what, type(error).__name__)
            if cause not in self._warned:
                self._warned.add(cause)
                warnings.warn(
                    f"{type(self).__name__}: {what} failed and was skipped ({type(error).__name__}: {error}). "
                    "Training continues; compass/errors counts the failures. Pass fail_fast=True to raise instead.",
                    CompassWarning,
                    stacklevel=3,
                )

    # -- probe ---------------------------------------------------------------------------------

    # -- Lightning hooks -----------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.reporter = Reporter(trainer)  # every rank: finding the log directory is a collective
        self.reporter.register_layout(trainer)
        self._probe = None
        self._auto_batch_size = None

    def _images_due(self, trainer: pl.Trainer, in_epoch_end: bool) -> bool:
        fits = sum(record["stage"] == "fit" for record in self.history)
        # under a budget the end-of-fit evaluation draws them anyway: not at the first evaluation too
        first = self.images_every_n - 1 if self.schedule is not None else 0
        return trainer.state.fn != "fit" or not in_epoch_end or fits % self.images_every_n == first

    def _batch_size_for(self, pl_module: pl.LightningModule) -> int:
        """``batch_size``, or the size chosen for this model and device once per run."""
        if self.batch_size is not None:
            return self.batch_size
        if self._auto_batch_size is None:
            try:
                with analysis_mode(pl_module, seed=self.seed):
                    example = to(take(self._probe.inputs, slice(0, 1)), pl_module.device)
                    self._auto_batch_size = auto_batch_size(pl_module, lambda x: self.task.outputs(pl_module, x), example)
            except Exception:  # noqa: BLE001 - the evaluation's clean forward reports what is wrong with the model
                return FALLBACK_BATCH_SIZE
        return self._auto_batch_size

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_overridden("validation_step", pl_module):
            raise ValueError(
                f"{type(self).__name__} runs at validation epochs, but {type(pl_module).__name__} "
                "has no validation_step, so validation never runs; add one (it may simply return)"
            )
        if trainer.limit_val_batches == 0:
            rank_zero_warn(f"{type(self).__name__} will not run: limit_val_batches=0 disables validation",
                           category=CompassWarning)
        self.check_model(pl_module)
        self.check_watchers(trainer)
        warn_about_spawn(trainer, {t for cb in trainer.callbacks if isinstance(cb, CompassCallback) for t in cb.expected_tags()})
        self._probe = self._build_probe(trainer)
        self.prepare(trainer)
        if self.schedule is not None:
            self.schedule.start(trainer, self.budget_modules())

    def check_watchers(self, trainer: pl.Trainer) -> None:
        """Fail now if a checkpoint or early-stopping callback would look for this monitor's tags on
        epochs where it does not run (see :func:`~compass_lightning.callbacks._watchers.check_watchers`)."""
        check_watchers(trainer.callbacks, set(self.expected_tags()), self.every_n_epochs, type(self).__name__)
        warn_about_schedule(trainer, self.every_n_epochs, type(self).__name__)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (
            self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs
        ) and not (self.schedule is not None and self.every_n_epochs is not None
                   and self.schedule.last_chances(trainer, [self.budget_name])):
            return
        plan = None
        if self.schedule is not None and trainer.state.fn == "fit":
            plan = self.schedule.plan(trainer, {self.budget_name: self.every_n_epochs})
        self._run_planned(trainer, pl_module, plan)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        budget = {"budget": self.schedule.state_dict()} if self.schedule is not None else {}
        return {"history": list(self.history), "error_count": self._errors, **budget}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._errors = int(state_dict.get("error_count", 0))
        if self.schedule is not None:
            self.schedule.load_state_dict(state_dict.get("budget", {}))

    # -- one evaluation ------------------------------------------------------------------------

    def record(self, trainer: pl.Trainer, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Append one evaluation's scalars (the 0-d entries of ``metrics``) to :attr:`history`:
        the one place a history record is made."""
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor) or v.ndim == 0}
        self.history.append(history_record(
            epoch=epoch, global_step=trainer.global_step, callback=type(self).__name__, key=self.state_key,
            stage=trainer.state.fn.value, metrics=scalars,
        ))

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, in_epoch_end: bool = True,
             plan: Plan | None = None) -> None:
        """One evaluation, at the end of a validation epoch (``in_epoch_end``) or of the fit, on the
        first samples of the probe that the budget's ``plan`` needs."""
        if self.reporter is None:
            self.reporter = Reporter(trainer)
        if self._probe is None:
            self._probe = self._build_probe(trainer)
        strategy = trainer.strategy
        probe = self._probe.first(max(plan.sizes.values())) if plan is not None else self._probe
        evaluation = Evaluation(
            pl_module,
            probe,
            self.task,
            batch_size=self._batch_size_for(pl_module),
            auto_batch=self.batch_size is None,
            all_gather=strategy.all_gather,
            any_rank=lambda flag: _any_rank(strategy, flag, pl_module.device),
            want_images=self.reporter.wants_images(trainer) and self._images_due(trainer, in_epoch_end),
            # after the last epoch Lightning has counted it as done: name the epoch just trained
            epoch=trainer.current_epoch if in_epoch_end else max(trainer.current_epoch - 1, 0),
        )
        with analysis_mode(pl_module, seed=self.seed), self.isolate("the analysis"):
            # The clean forward first (kept for the analyses that need it): a model that fails on the
            # probe or returns non-finite logits is then reported once, not once per analysis.
            with self.forward_timed(len(probe), pl_module.device):
                evaluation.outputs(probe.inputs)
            with self.timed(self.budget_name, pl_module.device), EvaluationProgress(trainer, type(self).__name__, len(self.progress_steps())) as self.progress:
                if not self.hosted():  # a host shows each of its modules as it starts
                    self.progress.show(self.budget_name)
                self.evaluate(trainer, evaluation)
        if plan is not None:
            evaluation.scalars.update(self.schedule.scalars(plan))
        scalars = to_floats(evaluation.scalars)
        # A tag that failed is logged as NaN rather than left out: ModelCheckpoint treats NaN as the
        # worst score and skips the epoch, while a missing monitored key would stop the run.
        scalars.update({tag: float("nan") for tag in self.expected_tags() if tag not in scalars})
        scalars[ERRORS] = float(sum(cb.error_count for cb in trainer.callbacks if isinstance(cb, CompassCallback)))
        self.record(trainer, evaluation.epoch, scalars)
        logged, held = held_for_watchers(scalars, self.history[:-1], trainer.callbacks)
        for tag, value in held.items():
            if ("undefined watched tag", tag) not in self._warned:
                self._warned.add(("undefined watched tag", tag))
                rank_zero_warn(f"compass_lightning: {tag} is undefined (NaN) at epoch {evaluation.epoch}; EarlyStopping sees "
                               f"{value:g}, its last defined value (else the worst for its mode), so that the run goes on; "
                               "the history file records NaN", category=CompassWarning)
        self.reporter.log_scalars(trainer, logged, pl_module if in_epoch_end and trainer.state.fn != "fit" else None)
        with self.isolate("writing images"):
            self.reporter.log_images(trainer, evaluation.images)
            self.reporter.write_texts(trainer, evaluation.texts, evaluation.epoch)
        with self.isolate("writing the history file"):
            self.reporter.write_history(self.state_key, self.history)
