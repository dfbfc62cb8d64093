"""``NeuronAnalysis``: coverage, neuron sensitivity and layer deviation under attack, epoch by epoch."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from compass_lightning.attacks import ATTACKS
from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.callbacks._generation import check_generation, due, run_generation
from compass_lightning.engine.checks import check_bool, check_int, check_real, check_reals, positive, probability
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.sites import NotCalledError
from compass_lightning.reporting.figures import bar_chart, gradcam_grid, line_chart, matrix_chart
from compass_lightning.neurons import (
    CRITERIA,
    Coverage,
    conv_neuron_layers,
    jaccard,
    most_vulnerable,
    neuron_excitability,
    neuron_sensitivity,
    neuron_values,
    profile_ranges,
    paper_fraction,
    select_layers,
    sensitive_fraction,
    summarise_strengths,
    top_neurons,
)
from compass_lightning.neurons.deviation import STRENGTHS, SUMMARY, deviation_similarities
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.engine.evaluation import attack_key
from compass_lightning.engine.samples import take, to
from compass_lightning.reporting.tags import tag
from compass_lightning.tasks import Task

PREFIX = tag("neurons")
KINDS = ("adversarial", "gaussian")  # the two similarities of the layer deviation, per layer


def strength_tag(strength: float) -> str:
    """``strength_0.25``: the tag segment of a perturbation strength of the deviation sweep."""
    return f"strength_{strength:g}"


@compass_module('neurons')
class NeuronAnalysis(CompassCallback):
    """Which neurons the data exercises, which react most to noise, and which layers an attack hijacks.

    At validation epochs, on the probe set (see :mod:`compass_lightning.neurons` for the definitions):

    - ``compass/neurons/coverage/<criterion>`` (and ``/<layer>``): DeepGauge coverage of the probe,
      against neuron ranges re-profiled every evaluation on ``profile_size`` training samples (ranges
      drift while the model trains);
    - ``compass/neurons/sensitivity/fraction`` (and ``/<layer>``): DeepSensor's fraction of
      sensitive neurons under Gaussian noise of ``sigma`` (pixel units): (input, neuron) pairs whose
      unscaled sensitivity exceeds ``sensitivity_threshold`` (its Def. 2, λ = 0.5, and Eq. 2);
      ``.../sensitivity/scaled_fraction`` the scale-free variant (probe means min-max scaled per
      layer); ``compass/neurons/sensitivity/top10_stability``: the Jaccard overlap of the 10 most
      sensitive neurons with the previous evaluation's;
    - ``compass/neurons/excitability/fraction`` and ``scaled_fraction`` (and ``/<layer>``), with
      ``excitability``: the same two fractions of "excitable" neurons by the first-order
      approximation of the papers' Shapley value, averaged over the ``draws``;
    - ``compass/neurons/deviation/<layer>/{adversarial,gaussian,gap,compromise_probability}`` for
      every convolution, with ``deviation``: Grad-CAM cosine similarity (maps at the input's
      resolution) to the clean map under the attack and under matched Gaussian noise, and the
      fraction of the inputs whose adversarial example fools the model and compromises the layer;
      ``compass/neurons/deviation/fooled`` the fraction of the inputs whose example fools it;
      ``.../deviation/strength_<k>/{fooled,compromise_probability}`` the same with the perturbation
      scaled by each of ``strengths`` (the layers' mean compromise);
    - ``compass/neurons/generation/...`` with ``test_generation``: DeepSensor's test generation on its
      own schedule (:mod:`~compass_lightning.callbacks._generation`).

    Images: a layers × epochs map of the sensitive fraction (growing every evaluation), a per-layer
    bar chart of adversarial vs Gaussian similarity, each layer's compromise against the strength,
    the histogram of compromised layers per fooling example (the paper's Fig. 7), and Grad-CAM
    overlays (clean / adversarial / Gaussian) of a few probe images at the most vulnerable layer.

    Args:
        layers: module names to analyse (default: every convolution, linear, recurrent and Transformer
            layer, see :mod:`compass_lightning.neurons._layers`; a convolution or linear layer read after
            its activation, for any model: :mod:`compass_lightning.engine.sites`); named layers are read as
            they are; deviation uses the convolutions among them.
        criteria: coverage criteria, from ``nc kmnc nbc snac tknc bknc``.
        threshold: NC's threshold on per-input min-max scaled values, in [0, 1].
        sections: KMNC's sections per neuron (>= 1).
        top_k: TKNC's neurons per layer (>= 1).
        profile_size: training samples the neuron ranges are profiled on.
        profile_data: a Dataset or ``(inputs, targets)`` pair to profile on instead of the training data.
        sigma: standard deviation of the sensitivity noise, in pixel units.
        draws: noise draws per probe sample.
        sensitivity_threshold: λ: a neuron is sensitive (or excitable) on an input when its score
            exceeds this (``fraction``), and in the scale-free variant when its per-layer min-max
            scaled probe mean does (``scaled_fraction``); in [0, 1].
        excitability: also compute the excitable-neuron proxy (``1 + draws`` forward and backward passes).
        deviation: also compute the layer deviation under ``attack`` at ``eps``.
        attack, eps: the attack of the deviation analysis (any of ``compass_lightning.attacks``).
        strengths: the multiples of the attack's perturbation the deviation is also measured at (the
            paper's 0.25, 0.5, 1, 2, 4; 1 is always included; each costs one more Grad-CAM pass of
            the adversarial and the noisy inputs).
        image_count: probe images in the Grad-CAM grid (0: none).
        test_generation: ``None`` (off) or the settings of DeepSensor's swarm (``{}``: its defaults;
            :data:`~compass_lightning.callbacks._generation.DEFAULTS`: seeds, particles, generations, bound, norm, every_n_epochs).
        every_n_epochs, probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback` (a probe of up to 256 samples by default).

    Example:
        >>> monitor = NeuronAnalysis(criteria=["nc", "kmnc"], sections=20, every_n_epochs=2)
        >>> monitor.expected_tags()[:2]
        ['compass/neurons/coverage/nc', 'compass/neurons/coverage/kmnc']
    """

    default_probe_size = 256

    def __init__(
        self,
        *,
        layers: Optional[Sequence[str]] = None,
        criteria: Sequence[str] = CRITERIA,
        threshold: float = 0.2,
        sections: int = 10,
        top_k: int = 1,
        profile_size: int = 1000,
        profile_data: Optional[ProbeData] = None,
        sigma: float = 0.05,
        draws: int = 4,
        sensitivity_threshold: float = 0.5,
        excitability: bool = True,
        deviation: bool = True,
        attack: str = "fgsm",
        eps: float = 8 / 255,
        strengths: Sequence[float] = STRENGTHS,
        image_count: int = 4,
        test_generation: Optional[dict[str, Any]] = None,
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
        super().__init__(every_n_epochs=every_n_epochs, probe_size=probe_size, batch_size=batch_size, seed=seed, task=task,
                         probe_data=probe_data, fail_fast=fail_fast, budget=budget, final=final, images_every_n=images_every_n)
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers
                                   or not all(isinstance(n, str) and n for n in layers)):
            raise TypeError(f"layers must be None or a non-empty list of module names, got {layers!r}")
        self.layers = None if layers is None else list(layers)
        if isinstance(criteria, str) or not isinstance(criteria, (list, tuple)):
            raise TypeError(f"criteria must be a list of names from {', '.join(CRITERIA)}, got {criteria!r}")
        Coverage({}, criteria=criteria)  # checks the names
        self.criteria = tuple(criteria)
        self.threshold = probability("threshold", threshold)
        self.sections = check_int("sections", sections, minimum=1)
        self.top_k = check_int("top_k", top_k, minimum=1)
        self.profile_size = check_int("profile_size", profile_size, minimum=1)
        self.profile_data = self._check_probe_data(profile_data) if profile_data is not None else None
        self.sigma = positive("sigma", sigma)
        self.draws = check_int("draws", draws, minimum=1)
        self.sensitivity_threshold = probability("sensitivity_threshold", sensitivity_threshold)
        self.excitability = check_bool("excitability", excitability)
        self.deviation = check_bool("deviation", deviation)
        self.attack = ATTACKS.lookup(attack, "attack").name
        self.criteria = self.applicable("neurons", self.criteria, "criteria", explicit=tuple(criteria) != CRITERIA)
        if self.deviation:  # at its default: left out with a warning where the task has no layer deviation
            self.deviation = bool(self.applicable("neurons", ["deviation"], "analyses", explicit=False))
        if self.deviation:
            self.applicable("attack", [self.attack], "attack", explicit=True)
        self.eps = check_real("eps", eps, low=0.0)
        self.strengths = tuple(sorted({1.0, *check_reals("strengths", list(strengths), low=0.0, low_open=True)}))
        self.image_count = check_int("image_count", image_count, minimum=0)
        self.test_generation = check_generation(test_generation)
        if self.test_generation is not None:
            self.applicable("neurons", ["test_generation"], "test_generation", explicit=True)
        self._layer_names: list[str] = []
        self._conv_names: list[str] = []
        self._previous_top: list[str] | None = None

    # -- configuration -------------------------------------------------------------------------

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "layers": self.layers, "criteria": list(self.criteria)}

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        self._layer_names = list(select_layers(pl_module, self.layers))
        if self.deviation:
            self._conv_names = list(conv_neuron_layers(pl_module, self.layers))

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        """The layers that run: one traced forward pass of a sample leaves out default layers the
        model never calls as modules and refuses named ones (``layers``), before the first step."""
        model = trainer.lightning_module
        source = self._probe or self.training_sample(trainer, 1, self.profile_data, argument="profile_data")
        one = to(take(source.inputs, slice(0, 1)), model.device)
        try:
            with analysis_mode(model, seed=self.seed):
                self._layer_names = list(select_layers(model, self.layers, example=one,
                                                       forward=lambda x: self.task.outputs(model, x)))
        except NotCalledError:
            raise
        except Exception:  # noqa: BLE001 - a model that cannot be called is reported by the evaluations, once
            pass

    @override
    def expected_tags(self) -> list[str]:
        tags = [f"{PREFIX}/coverage/{c}" for c in self.criteria]
        tags += [f"{PREFIX}/coverage/{c}/{layer}" for c in self.criteria for layer in self._layer_names]
        kinds = ("sensitivity", "excitability") if self.excitability else ("sensitivity",)
        for kind, form in itertools.product(kinds, ("fraction", "scaled_fraction")):
            tags += [f"{PREFIX}/{kind}/{form}"] + [f"{PREFIX}/{kind}/{form}/{layer}" for layer in self._layer_names]
        tags.append(f"{PREFIX}/sensitivity/top10_stability")
        if self.deviation:
            tags += [f"{PREFIX}/deviation/{layer}/{m}" for layer in self._conv_names for m in SUMMARY]
            tags += [f"{PREFIX}/deviation/fooled"] + [f"{PREFIX}/deviation/{strength_tag(k)}/{m}" for k in self.strengths
                                                      for m in ("fooled", "compromise_probability")]
        return tags

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_top": self._previous_top}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._previous_top = state_dict.get("previous_top")

    # -- evaluation ----------------------------------------------------------------------------

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        model, probe, task = evaluation.model, evaluation.probe, evaluation.task
        one = to(take(probe.inputs, slice(0, 1)), evaluation.device)  # traced to find where layers are read
        layers = select_layers(model, self.layers, example=one, forward=lambda x: task.outputs(model, x))
        if not self._layer_names:  # trainer.validate/test: no fit start has resolved them
            self.check_model(model)
        with self.isolate("neuron coverage"):
            self._coverage(trainer, evaluation, layers)

        def sensitive(inputs: Tensor, normal: Tensor) -> dict[str, Tensor]:
            return neuron_sensitivity(task.space_model(model, inputs), task.to_space(inputs, model), sigma=self.sigma, draws=self.draws,
                                      layers=self.layers, normal=normal, valid=task.positions(inputs))

        with self.isolate("neuron sensitivity"):
            normal = self._normal("sensitivity", self.draws, evaluation)
            per_input = evaluation.per_sample(sensitive, probe.inputs, normal)
            scores = self._log_fraction(evaluation, "sensitivity", per_input)
            top = top_neurons(scores)
            if self._previous_top is not None:
                evaluation.scalars[f"{PREFIX}/sensitivity/top10_stability"] = jaccard(top, self._previous_top)
            self._previous_top = top
        if self.excitability:

            def excitable(inputs: Tensor, targets: Tensor, normal: Tensor) -> dict[str, Tensor]:
                return neuron_excitability(task.space_model(model, inputs), task.to_space(inputs, model), targets, sigma=self.sigma,
                                           draws=self.draws, layers=self.layers, normal=normal, valid=task.positions(inputs))

            with self.isolate("neuron excitability"):
                normal = self._normal("excitability", self.draws, evaluation)
                self._log_fraction(evaluation, "excitability", evaluation.per_sample(excitable, probe.inputs, probe.targets, normal))
        if self.deviation:
            with self.isolate(f"layer deviation under {self.attack}"):
                self._deviation(trainer, evaluation)
        runs = sum(r.get("key") == self.state_key and r["stage"] == "fit" for r in self.history)
        if due(self.test_generation, runs):
            with self.isolate("DeepSensor test generation"):
                run_generation(evaluation, self.test_generation, self.layers, self.seed)
        if evaluation.want_images:
            self._sensitivity_map(evaluation)

    def _normal(self, key: str, draws: int, evaluation: Evaluation) -> Tensor:
        """``(N, draws, ...)`` standard normal draws in the perturbation space for the whole probe,
        made on the CPU from the key's generator: the same numbers whatever the device, ``batch_size``
        or number of processes."""
        probe = evaluation.probe
        one = to(take(probe.inputs, slice(0, 1)), evaluation.device)
        shape = evaluation.task.to_space(one, evaluation.model).shape[1:]  # of one sample in the space
        return torch.randn((len(probe), draws, *shape), generator=self.generator(key))

    def _coverage(self, trainer: pl.Trainer, evaluation: Evaluation, layers: dict) -> None:
        model, probe, task = evaluation.model, evaluation.probe, evaluation.task
        profile = self.training_sample(trainer, self.profile_size, self.profile_data, argument="profile_data")
        ranges = None
        needs_ranges = {"kmnc", "nbc", "snac"} & set(self.criteria)
        if needs_ranges:  # every process profiles all samples: the same ranges everywhere
            chunks = ProbeSet.chunks(profile.inputs, evaluation.batch_size, evaluation.device)
            ranges = profile_ranges(model, chunks, layers=self.layers, forward=lambda x: task.outputs(model, x),
                                    positions=task.positions)

        def values(inputs: Tensor) -> dict[str, Tensor]:
            seen = neuron_values(lambda x: task.outputs(model, x), inputs, layers, task.positions(inputs))
            return {**{f"values/{n}": v for n, v in seen.values.items()}, **{f"extents/{n}": v for n, v in seen.extents.items()}}

        rows = evaluation.per_sample(values, probe.inputs)
        cover = Coverage(ranges, criteria=self.criteria, threshold=self.threshold, sections=self.sections, top_k=self.top_k)
        cover.update({n: rows[f"values/{n}"] for n in layers}, {n: rows[f"extents/{n}"] for n in layers})
        for criterion, result in cover.result().items():
            evaluation.scalars[f"{PREFIX}/coverage/{criterion}"] = result.pop("total")
            evaluation.scalars.update({f"{PREFIX}/coverage/{criterion}/{layer}": v for layer, v in result.items()})

    def _log_fraction(self, evaluation: Evaluation, kind: str, per_input: dict[str, Tensor]) -> dict[str, Tensor]:
        """Log DeepSensor's fraction (unscaled per-input scores above the threshold) as ``fraction``
        and the scale-free one (per-layer min-max scaled probe means) as ``scaled_fraction``;
        return the probe means."""
        scores = {name: s.mean(dim=0).cpu() for name, s in per_input.items()}
        for form, fractions in (("fraction", paper_fraction(per_input, self.sensitivity_threshold)),
                                ("scaled_fraction", sensitive_fraction(scores, self.sensitivity_threshold))):
            evaluation.scalars[f"{PREFIX}/{kind}/{form}"] = fractions.pop("total")
            evaluation.scalars.update({f"{PREFIX}/{kind}/{form}/{layer}": v for layer, v in fractions.items()})
        return scores

    def _deviation(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        probe, task = evaluation.probe, evaluation.task
        one = to(take(probe.inputs, slice(0, 1)), evaluation.device)
        layers = conv_neuron_layers(evaluation.model, self.layers, example=task.to_space(one, evaluation.model),
                                    forward=task.space_model(evaluation.model, one))
        generator = self.generator(f"deviation/{self.attack}", evaluation.device)  # for random attacks
        normal = self._normal(f"deviation/{self.attack}/gaussian", 1, evaluation)[:, 0]
        shown = min(self.image_count, len(probe.shard(probe.inputs))) if evaluation.want_images else 0
        kept: dict[str, Any] = {}

        def similarities(inputs: Tensor, targets: Tensor, z: Tensor, *made: Tensor) -> dict[str, Tensor]:
            x = task.to_space(inputs, evaluation.model)
            by_strength, extras = deviation_similarities(
                task.space_model(evaluation.model, inputs), x, targets, attack=self.attack, eps=self.eps, layers=layers, bounds=task.input_range,
                generator=generator, x_adv=made[0] if made else None, normal=z, strengths=self.strengths,
            )
            if shown and not kept:
                n = len(x)
                kept.update(x=x[:shown].cpu(), x_adv=extras["x_adv"][:shown].cpu(), x_gauss=extras["x_gauss"][:shown].cpu(),
                            maps={k: torch.stack([m[:shown], m[n : n + shown], m[2 * n : 2 * n + shown]]).cpu()
                                  for k, m in extras["maps"].items()})
            rows = {f"{k}/fooled": r["fooled"].float() for k, r in by_strength.items()}
            rows.update({f"{k}/{name}/{kind}": value for k, r in by_strength.items() for name, pair in r["layers"].items()
                         for kind, value in zip(KINDS, pair)})
            return rows

        # the robustness analysis of the same evaluation may have made these examples already
        made = evaluation.shared.get(attack_key(self.attack, self.eps, ATTACKS[self.attack].resolve({})), len(probe))
        aligned = (probe.inputs, probe.targets, normal) + ((made,) if made is not None else ())
        rows = {key: value.cpu() for key, value in evaluation.per_sample(similarities, *aligned).items()}
        by_strength = {k: {"fooled": rows[f"{k}/fooled"].bool(),
                           "layers": {n: tuple(rows[f"{k}/{n}/{kind}"] for kind in KINDS) for n in layers}}
                       for k in self.strengths}
        result = summarise_strengths(by_strength)
        summary = result["layers"]
        for layer, values in summary.items():
            evaluation.scalars.update({f"{PREFIX}/deviation/{layer}/{m}": v for m, v in values.items()})
        evaluation.scalars[f"{PREFIX}/deviation/fooled"] = result["fooled"]
        for k, values in result["strengths"].items():
            evaluation.scalars.update({f"{PREFIX}/deviation/{strength_tag(k)}/{m}": values[m] for m in ("fooled", "compromise_probability")})
        if not evaluation.want_images:
            return
        evaluation.images[f"{PREFIX}/deviation/similarity"] = bar_chart(
            list(summary), {kind: [float(v[kind]) for v in summary.values()] for kind in ("adversarial", "gaussian")},
            xlabel="layer", ylabel="cosine similarity to the clean Grad-CAM", ylim=(min(0.0, *(float(v.min()) for pair in by_strength[1.0]["layers"].values() for v in pair)), 1.0),
            title=f"{self.attack} (eps {self.eps:.3g}) vs matched Gaussian noise, epoch {evaluation.epoch}",
        )
        evaluation.images[f"{PREFIX}/deviation/strengths"] = line_chart(
            list(self.strengths), {n: [float(v["layers"][n]) for v in result["strengths"].values()] for n in layers},
            xlabel="perturbation strength (× the attack's)", ylabel="inputs fooling and compromising the layer",
            title=f"layers compromised by {self.attack} per strength, epoch {evaluation.epoch}", ylim=(0.0, 1.0),
        )
        counts = result["counts"]
        evaluation.images[f"{PREFIX}/deviation/compromised_layers"] = bar_chart(
            [str(c) for c in range(len(layers) + 1)], {"fooling examples": [int((counts == c).sum()) for c in range(len(layers) + 1)]},
            xlabel="layers compromised", ylabel="adversarial examples",
            title=f"compromised layers per fooling example ({len(counts)} of {len(probe)}), epoch {evaluation.epoch}",
        )
        if kept:
            shown, layer = [evaluation.task.display(kept[key]) for key in ("x", "x_adv", "x_gauss")], most_vulnerable(summary, 1)[0]
            evaluation.images[f"{PREFIX}/deviation/gradcam"] = gradcam_grid(
                shown, kept["maps"][layer], ["clean", self.attack, "gaussian"],
                title=f"epoch {evaluation.epoch}: Grad-CAM at {layer}, the most vulnerable layer\n"
                "each map explains the class the model predicts on that input")

    def _sensitivity_map(self, evaluation: Evaluation) -> None:
        records = [r for r in self.history if r.get("key") == self.state_key and r["stage"] == "fit"]
        columns = [*(r["metrics"] for r in records), evaluation.scalars]
        epochs = [*(str(r["epoch"]) for r in records), str(evaluation.epoch)]
        names = self._layer_names or sorted({k.rsplit("/", 1)[-1] for k in evaluation.scalars if "/sensitivity/fraction/" in k})
        matrix = torch.tensor(
            [[float(c.get(f"{PREFIX}/sensitivity/fraction/{layer}", float("nan"))) for c in columns] for layer in names]
        )
        evaluation.images[f"{PREFIX}/sensitivity/layers_by_epoch"] = matrix_chart(
            matrix, names, epochs, xlabel="epoch", ylabel="layer", colour_label="fraction of sensitive neurons",
            title=f"DeepSensor sensitive neurons per layer (sigma {self.sigma:.3g})",
        )
