"""The base every compass monitor stands on: schedule, probe set, guard, fault isolation, reporting.

A monitor subclasses :class:`CompassCallback` and implements :meth:`CompassCallback.evaluate`,
which runs inside :func:`~compass_lightning.guard.analysis_mode` and fills an :class:`Evaluation`
with scalars and images; the base does everything Lightning-specific around it.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.utils.data import Dataset

from compass_lightning.batching import auto_batch_size
from compass_lightning.checks import at_least_one, check_bool, check_int, optional
from compass_lightning.guard import analysis_mode
from compass_lightning.metrics import to_floats
from compass_lightning.probe import ProbeSet, _first_loader
from compass_lightning.report import CompassWarning, Reporter, history_record
from compass_lightning.task import Classification

ERRORS_TAG = "compass/errors"
#: The batch size of an evaluation whose model fails the forward that chooses one (the evaluation then reports the failure).
FALLBACK_BATCH_SIZE = 128

ProbeData = Union[Dataset, tuple[Tensor, Tensor]]


#: Scalars beyond which ``ddp_spawn`` cannot hand ``callback_metrics`` back (about 64 KB pickled).
SPAWN_SAFE_SCALARS = 200
_spawn_warned = False


def _warn_about_spawn(trainer: pl.Trainer) -> None:
    """Warn once when ``ddp_spawn`` would hang on the number of scalars the compass monitors log."""
    global _spawn_warned
    launcher = getattr(trainer.strategy, "launcher", None)
    if _spawn_warned or type(launcher).__name__ != "_MultiProcessingLauncher" or not trainer.is_global_zero:
        return
    tags = {t for cb in trainer.callbacks if isinstance(cb, CompassCallback) for t in cb.expected_tags()}
    if len(tags) > SPAWN_SAFE_SCALARS:
        _spawn_warned = True
        warnings.warn(
            f"compass_lightning: the compass monitors log {len(tags)} scalars, and strategy='ddp_spawn' sends "
            "every logged metric back to the main process through a pipe that Lightning reads only after the "
            "workers exit: above about 64 KB the run hangs when it ends. Use strategy='ddp' (or fewer modules).",
            CompassWarning,
            stacklevel=2,
        )


class SharedResults:
    """What one analysis of an evaluation makes for the others (the Compass' adversarial examples),
    one object for the evaluation and every :meth:`Evaluation.subset` of it.

    An entry holds the rows of the first ``len(rows)`` probe samples, in probe order; a subset of
    ``size`` samples reuses it when it covers them (``size <= len(rows)``) and computes its own
    otherwise, so a module with a smaller probe than another never hands it partial results.

    Example:
        >>> shared = SharedResults()
        >>> shared.put("fgsm", torch.arange(6.0).view(3, 2))
        >>> shared.get("fgsm", 2).tolist(), shared.get("fgsm", 4), shared.get("pgd", 1)
        ([[0.0, 1.0], [2.0, 3.0]], None, None)
    """

    def __init__(self) -> None:
        self._rows: dict[str, Tensor] = {}

    def put(self, key: str, rows: Tensor) -> None:
        """Keep ``rows`` (one per probe sample, from the first) under ``key``, unless a larger entry exists."""
        if key not in self._rows or len(rows) > len(self._rows[key]):
            self._rows[key] = rows

    def get(self, key: str, size: int) -> Tensor | None:
        """The rows of the first ``size`` probe samples under ``key``, or ``None`` if none cover them."""
        rows = self._rows.get(key)
        return rows[:size] if rows is not None and len(rows) >= size else None


def _any_rank(strategy: Any, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process (a collective: every process must call it)."""
    return bool(strategy.reduce(torch.tensor(float(flag), device=device), reduce_op="sum") > 0)


class Evaluation:
    """What one evaluation works with (model, probe, task) and what it produces (scalars, images).

    Args:
        model: the model under analysis (inside the guard).
        probe: the probe set; its inputs are in data space.
        task: the task adapter.
        batch_size: how many probe samples go through the model at once.
        all_gather: stacks a tensor from every process (``trainer.strategy.all_gather``).
        any_rank: whether a flag is set on any process (a collective; only called under DDP).
        want_images: whether images will be looked at (global zero with a logger), so costly
            figures are only drawn then.
        epoch: the training epoch the evaluated model has finished (the one its history names).

    Example:
        >>> import torch
        >>> probe = ProbeSet(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 0]))
        >>> ev = Evaluation(torch.nn.Linear(4, 2), probe, Classification(), batch_size=2)
        >>> ev.logits(probe.inputs).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        probe: ProbeSet,
        task: Classification,
        *,
        batch_size: int,
        all_gather: Callable[[Tensor], Tensor] | None = None,
        any_rank: Callable[[bool], bool] | None = None,
        want_images: bool = False,
        epoch: int = 0,
    ) -> None:
        self.model = model
        self.probe = probe
        self.task = task
        self.batch_size = batch_size
        self.all_gather = all_gather
        self.any_rank = any_rank
        self.want_images = want_images
        self.epoch = epoch
        self.scalars: dict[str, Tensor | float] = {}
        self.images: dict[str, Tensor] = {}
        #: Adversarial probe inputs (pixel space, probe order) by :meth:`attack_key`, kept when
        #: ``share`` is set so that later analyses of the same evaluation reuse them (the Compass);
        #: the same object in every subset.
        self.shared = SharedResults()
        self.share = False
        self._clean_logits: Tensor | None = None

    @staticmethod
    def attack_key(name: str, eps: float, params: dict[str, Any]) -> str:
        """The key of an attack's adversarial examples in :attr:`adversarial`."""
        return f"{name}@{float(eps)!r}:{sorted(params.items())!r}"

    def subset(self, size: int | None) -> Evaluation:
        """This evaluation on the first ``size`` probe samples (all for ``None``), sharing what it
        has computed (scalars, images, clean logits) and its :class:`SharedResults`."""
        if size is None or size >= len(self.probe):
            return self
        probe = ProbeSet(self.probe.inputs[:size], self.probe.targets[:size], rank=self.probe.rank,
                         world_size=self.probe.world_size)
        child = Evaluation(self.model, probe, self.task, batch_size=self.batch_size, all_gather=self.all_gather,
                           any_rank=self.any_rank, want_images=self.want_images, epoch=self.epoch)
        child.scalars, child.images, child.share = self.scalars, self.images, self.share
        if self._clean_logits is not None:
            child._clean_logits = self._clean_logits[:size]
        child.shared = self.shared
        return child

    def for_model(self, model: nn.Module) -> Evaluation:
        """A fresh evaluation of ``model`` (e.g. a pruned copy) on the same probe, without images."""
        return Evaluation(
            model, self.probe, self.task, batch_size=self.batch_size, all_gather=self.all_gather,
            any_rank=self.any_rank, epoch=self.epoch,
        )

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a model without any)."""
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def per_sample(self, function: Callable[..., Tensor], *aligned: Tensor) -> Tensor:
        """``function`` applied to this process' shard of probe-aligned tensors, in chunks of
        ``batch_size`` on the model's device, gathered from every process in probe order.

        ``function`` gets one chunk of each tensor in ``aligned`` and returns one row per sample.
        Every process returns the rows of the whole probe.
        """
        failure: Exception | None = None
        try:
            shards = [self.probe.chunks(self.probe.shard(t), self.batch_size, self.device) for t in aligned]
            local = torch.cat([function(*chunks) for chunks in zip(*shards)])
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other ranks know
            failure = error
        if self.probe.world_size > 1 and self.any_rank is not None:
            # Every rank must agree before the gather, or the ranks that succeeded would wait forever.
            if self.any_rank(failure is not None):
                raise failure or RuntimeError("the same analysis failed on another process")
        elif failure is not None:
            raise failure
        return self.probe.gather(local, self.all_gather)

    def logits(self, inputs: Tensor, model: nn.Module | None = None) -> Tensor:
        """Logits of the model (or of ``model``, e.g. a pruned copy) for ``inputs`` aligned with the
        probe (data space), in probe order."""
        clean = (model is None or model is self.model) and inputs is self.probe.inputs
        if clean and self._clean_logits is not None:
            return self._clean_logits  # one clean forward of the probe serves every analysis
        model = self.model if model is None else model

        def forward(chunk: Tensor) -> Tensor:
            with torch.no_grad():
                return self.task.logits(model, chunk)

        logits = self.per_sample(forward, inputs)
        if clean:
            bad = int((~torch.isfinite(logits)).any(dim=1).sum())
            if bad:  # every analysis of such a model would be meaningless: one clear failure instead
                raise FloatingPointError(
                    f"the model returned NaN or infinite logits for {bad} of {len(logits)} probe samples"
                )
            self._clean_logits = logits
        return logits


class CompassCallback(Callback):
    """Base class of the compass monitors: runs :meth:`evaluate` on a fixed probe set at validation epochs.

    It runs in ``on_validation_epoch_end`` every ``every_n_epochs`` epochs of ``fit`` (never in the
    sanity check), and at every ``trainer.validate()`` and ``trainer.test()``. The analysis runs in
    :func:`~compass_lightning.guard.analysis_mode`; an exception in it becomes a warning (once per
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
            :mod:`compass_lightning.batching`: a few dozen for a CNN on a CPU, more on a GPU).
        seed: seed of the probe selection and of every random number the analysis draws.
        task: how to read batches and where perturbations live (default: :class:`Classification`
            with pixel data in ``[0, 1]``).
        probe_data: draw the probe from this dataset or ``(inputs, targets)`` pair instead of the
            validation dataloader.
        fail_fast: raise an analysis' exception instead of warning and continuing.

    Example:
        >>> class Accuracy(CompassCallback):
        ...     def evaluate(self, trainer, evaluation):
        ...         logits = evaluation.logits(evaluation.probe.inputs)
        ...         accuracy = (logits.argmax(1) == evaluation.probe.targets.to(logits.device)).float().mean()
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
        task: Optional[Classification] = None,
        probe_data: Optional[ProbeData] = None,
        fail_fast: bool = False,
    ) -> None:
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.probe_size = optional(at_least_one)("probe_size", probe_size)
        self.batch_size = optional(at_least_one)("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        if task is not None and not isinstance(task, Classification):
            raise TypeError(f"task must be a compass_lightning.task.Classification, got {task!r}")
        self.task = task if task is not None else Classification()
        self.probe_data = self._check_probe_data(probe_data)
        self.fail_fast = check_bool("fail_fast", fail_fast)
        self.history: list[dict[str, Any]] = []
        self.error_count = 0
        self._probe: ProbeSet | None = None
        self._auto_batch_size: int | None = None
        self._reporter: Reporter | None = None
        self._warned: set[tuple[str, str]] = set()

    def _check_probe_data(self, probe_data: object) -> ProbeData | None:
        if probe_data is None or isinstance(probe_data, Dataset):
            if probe_data is not None and not hasattr(probe_data, "__len__"):
                raise TypeError("probe_data must be a map-style Dataset (with __len__) or a pair (inputs, targets)")
            return probe_data
        if (
            isinstance(probe_data, (tuple, list))
            and len(probe_data) == 2
            and all(isinstance(t, Tensor) for t in probe_data)
        ):
            inputs, targets = probe_data
            if len(inputs) != len(targets):
                raise ValueError(f"probe_data: inputs and targets differ in length ({len(inputs)} vs {len(targets)})")
            if self.probe_size is not None and self.probe_size > len(inputs):
                raise ValueError(f"probe_size={self.probe_size} is larger than probe_data ({len(inputs)} samples)")
            return inputs, targets
        raise TypeError(f"probe_data must be a Dataset or a pair (inputs, targets) of tensors, got {type(probe_data).__name__}")

    # -- what subclasses provide ---------------------------------------------------------------

    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        """Run the analysis on ``evaluation.probe`` and fill ``evaluation.scalars``/``images``."""
        raise NotImplementedError

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Raise a ``ValueError`` at fit start if the settings do not fit the model (e.g. a layer
        name it does not have)."""

    def prepare(self, trainer: pl.Trainer) -> None:
        """Fit-start work that needs the trainer, such as sampling training data, so that bad sizes
        fail before the first training step."""

    def expected_tags(self) -> list[str]:
        """The scalar tags a successful evaluation logs (a failed one logs them as NaN)."""
        return []

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
            self.error_count += 1
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

    def _build_probe(self, trainer: pl.Trainer) -> ProbeSet:
        common = {
            "probe_size": self.probe_size,
            "seed": self.seed,
            "default_size": self.default_probe_size,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
        }
        if isinstance(self.probe_data, Dataset):
            return ProbeSet.from_dataset(self.probe_data, task=self.task, **common)
        if self.probe_data is not None:
            return ProbeSet.from_tensors(*self.probe_data, **common)
        loader = self._evaluation_loader(trainer)
        if loader is None:
            raise ValueError(
                f"{type(self).__name__} draws its probe set from the validation data, but this run has no "
                "validation dataloader: define val_dataloader() (and validation_step) or pass probe_data=..."
            )
        return ProbeSet.from_dataloader(loader, task=self.task, **common)

    def training_sample(self, trainer: pl.Trainer, size: int, data: ProbeData | None, *, argument: str) -> ProbeSet:
        """``size`` seeded samples of ``data`` or else of the training data, the same on every
        process (not sharded), for analyses that calibrate or profile on training data."""
        # seed + 1: a different draw from the probe's when both come from the same dataset
        common = {"probe_size": size, "seed": self.seed + 1, "default_size": size}
        if isinstance(data, Dataset):
            return ProbeSet.from_dataset(data, task=self.task, **common)
        if data is not None:
            return ProbeSet.from_tensors(*data, **common)
        loader = _first_loader(trainer.train_dataloader)
        source = trainer.fit_loop._data_source
        if loader is None and source.is_defined():
            # Lightning loads the training dataloader only when the fit loop starts (and never under
            # trainer.validate/test): ask its source, as a bad size should fail before training.
            with contextlib.suppress(Exception):
                loader = _first_loader(source.dataloader())
        if loader is None:
            raise ValueError(
                f"{type(self).__name__} needs training data, but this run has none: pass {argument}=... "
                "(a Dataset or an (inputs, targets) pair)"
            )
        return ProbeSet.from_dataloader(loader, task=self.task, **common)

    @staticmethod
    def _evaluation_loader(trainer: pl.Trainer) -> Any:
        loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
        if loaders is None and trainer.state.fn == "fit":
            # Lightning loads the validation dataloader only when validation first runs; ask its
            # source now so that bad configuration fails before training starts.
            source = trainer.fit_loop.epoch_loop.val_loop._data_source
            if source.is_defined():
                loaders = source.dataloader()
        return _first_loader(loaders)

    # -- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reporter = Reporter(trainer)  # every rank: finding the log directory is a collective
        self._reporter.register_layout(trainer)
        self._probe = None
        self._auto_batch_size = None

    def _batch_size_for(self, pl_module: pl.LightningModule) -> int:
        """``batch_size``, or the size chosen for this model and device once per run."""
        if self.batch_size is not None:
            return self.batch_size
        if self._auto_batch_size is None:
            try:
                with analysis_mode(pl_module, seed=self.seed):
                    example = self._probe.inputs[:1].to(pl_module.device)
                    self._auto_batch_size = auto_batch_size(pl_module, lambda x: self.task.logits(pl_module, x), example)
            except Exception:  # noqa: BLE001 - the evaluation's clean forward reports what is wrong with the model
                return FALLBACK_BATCH_SIZE
        return self._auto_batch_size

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_overridden("validation_step", pl_module):
            raise ValueError(
                f"{type(self).__name__} runs at validation epochs, but {type(pl_module).__name__} "
                "has no validation_step, so validation never runs; add one (it may simply return)"
            )
        if trainer.limit_val_batches == 0:
            warnings.warn(
                f"{type(self).__name__} will not run: limit_val_batches=0 disables validation", CompassWarning
            )
        self.check_model(pl_module)
        self._check_watchers(trainer)
        _warn_about_spawn(trainer)
        self._probe = self._build_probe(trainer)
        self.prepare(trainer)

    def _check_watchers(self, trainer: pl.Trainer) -> None:
        """Fail now if a checkpoint or early-stopping callback would look for our tags on epochs
        where this monitor does not run: Lightning raises when a monitored key is missing, which
        would stop the run at the first such epoch."""
        tags = set(self.expected_tags())
        for callback in trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor not in tags or self.every_n_epochs == 1:
                continue
            name = type(self).__name__
            if self.every_n_epochs is None:
                raise ValueError(
                    f"{type(callback).__name__}(monitor={monitor!r}) checks every epoch, but {name} logs "
                    f"{monitor!r} only at the end of fit (every_n_epochs=None); set {name}(every_n_epochs=...) "
                    "to the callback's schedule"
                )
            if isinstance(callback, ModelCheckpoint):
                every = getattr(callback, "_every_n_epochs", 1)
                by_epoch = not callback._every_n_train_steps and callback._train_time_interval is None
                if by_epoch and every and every % self.every_n_epochs == 0:
                    continue
                advice = f"ModelCheckpoint(monitor={monitor!r}, every_n_epochs={self.every_n_epochs})"
            elif isinstance(callback, EarlyStopping):
                advice = f"{name}(every_n_epochs=1) with Trainer(check_val_every_n_epoch={self.every_n_epochs})"
            else:
                continue
            raise ValueError(
                f"{type(callback).__name__}(monitor={monitor!r}) checks every epoch, but {name} logs "
                f"{monitor!r} only every {self.every_n_epochs} epochs (every_n_epochs={self.every_n_epochs}), so "
                f"Lightning would stop the run at the first epoch without it; use {advice}"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (
            self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        self._run(trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "error_count": self.error_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.error_count = int(state_dict.get("error_count", 0))

    # -- one evaluation ------------------------------------------------------------------------

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, in_epoch_end: bool = True) -> None:
        """One evaluation, logged through ``pl_module.log`` (``in_epoch_end``) or the loggers (in
        hooks where Lightning forbids ``self.log``, such as ``on_train_end``)."""
        if self._reporter is None:
            self._reporter = Reporter(trainer)
        if self._probe is None:
            self._probe = self._build_probe(trainer)
        strategy = trainer.strategy
        evaluation = Evaluation(
            pl_module,
            self._probe,
            self.task,
            batch_size=self._batch_size_for(pl_module),
            all_gather=strategy.all_gather,
            any_rank=lambda flag: _any_rank(strategy, flag, pl_module.device),
            want_images=self._reporter.wants_images(trainer),
            # after the last epoch Lightning has counted it as done: name the epoch just trained
            epoch=trainer.current_epoch if in_epoch_end else max(trainer.current_epoch - 1, 0),
        )
        with analysis_mode(pl_module, seed=self.seed), self.isolate("the analysis"):
            # The clean forward first (kept for the analyses that need it): a model that fails on the
            # probe or returns non-finite logits is then reported once, not once per analysis.
            evaluation.logits(self._probe.inputs)
            self.evaluate(trainer, evaluation)
        scalars = to_floats(evaluation.scalars)
        # A tag that failed is logged as NaN rather than left out: ModelCheckpoint treats NaN as the
        # worst score and skips the epoch, while a missing monitored key would stop the run.
        scalars.update({tag: float("nan") for tag in self.expected_tags() if tag not in scalars})
        scalars[ERRORS_TAG] = float(sum(cb.error_count for cb in trainer.callbacks if isinstance(cb, CompassCallback)))
        self.history.append(
            history_record(
                epoch=evaluation.epoch,
                global_step=trainer.global_step,
                callback=type(self).__name__,
                key=self.state_key,
                stage=trainer.state.fn.value,
                metrics=scalars,
            )
        )
        self._reporter.log_scalars(trainer, pl_module, scalars, in_epoch_end=in_epoch_end)
        with self.isolate("writing images"):
            self._reporter.log_images(trainer, evaluation.images)
        with self.isolate("writing the history file"):
            self._reporter.write_history(self.state_key, self.history)
