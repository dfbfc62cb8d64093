"""``DeepValidation``: how well the model's own hidden layers flag the inputs it gets wrong (the thesis' chapter 3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from compass_lightning.attacks import ATTACKS, run_attack
from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.engine.checks import check_int, check_real
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.neurons.validation import (
    TRANSFORMS,
    choose_strength,
    detection_auc,
    fit_validator,
    hidden_layers,
    one_class_svm,
)
from compass_lightning.reporting.figures import bar_chart
from compass_lightning.reporting.reporter import CompassWarning
from compass_lightning.reporting.tags import tag
from compass_lightning.tasks import Task

PREFIX = tag("validation")


@compass_module("validation")
class DeepValidation(CompassCallback):
    """Deep Validation at validation epochs: one-class models of the hidden layers, fitted on correctly
    classified training samples, and how well their discrepancy flags corner cases and adversarial examples.

    At each evaluation (definitions in :mod:`compass_lightning.neurons.validation`): the one-class SVMs
    are refitted on ``fit_size`` training samples (the model changes while it trains); the probe's
    correctly classified samples are the seeds; each transform makes corner cases at its strength
    (chosen by the thesis' grid search at the first evaluation, then kept so that epochs compare, or
    given in ``strengths``); each attack makes adversarial examples. Logs:

    - ``compass/validation/auc``: ROC AUC of the discrepancy, successful corner cases of every
      transform (misclassified) against the clean seeds, failed ones left out (the thesis' Table 3.6);
      ``compass/validation/layer/<layer>/auc`` the same with one layer's discrepancy;
    - ``compass/validation/<transform>/{auc,strength,success_rate}`` per transform (NaN for one the
      grid search dropped: it never misclassified 30 % of the seeds);
    - ``compass/validation/<attack>/auc`` on the successful adversarial examples (Table 3.8);

    and an image of the discrepancy distributions (clean, successful and failed corner cases).

    Args:
        transforms: corner-case transforms from ``brightness contrast rotation shear scale translation
            complement`` (default: all; the thesis drops brightness and contrast on MNIST by its rule).
        strengths: ``{transform: strength}`` to use instead of the grid search.
        attacks: attacks whose successful examples are scored too (any of ``compass_lightning.attacks``).
        eps: their L∞ budget (default: the task's, 8/255 for images in [0, 1]).
        layers: hidden layers to validate (default: every default layer but the logits).
        fit_size: training samples the one-class models are fitted on; fit_data: a Dataset or
            ``(inputs, targets)`` pair to fit on instead of the training data.
        nu, gamma: ``OneClassSVM``'s (shared by every class of a layer, as in the thesis).
        target: the misclassification rate the grid search aims at (the thesis' 0.6).
        every_n_epochs, probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; the probe holds up to 256 samples.

    Needs scikit-learn (``pip install compass-lightning[validation]``): without it the constructor says so.

    Example:
        >>> monitor = DeepValidation(transforms=["rotation", "complement"], strengths={"rotation": 30}, attacks=["fgsm"])
        >>> monitor.expected_tags()[:3]
        ['compass/validation/auc', 'compass/validation/rotation/auc', 'compass/validation/rotation/strength']
    """

    default_probe_size = 256

    def __init__(
        self,
        transforms: Optional[Sequence[str]] = None,
        *,
        strengths: Optional[Mapping[str, float]] = None,
        attacks: Sequence[str] = ("fgsm", "pgd"),
        eps: Optional[float] = None,
        layers: Optional[Sequence[str]] = None,
        fit_size: int = 1000,
        fit_data: Optional[ProbeData] = None,
        nu: float = 0.1,
        gamma: Any = "scale",
        target: float = 0.6,
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
        super().__init__(every_n_epochs=every_n_epochs, probe_size=probe_size, batch_size=batch_size, seed=seed,
                         task=task, probe_data=probe_data, fail_fast=fail_fast, budget=budget, final=final, images_every_n=images_every_n)
        one_class_svm()  # a missing optional dependency is said now, not at the first evaluation
        self.applicable("neurons", ["deep_validation"], "DeepValidation", explicit=True)
        if tuple(self.task.input_range) != (0.0, 1.0):  # x + β, α·x, 1 − x and the thesis' grids are for [0, 1]
            raise ValueError(f"DeepValidation: its corner-case transforms take pixels in [0, 1], but the task's input_range is "
                             f"{tuple(self.task.input_range)}")
        names = list(TRANSFORMS) if transforms is None else transforms
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise TypeError(f"transforms must be a non-empty list of names from {', '.join(TRANSFORMS)}, got {transforms!r}")
        if unknown := [n for n in names if n not in TRANSFORMS]:
            raise ValueError(f"transforms: unknown transform {unknown[0]!r}; choose from: {', '.join(TRANSFORMS)}")
        self.transforms = list(dict.fromkeys(names))
        given = dict(strengths or {})
        if unknown := [n for n in given if n not in self.transforms]:
            raise ValueError(f"strengths: {unknown[0]!r} is not among the transforms {self.transforms}")
        self.strengths: dict[str, Optional[float]] = {n: check_real(f"strengths[{n!r}]", v) for n, v in given.items()}
        self.attacks = [ATTACKS.lookup(name, "attack").name for name in attacks]
        self.applicable("attack", self.attacks, "attacks", explicit=True)
        self.eps = check_real("eps", self.task.budgets["linf"] if eps is None else eps, low=0.0)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) and n for n in layers) or not layers):
            raise TypeError(f"layers must be None or a non-empty list of module names, got {layers!r}")
        self.layers = None if layers is None else list(layers)
        self.fit_size = check_int("fit_size", fit_size, minimum=2)
        self.fit_data = self._check_probe_data(fit_data) if fit_data is not None else None
        self.nu = check_real("nu", nu, low=0.0, high=1.0, low_open=True)
        self.gamma = gamma if gamma in ("scale", "auto") else check_real("gamma", gamma, low=0.0, low_open=True)
        self.target = check_real("target", target, low=0.0, high=1.0, low_open=True)
        self._layer_names: list[str] = []
        self._dropped: set[str] = set()

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "transforms": self.transforms, "layers": self.layers}

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        self._layer_names = list(hidden_layers(pl_module, self.layers))

    @override
    def expected_tags(self) -> list[str]:
        tags = [f"{PREFIX}/auc"]
        tags += [f"{PREFIX}/{t}/{m}" for t in self.transforms for m in ("auc", "strength", "success_rate")]
        tags += [f"{PREFIX}/layer/{layer}/auc" for layer in self._layer_names]
        return tags + [f"{PREFIX}/{attack}/auc" for attack in self.attacks]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "strengths": dict(self.strengths)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.strengths.update(state_dict.get("strengths", {}))

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        model, probe, task, size = evaluation.model, evaluation.probe, evaluation.task, evaluation.batch_size
        fit = self.training_sample(trainer, self.fit_size, self.fit_data, argument="fit_data")
        space = task.space_model(model, fit.inputs)
        in_space = lambda inputs: torch.cat([task.to_space(c, model) for c in ProbeSet.chunks(inputs, size, evaluation.device)])  # noqa: E731
        validator = fit_validator(space, in_space(fit.inputs), fit.targets.to(evaluation.device), layers=self.layers,
                                  nu=self.nu, gamma=self.gamma, batch_size=size)
        x = in_space(probe.inputs)
        y = probe.targets.to(evaluation.device)
        clean = validator.discrepancy(space, x, size)
        correct = (clean.predicted == y.cpu()).to(x.device)
        seeds, labels, clean_total = x[correct], y[correct], clean.total[correct.cpu()]
        clean_layers = {name: v[correct.cpu()] for name, v in clean.layers.items()}
        successful: list[Any] = []
        failed: list[Tensor] = []
        for name in self.transforms:
            with self.isolate(f"corner cases of {name}"):
                strength = self._strength(space, seeds, labels, name)
                prefix = f"{PREFIX}/{name}"
                if strength is None:
                    evaluation.scalars.update({f"{prefix}/{m}": math.nan for m in ("auc", "strength", "success_rate")})
                    continue
                found = validator.discrepancy(space, TRANSFORMS[name][0](seeds, strength), size)
                hit = found.predicted != labels.cpu()
                successful.append((found.total[hit], {n: v[hit] for n, v in found.layers.items()}))
                failed.append(found.total[~hit])
                evaluation.scalars.update({f"{prefix}/auc": detection_auc(clean_total, found.total[hit]),
                                           f"{prefix}/strength": strength, f"{prefix}/success_rate": float(hit.float().mean())})
        corner = torch.cat([s for s, _ in successful]) if successful else torch.zeros(0)
        evaluation.scalars[f"{PREFIX}/auc"] = detection_auc(clean_total, corner)
        for layer, values in clean_layers.items():
            hits = torch.cat([per_layer[layer] for _, per_layer in successful]) if successful else torch.zeros(0)
            evaluation.scalars[f"{PREFIX}/layer/{layer}/auc"] = detection_auc(values, hits)
        for attack in self.attacks:
            with self.isolate(f"adversarial examples of {attack}"):
                x_adv = run_attack(attack, space, seeds, labels, eps=self.eps, bounds=task.input_range,
                                   generator=self.generator(f"validation/{attack}", evaluation.device))
                found = validator.discrepancy(space, x_adv, size)
                evaluation.scalars[f"{PREFIX}/{attack}/auc"] = detection_auc(clean_total, found.total[found.predicted != labels.cpu()])
        if evaluation.want_images:
            evaluation.images[f"{PREFIX}/discrepancy"] = self._histogram(clean_total, corner, torch.cat(failed) if failed else corner[:0],
                                                                          evaluation.epoch)

    def _strength(self, space: Any, seeds: Tensor, labels: Tensor, name: str) -> Optional[float]:
        """The transform's strength: given, chosen before, or chosen now by the grid search (kept)."""
        if name not in self.strengths:
            strength, rate = choose_strength(space, seeds, labels, name, target=self.target)
            self.strengths[name] = strength
            if strength is None and name not in self._dropped:
                self._dropped.add(name)
                rank_zero_warn(f"DeepValidation: {name} never misclassifies 30 % of the seeds (at most {rate:.0%}), so it is "
                               "left out, as the thesis' rule drops it; give strengths={...} to use it anyway", category=CompassWarning)
        return self.strengths[name]

    @staticmethod
    def _histogram(clean: Tensor, successful: Tensor, failed: Tensor, epoch: int) -> Tensor:
        """The three discrepancy distributions as fractions per bin, on one axis."""
        values = torch.cat([clean, successful, failed]).double()
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        edges = torch.linspace(low, high if high > low else low + 1, 13, dtype=torch.float64)
        series = {}
        for name, v in (("clean seeds", clean), ("successful corner cases", successful), ("failed corner cases", failed)):
            counts = torch.histogram(v.double(), bins=edges).hist if len(v) else torch.zeros(12, dtype=torch.float64)
            series[f"{name} ({len(v)})"] = (counts / max(len(v), 1)).tolist()
        centres = [f"{float(a + b) / 2:.2g}" for a, b in zip(edges[:-1], edges[1:])]
        return bar_chart(centres, series, xlabel="discrepancy (sum over layers; > 0: outlier)", ylabel="fraction of inputs",
                         title=f"Deep Validation discrepancy, epoch {epoch}")
