"""Where a monitor's samples come from: the ``probe_data`` it was given, or the trainer's
validation (test) and training dataloaders, found before Lightning loads them so that a bad size
fails at fit start.

Example:
    >>> import torch
    >>> check_probe_data((torch.rand(4, 2), torch.arange(4)), probe_size=5)
    Traceback (most recent call last):
    ...
    ValueError: probe_size=5 is larger than probe_data (4 samples)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import lightning.pytorch as pl
from torch import Tensor
from torch.utils.data import Dataset

from compass_lightning.callbacks._lightning import training_loaders, validation_loaders
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.probe import ProbeSet, _first_loader
from compass_lightning.engine.samples import take, to

ProbeData = Union[Dataset, tuple[Tensor, Tensor]]

if TYPE_CHECKING:
    from compass_lightning.tasks import Task


def check_probe_data(probe_data: object, probe_size: Optional[int]) -> Optional[ProbeData]:
    """``probe_data`` if it is ``None``, a map-style Dataset or an ``(inputs, targets)`` pair of
    tensors of the same length (at least ``probe_size`` long); a ``TypeError`` or ``ValueError``
    naming the argument otherwise."""
    if probe_data is None or isinstance(probe_data, Dataset):
        if probe_data is not None and not hasattr(probe_data, "__len__"):
            raise TypeError("probe_data must be a map-style Dataset (with __len__) or a pair (inputs, targets)")
        return probe_data
    if isinstance(probe_data, (tuple, list)) and len(probe_data) == 2 and all(isinstance(t, Tensor) for t in probe_data):
        inputs, targets = probe_data
        if len(inputs) != len(targets):
            raise ValueError(f"probe_data: inputs and targets differ in length ({len(inputs)} vs {len(targets)})")
        if probe_size is not None and probe_size > len(inputs):
            raise ValueError(f"probe_size={probe_size} is larger than probe_data ({len(inputs)} samples)")
        return inputs, targets
    raise TypeError(f"probe_data must be a Dataset or a pair (inputs, targets) of tensors, got {type(probe_data).__name__}")


def evaluation_loader(trainer: pl.Trainer) -> Any:
    """The first validation dataloader (the test one under ``trainer.test``), or ``None``."""
    loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
    if loaders is None and trainer.state.fn == "fit":
        # Lightning loads the validation dataloader only when validation first runs; ask its
        # source now so that bad configuration fails before training starts.
        loaders = validation_loaders(trainer)
    return _first_loader(loaders)


def training_loader(trainer: pl.Trainer) -> Any:
    """The first training dataloader, or ``None`` when the run has none."""
    loader = _first_loader(trainer.train_dataloader)
    if loader is None:
        # Lightning loads the training dataloader only when the fit loop starts (and never under
        # trainer.validate/test): ask its source, as a bad size should fail before training.
        with contextlib.suppress(Exception):
            loader = _first_loader(training_loaders(trainer))
    return loader


def draw(data: Optional[ProbeData], loader: Any, task: Task, **selection: Any) -> ProbeSet:
    """The seeded samples of ``data`` (else of ``loader``) that ``selection`` names (the
    :class:`~compass_lightning.engine.probe.ProbeSet` constructors' arguments), refused with a
    ``ValueError`` naming ``task`` where the task cannot read them as its inputs (out of its pixel
    range, say: :meth:`~compass_lightning.tasks.base.Task.check_inputs`) — at fit start, not as
    wrong numbers at every evaluation."""
    if isinstance(data, Dataset):
        samples = ProbeSet.from_dataset(data, task=task, **selection)
    elif data is not None:
        samples = ProbeSet.from_tensors(*data, **selection)
    else:
        samples = ProbeSet.from_dataloader(loader, task=task, **selection)
    samples.targets = task.read_targets(samples.targets)  # a pair given as probe_data is read as batches are
    if reason := task.check_inputs(samples.inputs):
        raise ValueError(f"task: {reason}")
    return samples


def check_targets(task: Task, samples: ProbeSet, module: pl.LightningModule, seed: int) -> None:
    """Refuse, with a ``ValueError`` naming ``task``, a probe whose targets the model's outputs cannot
    score as classes (:meth:`~compass_lightning.tasks.base.Task.check_targets`: a regression, one-hot
    rows, classes the model has no output for) — at fit start, not as wrong numbers at every
    evaluation. A model that cannot be called is left to the evaluations, which report it as a
    fault once (promise 5), as they do for any failure of the model."""
    x = to(take(samples.inputs, slice(0, 2)), module.device)
    try:
        with analysis_mode(module, seed=seed):
            outputs = task.outputs(module, x)
    except Exception:  # noqa: BLE001 - see the docstring
        return
    if reason := task.check_targets(samples.targets, outputs):
        raise ValueError(f"task: {reason}")


class Sampling:
    """Mixin of :class:`~compass_lightning.callbacks.base.CompassCallback`: its probe set, the
    training samples some analyses calibrate on, and the fit-start check of a method on one sample."""

    probe_data: ProbeData | None
    _probe: ProbeSet | None

    def _build_probe(self, trainer: pl.Trainer) -> ProbeSet:
        loader = evaluation_loader(trainer) if self.probe_data is None else None
        if self.probe_data is None and loader is None:
            raise ValueError(
                f"{type(self).__name__} draws its probe set from the validation data, but this run has no "
                "validation dataloader: define val_dataloader() (and validation_step) or pass probe_data=..."
            )
        probe = draw(self.probe_data, loader, self.task, probe_size=self.probe_size, seed=self.seed,
                     default_size=self.default_probe_size, rank=trainer.global_rank, world_size=trainer.world_size)
        check_targets(self.task, probe, trainer.lightning_module, self.seed)
        return probe

    def check_on_a_sample(self, trainer: pl.Trainer, checks: Mapping[str, Callable[[Any, Tensor], Optional[str]]],
                          argument: str) -> None:
        """Fail now (a ``ValueError`` naming ``argument``), not at every evaluation, where a method's
        ``check(space_model, x)`` on one probe (else training) sample says why it does not apply."""
        if not checks:
            return
        module, source = trainer.lightning_module, self._probe or self.training_sample(trainer, 1, None, argument="probe_data")
        x = to(take(source.inputs, slice(0, 1)), module.device)
        with analysis_mode(module, seed=self.seed):
            for name, check in checks.items():
                if reason := check(self.task.space_model(module, x), self.task.to_space(x, module)):
                    raise ValueError(f"{argument}: {name} does not apply to {type(module).__name__}: {reason}")

    def training_sample(self, trainer: pl.Trainer, size: int, data: ProbeData | None, *, argument: str) -> ProbeSet:
        """``size`` seeded samples of ``data`` or else of the training data, the same on every
        process (not sharded), for analyses that calibrate or profile on training data."""
        loader = training_loader(trainer) if data is None else None
        if data is None and loader is None:
            raise ValueError(
                f"{type(self).__name__} needs training data, but this run has none: pass {argument}=... "
                "(a Dataset or an (inputs, targets) pair)"
            )
        # seed + 1: a different draw from the probe's when both come from the same dataset
        return draw(data, loader, self.task, probe_size=size, seed=self.seed + 1, default_size=size)
