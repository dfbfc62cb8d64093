"""``MutationMetrics``: basic metrics on the clean probe and under data mutants (AI-Compass modules 1 and 2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.engine.checks import check_int, check_real
from compass_lightning.reporting.figures import labelled_image_grid
from compass_lightning.engine.samples import apply, take
from compass_lightning.mutation import batch_dependence, shuffle_permutation
from compass_lightning.engine.registry import resolve_selection
from compass_lightning.reporting.reporter import CompassWarning
from compass_lightning.reporting.tags import MEAN_MUTATION_ACCURACY, tag
from compass_lightning.tasks import Task


Mutations = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]]]


@compass_module('mutation')
class MutationMetrics(CompassCallback):
    """Basic metrics on the probe set, clean and under every data mutant, logged at validation epochs.

    Logs ``compass/basic/<metric>`` for every metric of
    :func:`~compass_lightning.metrics.classification_metrics`, ``compass/mutation/<mutant>/<metric>``
    and ``compass/mutation/<mutant>/accuracy_drop`` for every mutant, and
    ``compass/mutation/mean_accuracy``; images: the mutants applied to the same probe images,
    each framed green or red by whether the model classifies it correctly (``compass/mutation/examples``;
    the label is on red where the mutant changed it), and the clean confusion matrix
    (``compass/basic/confusion_matrix``). ``data_shuffle`` feeds the probe in another order, so
    every sample lands in another batch: ``compass/mutation/data_shuffle/batch_dependence`` is the
    largest change of a predicted probability that causes, and above ``shuffle_tolerance`` a
    warning says the predictions depend on batch composition.

    Mutants are drawn from the same seed every epoch, so epochs compare. Scalars go through
    ``pl_module.log``, so ``ModelCheckpoint(monitor="compass/basic/accuracy", mode="max")`` works.

    Args:
        mutations: names of the task's mutants (:data:`~compass_lightning.mutation.MUTATIONS` for
            images), or a mapping from names to parameter overrides, e.g. ``{"noise": {"sigma": 0.2},
            "label_error": None}``; ``None``: the task's ``default_mutations`` (for images: all seven).
        image_count: probe images shown per mutant (0: no example grid).
        shuffle_tolerance: the largest probability change ``data_shuffle`` may cause before the
            warning.
        every_n_epochs, probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; the probe holds up to 512
            samples by default.

    Example:
        >>> import lightning.pytorch as pl
        >>> monitor = MutationMetrics(mutations={"noise": {"sigma": 0.05}, "brightness": None}, every_n_epochs=2)
        >>> trainer = pl.Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
        >>> monitor.mutations
        {'noise': {'sigma': 0.05}, 'brightness': {'factor': 1.3}}
    """

    default_probe_size = 512

    def __init__(
        self,
        mutations: Optional[Mutations] = None,
        *,
        image_count: int = 8,
        shuffle_tolerance: float = 1e-4,
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
        super().__init__(
            every_n_epochs=every_n_epochs,
            probe_size=probe_size,
            batch_size=batch_size,
            seed=seed,
            task=task,
            probe_data=probe_data,
            fail_fast=fail_fast, budget=budget, final=final, images_every_n=images_every_n,
        )
        registry = self.task.mutations
        self.mutations = resolve_selection(registry, "mutations", self.task.default_mutations if mutations is None else mutations)
        self.mutations = self.applicable("mutation", self.mutations, "mutations", explicit=mutations is not None)
        self.image_count = check_int("image_count", image_count, minimum=0)
        self.shuffle_tolerance = check_real("shuffle_tolerance", shuffle_tolerance, low=0.0)

    @override
    def expected_tags(self) -> list[str]:
        tags = [tag("basic", metric) for metric in self.task.metric_names]
        for name in self.mutations:
            extra = ("accuracy_drop", "batch_dependence") if self.task.mutations[name].permutes else ("accuracy_drop",)
            tags += [tag("mutation", name, metric) for metric in (*self.task.metric_names, *extra)]
        return [*tags, MEAN_MUTATION_ACCURACY]

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "mutations": sorted(self.mutations)}

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        probe, task = evaluation.probe, evaluation.task
        clean_logits = evaluation.outputs(probe.inputs)
        clean = task.metrics(clean_logits, probe.targets)
        evaluation.scalars.update({tag("basic", name): value for name, value in clean.items()})

        # Mutants act on the whole probe on the CPU, where it lives: the random draws are then the
        # same on every device and every DDP rank, and each rank forwards only its shard.
        shown = min(self.image_count, len(probe))
        first = slice(0, shown)
        gallery = {"clean": take(probe.inputs, first)}
        labels = {"clean": probe.targets[:shown]}
        correct = {"clean": task.correct(clean_logits[:shown], probe.targets[:shown]).cpu()}
        accuracies = []
        for name, params in self.mutations.items():
            with self.isolate(f"mutation {name!r}"):
                mutated, targets = task.mutate(name, probe.inputs, probe.targets, classes=task.classes(clean_logits),
                                               generator=self.generator(name), **params)
                logits = clean_logits if mutated is probe.inputs else evaluation.outputs(mutated)
                metrics = task.metrics(logits, targets)
                prefix = tag("mutation", name)
                evaluation.scalars.update({f"{prefix}/{metric}": value for metric, value in metrics.items()})
                evaluation.scalars[f"{prefix}/accuracy_drop"] = clean["accuracy"] - metrics["accuracy"]
                accuracies.append(metrics["accuracy"])
                if task.mutations[name].permutes:
                    evaluation.scalars[f"{prefix}/batch_dependence"] = self._batch_dependence(
                        name, clean_logits, logits
                    )
                elif shown:
                    # copies: a view of the first images would keep every mutant of the whole probe alive
                    gallery[name], labels[name] = apply(take(mutated, first), Tensor.clone), targets[:shown].clone()
                    correct[name] = task.correct(logits[:shown], targets[:shown]).cpu()
        if accuracies:
            evaluation.scalars[MEAN_MUTATION_ACCURACY] = torch.stack(accuracies).mean()
        pictures = {name: task.show(samples) for name, samples in gallery.items()} if evaluation.want_images and shown else {}
        if pictures and all(picture is not None for picture in pictures.values()):
            evaluation.images["compass/mutation/examples"] = labelled_image_grid(
                pictures,
                labels,
                reference="clean",
                correct=correct,
                title=f"epoch {trainer.current_epoch}: the same probe images under every mutant\n"
                "frame: green predicted right, red wrong; label: on red where the mutant changed it",
            )
        if evaluation.want_images and shown:
            overview = task.overview(clean_logits, probe.targets, title=f"clean probe, epoch {trainer.current_epoch}")
            if overview is not None:
                evaluation.images["compass/basic/confusion_matrix"] = overview

    def _batch_dependence(self, name: str, clean_logits: Tensor, shuffled_logits: Tensor) -> Tensor:
        """Largest change of a predicted probability when the samples are fed in another order."""
        permutation = shuffle_permutation(len(clean_logits), self.generator(name))
        change = batch_dependence(clean_logits, shuffled_logits, permutation)
        if change.item() > self.shuffle_tolerance and ("batch dependence", name) not in self._warned:
            self._warned.add(("batch dependence", name))
            rank_zero_warn(
                f"MutationMetrics: feeding the probe in another order ({name}) changed predicted "
                f"probabilities by up to {change.item():.3g}, so the model's predictions depend on which "
                "other samples share their batch (e.g. a layer that uses batch statistics even in eval "
                "mode, such as F.batch_norm(training=True) or a normalisation over the batch).",
                category=CompassWarning,
            )
        return change
