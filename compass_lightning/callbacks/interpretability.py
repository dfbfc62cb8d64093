"""``AttributionScores``: how faithful the model's attributions are, epoch by epoch (AI-Compass module 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from compass_lightning.attribution import METHODS, model_checks
from compass_lightning.attribution.faithfulness import SUBSTRATES
from compass_lightning.attribution.scoring import RANDOM, score_probe
from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.engine.checks import check_bool, check_choice, check_int
from compass_lightning.reporting.figures import line_chart
from compass_lightning.engine.layers import check_layer_parameters
from compass_lightning.engine.registry import resolve_selection
from compass_lightning.engine.samples import take
from compass_lightning.reporting.tags import tag
from compass_lightning.tasks import Task

MODULE = "interpretability"

DEFAULT_METHODS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam")
SCORES = ("insertion", "deletion", "insertion_minus_deletion")

Methods = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]]]


@compass_module('interpretability')
class AttributionScores(CompassCallback):
    """Insertion and deletion scores of attribution methods on the probe set, with heatmaps.

    For every method, and for a random attribution as the chance baseline, it logs the mean
    insertion and deletion AUC over the probe (RISE semantics, see
    :func:`~compass_lightning.attribution.insertion_deletion`) and their difference, under
    ``compass/interpretability/<method>/{insertion,deletion,insertion_minus_deletion}``: higher
    insertion and lower deletion mean more faithful attributions, and a method that does not beat
    ``random`` explains nothing. Attributions and scores are for the class the model predicts on
    each clean probe image. Images: a grid of heatmap overlays (rows: the same probe images every
    epoch, columns: the methods), so TensorBoard's slider shows the attributions change over
    epochs, and the mean insertion and deletion curves per method.

    Args:
        methods: names of :data:`~compass_lightning.attribution.METHODS`, or a mapping from names to
            parameters, e.g. ``{"integrated_gradients": {"steps": 32}, "gradcam": {"layer": "net.6"}}``.
        steps: points of every insertion/deletion curve (>= 2).
        baseline: what deleted pixels become: ``"zeros"`` (black) or ``"blur"``.
        insertion_start: what insertion starts from: ``"zeros"`` or ``"blur"``.
        image_count: probe images in the heatmap grid (0: none).
        random_baseline: also score uniformly random attributions (logged as ``random``), the
            chance level a method must beat.
        every_n_epochs, probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; by default every 5 epochs, on
            up to 32 samples. ``batch_size`` is also the number of images in one forward
            pass of insertion/deletion, integrated gradients and SmoothGrad (unless a method's
            ``internal_batch_size`` says otherwise).

    Example:
        >>> monitor = AttributionScores(methods=["saliency", "integrated_gradients"], probe_size=16, every_n_epochs=2)
        >>> monitor.expected_tags()[:3]
        ['compass/interpretability/saliency/insertion', 'compass/interpretability/saliency/deletion', 'compass/interpretability/saliency/insertion_minus_deletion']
    """

    default_probe_size = 32

    def __init__(
        self,
        methods: Methods = DEFAULT_METHODS,
        *,
        steps: int = 32,
        baseline: str = "zeros",
        insertion_start: str = "zeros",
        image_count: int = 8,
        random_baseline: bool = True,
        every_n_epochs: int = 5,
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
        self.methods = resolve_selection(METHODS, "methods", methods)
        self.methods = self.applicable("attribution", self.methods, "methods", explicit=methods != DEFAULT_METHODS)
        self.steps = check_int("steps", steps, minimum=2)
        self.baseline = check_choice("baseline", baseline, SUBSTRATES)
        self.insertion_start = check_choice("insertion_start", insertion_start, SUBSTRATES)
        self.image_count = check_int("image_count", image_count, minimum=0)
        self.random_baseline = check_bool("random_baseline", random_baseline)
        for params in self.methods.values():
            if "bounds" in params:  # methods that clip to pixel bounds clip to the task's
                params["bounds"] = self.task.input_range

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "methods": sorted(self.methods), "steps": self.steps}

    @override
    def expected_tags(self) -> list[str]:
        return [tag(MODULE, name, score) for name in self._scored() for score in SCORES]

    def _scored(self) -> tuple[str, ...]:
        return (*self.methods, RANDOM) if self.random_baseline else tuple(self.methods)

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        check_layer_parameters(pl_module, self.methods, METHODS, "methods")

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        # e.g. DeepLIFT on a model of functional ReLUs: refused now, with the reason
        self.check_on_a_sample(trainer, model_checks(self.methods), "methods")

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        probe, task = evaluation.probe, evaluation.task
        shown = min(self.image_count, len(probe)) if evaluation.want_images else 0
        kept: dict[str, Tensor] = {}
        curves: dict[str, tuple[Tensor, Tensor]] = {}
        for name in self._scored():
            with self.isolate(f"attribution method {name!r}"):
                generator = self.generator(f"attribution/{name}", evaluation.device)
                rows, attributions = score_probe(
                    evaluation, name, self.methods.get(name, {}), generator, steps=self.steps, baseline=self.baseline,
                    insertion_start=self.insertion_start, keep=shown,
                )
                if attributions is not None:
                    kept[name] = attributions
                insertion, deletion = rows["insertion"].mean(), rows["deletion"].mean()
                evaluation.scalars[tag(MODULE, name, "insertion")] = insertion
                evaluation.scalars[tag(MODULE, name, "deletion")] = deletion
                evaluation.scalars[tag(MODULE, name, "insertion_minus_deletion")] = insertion - deletion
                curves[name] = (rows["insertion_curve"].mean(dim=0), rows["deletion_curve"].mean(dim=0))
        if shown and kept:
            first = slice(0, shown)
            predicted = task.predictions(evaluation.outputs(probe.inputs))
            shown_samples = (take(probe.shard(probe.inputs), first), kept, probe.shard(predicted.cpu())[first],
                             probe.shard(probe.targets)[first])
            figure = task.attribution_figure(
                *shown_samples, title=f"epoch {trainer.current_epoch}: attributions for the predicted class (bright = important)",
            )
            if figure is not None:
                evaluation.images["compass/interpretability/heatmaps"] = figure
            text = task.attribution_text(*shown_samples)
            if text is not None:  # token heatmaps, also as coloured text in the HTML report
                evaluation.texts["compass/interpretability/heatmaps"] = text
        if evaluation.want_images and curves:
            fractions = torch.linspace(0, 1, self.steps).tolist()
            for index, kind in enumerate(("insertion", "deletion")):
                evaluation.images[f"compass/interpretability/{kind}_curves"] = line_chart(
                    fractions,
                    {name: pair[index].tolist() for name, pair in curves.items()},
                    xlabel=f"fraction of pixels {'inserted' if kind == 'insertion' else 'deleted'}",
                    ylabel="probability of the predicted class",
                    title=f"mean {kind} curve per method, epoch {trainer.current_epoch}",
                    chance=RANDOM,
                )
