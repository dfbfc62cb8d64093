"""``PruningAnalysis``: how redundant the trained model is, and where its robustness and
interpretability live (AI-Compass module 5, RQ3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
import torch
from torch import Tensor, nn
from typing_extensions import override

from compass_lightning.callbacks._end_of_fit import EndOfFit
from compass_lightning.callbacks._pruning_cost import pruning_cost
from compass_lightning.callbacks._pruning_report import REPORT_FILE, write_report  # noqa: F401 - REPORT_FILE: its public name
from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.attacks import ATTACKS, mean_attack_success_rate
from compass_lightning.attacks.scoring import attack_metrics, attack_probe
from compass_lightning.attribution import METHODS, model_checks
from compass_lightning.attribution.scoring import score_probe
from compass_lightning.engine.checks import at_least_one, check_bool, check_choice, check_int, check_real, check_reals, optional
from compass_lightning.reporting.figures import line_chart
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.pruning import (
    DENOMINATORS, IMPORTANCES, PrunedCopies, max_safe_rate, parameter_count, sparsity,
)
from compass_lightning.engine.registry import resolve_selection
from compass_lightning.engine.layers import check_layer_parameters
from compass_lightning.reporting.tags import tag
from compass_lightning.tasks import Task

MODULE = "pruning"

DEFAULT_METHODS = ("magnitude", "taylor", "obd")
DEFAULT_ATTACKS = ("fgsm", "pgd")  # of the joint analysis
DEFAULT_ATTRIBUTION = ("saliency", "integrated_gradients")
UNPRUNED = "unpruned"
JOINT = ("asr", "insertion", "deletion")
#: The finer grid ``max_safe_rate`` is read from: 0.05, 0.10, ..., 0.95.
DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))

Methods = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]]]


def rate_tag(rate: float) -> str:
    """``rate_0.40`` for a rate on the percent grid, more digits otherwise.

    Example:
        >>> rate_tag(0.4), rate_tag(0.425)
        ('rate_0.40', 'rate_0.425')
    """
    return f"rate_{rate:.2f}" if math.isclose(rate * 100, round(rate * 100), abs_tol=1e-9) else f"rate_{rate:.4g}"


@compass_module('pruning')
class PruningAnalysis(EndOfFit, CompassCallback):
    """Prunes copies of the model without fine-tuning and measures what is lost, at the end of fit.

    For every importance method (:data:`~compass_lightning.pruning.IMPORTANCES`) it scores the
    prunable weights on calibration batches from the training data, prunes a copy at each rate and
    evaluates it on the probe set. It logs, through the trainer's loggers:

    - ``compass/pruning/unpruned/<metric>``: the basic metrics of the trained model;
    - ``compass/pruning/<method>/rate_0.40/<metric>``: every basic metric at each of ``rates``, the
      achieved ``sparsity`` and the ``accuracy_drop``; with ``joint``, at ``joint_rates`` (and for the
      unpruned model) also ``asr`` (the mean white-box attack success rate), ``insertion`` and
      ``deletion`` (mean over the attribution methods) — AI-Compass Figs. 5–6;
    - ``compass/pruning/<method>/max_safe_rate``: the largest rate of ``rates`` and ``sweep`` whose
      accuracy drop is at most ``tolerance``.

    Images: accuracy against the rate per method, ASR and insertion/deletion against the rate.
    ``pruning_report.csv`` in the log directory gets one row per method × rate (and one for the
    unpruned model) of every evaluation. ``greg2`` and ``asl`` train a copy on the calibration data
    for each rate and prune that copy (:mod:`~compass_lightning.pruning.episodes`: ``pick_steps +
    steps`` and ``steps`` SGD/Adam steps per rate), so their rows are marked ``changes_weights``.
    The trained model is never modified.

    Args:
        methods: importance methods, names or a mapping from names to parameters.
        rates: pruning rates (fractions of prunable weights set to zero, in ``[0, 1)``) logged per tag.
        sweep: the finer grid of rates ``max_safe_rate`` and the accuracy chart also cover (may be empty).
        tolerance: the accuracy drop (absolute) a safe rate may cause.
        structured: prune whole filters instead of single weights.
        rate_of: what a rate is a fraction of: ``"prunable"`` (default: the prunable weights, as
            ``torch.nn.utils.prune.global_unstructured`` counts) or ``"all"`` parameters (AI-Compass
            §6.4; biases and normalisation count but are never pruned). Both sparsities are logged
            (``sparsity``, of the prunable weights, and ``sparsity_all``).
        calibration_size: training samples the importances are computed on.
        calibration_data: a Dataset or ``(inputs, targets)`` pair to calibrate on instead of the
            training dataloader (needed under ``trainer.validate`` without training data).
        joint: also run attacks and attribution scores on the pruned copies at ``joint_rates``.
        joint_rates: the rates of the joint analysis.
        attacks, eps, eps_l2: the white-box attacks of the joint analysis and their L∞ and L2 budgets
            (see :class:`~compass_lightning.AttackSuccessRate`; default: the task's ``budgets``).
        attribution_methods, attribution_steps: the attribution methods and curve points of the joint
            analysis (see :class:`~compass_lightning.AttributionScores`).
        attribution_probe_size: the probe samples the joint attribution analysis scores (``None``:
            the whole probe); by default the first 32, as :class:`~compass_lightning.AttributionScores`
            does, because integrated gradients cost their steps' passes per sample and per pruned copy.
        save_pruned: write the pruned ``state_dict`` of every method at each of ``rates`` next to the
            checkpoints (``pruned_<method>_rate_0.40.pt``).
        every_n_epochs: also run at every ``n``-th validation epoch (``None``: only at the end of fit).
        probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; the probe holds up to 256
            validation samples by default.

    Example:
        >>> monitor = PruningAnalysis(methods=["magnitude", "taylor"], rates=[0.4], joint=False)
        >>> monitor.expected_tags()[-1]
        'compass/pruning/taylor/max_safe_rate'
    """

    default_probe_size = 256

    def __init__(
        self,
        methods: Methods = DEFAULT_METHODS,
        *,
        rates: Sequence[float] = (0.35, 0.40, 0.45, 0.50),
        sweep: Sequence[float] = DEFAULT_SWEEP,
        tolerance: float = 0.01,
        structured: bool = False,
        rate_of: str = "prunable",
        calibration_size: int = 256,
        calibration_data: Optional[ProbeData] = None,
        joint: bool = True,
        joint_rates: Sequence[float] = (0.35, 0.40),
        attacks: Sequence[str] = DEFAULT_ATTACKS,
        eps: Optional[float] = None,
        eps_l2: Optional[float] = None,
        attribution_methods: Sequence[str] = DEFAULT_ATTRIBUTION,
        attribution_steps: int = 16,
        attribution_probe_size: Optional[int] = 32,
        save_pruned: bool = False,
        every_n_epochs: Optional[int] = None,
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
        common = {"batch_size": batch_size, "seed": seed, "task": task, "fail_fast": fail_fast, "budget": budget, "final": final,
                  "images_every_n": images_every_n}
        super().__init__(every_n_epochs=every_n_epochs or 1, probe_size=probe_size, probe_data=probe_data, **common)
        if every_n_epochs is not None:
            check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.every_n_epochs = every_n_epochs
        self.methods = resolve_selection(IMPORTANCES, "methods", methods)
        self.methods = self.applicable("pruning", self.methods, "methods", explicit=methods != DEFAULT_METHODS)
        in_range = {"low": 0.0, "high": 1.0, "high_open": True}
        self.rates = tuple(sorted(set(check_reals("rates", list(rates) if isinstance(rates, tuple) else rates, **in_range))))
        if not isinstance(sweep, (list, tuple)):
            raise TypeError(f"sweep must be a list of rates in [0, 1), got {sweep!r}")
        self.sweep = tuple(sorted(set(check_reals("sweep", list(sweep), **in_range)))) if len(sweep) else ()
        self.tolerance = check_real("tolerance", tolerance, low=0.0)
        self.structured = check_bool("structured", structured)
        self.rate_of = check_choice("rate_of", rate_of, DENOMINATORS)
        if self.structured and (episodes := [m for m in self.methods if IMPORTANCES[m].changes_weights]):
            raise ValueError(f"structured: {episodes[0]!r} prunes single weights (GReg-2 element-wise, ASL); "
                             "use structured=False or leave it out of methods")
        self.calibration_size = check_int("calibration_size", calibration_size, minimum=1)
        self.calibration_data = self._check_probe_data(calibration_data) if calibration_data is not None else None
        self.joint = check_bool("joint", joint)
        self.joint_rates = tuple(sorted(set(check_reals("joint_rates", list(joint_rates), **in_range)))) if joint else ()
        self.save_pruned = check_bool("save_pruned", save_pruned)
        self.attribution_probe_size = optional(at_least_one)("attribution_probe_size", attribution_probe_size)
        # The joint analyses score the pruned copies with the same functions as the robustness and
        # interpretability monitors (attacks.scoring, attribution.scoring).
        self.attacks = resolve_selection(ATTACKS, "attacks", attacks)
        self.attacks = self.applicable("attack", self.attacks, "attacks", explicit=attacks != DEFAULT_ATTACKS)
        budgets = self.task.budgets  # the task's own where not given (8/255 and 0.5 for images in [0, 1])
        self.eps = {"linf": check_real("eps", budgets["linf"] if eps is None else eps, low=0.0),
                    "l2": check_real("eps_l2", budgets["l2"] if eps_l2 is None else eps_l2, low=0.0)}
        self.attribution_methods = resolve_selection(METHODS, "attribution_methods", attribution_methods)
        self.attribution_methods = self.applicable("attribution", self.attribution_methods, "attribution_methods",
                                                   explicit=attribution_methods != DEFAULT_ATTRIBUTION)
        for params in self.attribution_methods.values():
            if "bounds" in params:  # methods that clip to pixel bounds clip to the task's
                params["bounds"] = self.task.input_range
        self.attribution_steps = check_int("attribution_steps", attribution_steps, minimum=2)
        self._calibration: ProbeSet | None = None

    # -- configuration -------------------------------------------------------------------------

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "methods": sorted(self.methods), "rates": list(self.rates)}

    @property
    def _joint_now(self) -> bool:
        """Whether this evaluation runs the joint analysis: variant 1 is the budget leaving it out."""
        return self.joint and not self.variant

    def _logged_rates(self) -> tuple[float, ...]:
        return tuple(sorted({*self.rates, *self.joint_rates}))

    def _grid(self) -> tuple[float, ...]:
        return tuple(sorted({*self.rates, *self.sweep, *self.joint_rates}))

    @override
    def expected_tags(self) -> list[str]:
        basic = (*self.task.metric_names, "sparsity", "sparsity_all", "accuracy_drop")
        tags = [tag(MODULE, UNPRUNED, m) for m in (*self.task.metric_names, *(JOINT if self.joint else ()))]
        for method in self.methods:
            for rate in self._logged_rates():
                extra = JOINT if rate in self.joint_rates else ()
                tags += [tag(MODULE, method, rate_tag(rate), m) for m in (*basic, *extra)]
            tags.append(tag(MODULE, method, "max_safe_rate"))
        return tags

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        share = parameter_count(pl_module) / max(parameter_count(pl_module, "all"), 1)
        if self.rate_of == "all" and max(self._grid(), default=0.0) > share:  # only the prunable share can go
            raise ValueError(f"rates: {max(self._grid())} of all parameters is more than {type(pl_module).__name__} can "
                             f"prune ({share:.3f} of its parameters are prunable weights); lower the rates")
        if self.joint:
            check_layer_parameters(pl_module, self.attacks, ATTACKS, "attacks")
            check_layer_parameters(pl_module, self.attribution_methods, METHODS, "attribution_methods")

    # -- calibration data ----------------------------------------------------------------------

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        self._calibration = self._build_calibration(trainer)  # bad sizes fail before training starts
        if self.joint:
            self.check_on_a_sample(trainer, model_checks(self.attribution_methods), "attribution_methods")

    def _build_calibration(self, trainer: pl.Trainer) -> ProbeSet:
        return self.training_sample(trainer, self.calibration_size, self.calibration_data, argument="calibration_data")

    # -- when it runs --------------------------------------------------------------------------

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # EndOfFit: it ran in this fit
        last = self.history[-1] if self.history else None
        if last is not None and last["stage"] == "fit" and last["global_step"] == trainer.global_step:
            return  # the last validation epoch has already analysed this very model
        self._run(trainer, pl_module, in_epoch_end=False)  # self.log is not allowed in on_train_end

    # -- evaluation ----------------------------------------------------------------------------

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        from tqdm.auto import tqdm

        if self._calibration is None:
            self._calibration = self._build_calibration(trainer)
        probe, model = evaluation.probe, evaluation.model
        task = evaluation.task
        reference = task.metrics(evaluation.outputs(probe.inputs), probe.targets)
        grid = self._grid()
        if self.joint and self.variant:
            rank_zero_warn("PruningAnalysis: the joint analysis (attacks and attributions of the pruned copies) is left out "
                           "of the end-of-fit evaluation: it does not fit the time budget even on the smallest probe; "
                           "its tags are NaN. Compass(budget=None) (or budget= on the callback) runs it.")
        progress = tqdm(
            total=len(self.methods) * (1 + len(grid)) + self._joint_now * (1 + len(self.methods) * len(self.joint_rates)),
            desc="PruningAnalysis",
            leave=False,
            disable=not (trainer.is_global_zero and trainer.progress_bar_callback is not None),
        )
        with progress:
            if self._joint_now:
                reference.update(self._joint(trainer, evaluation, model))
                progress.update()
            evaluation.scalars.update({tag(MODULE, UNPRUNED, m): v for m, v in reference.items()})
            rows = [{"method": UNPRUNED, "rate": 0.0, "sparsity": sparsity(model),
                     "sparsity_all": sparsity(model, of="all"), **reference}]
            chunks = (ProbeSet.chunks(t, evaluation.batch_size, evaluation.device) for t in (self._calibration.inputs, self._calibration.targets))
            calibration = list(zip(*chunks))
            for method, params in self.methods.items():
                with self.isolate(f"pruning with {method!r}"):
                    progress.set_postfix_str(f"{method}: importance")
                    copies = PrunedCopies(model, method, calibration, loss_fn=self.task.loss, structured=self.structured,
                                          of=self.rate_of, **params)
                    progress.update()
                    drops: dict[float, float] = {}
                    for rate in grid:
                        progress.set_postfix_str(f"{method}: rate {rate:.2f}")
                        pruned = copies.at(rate)
                        metrics = task.metrics(evaluation.outputs(probe.inputs, model=pruned), probe.targets)
                        metrics["sparsity"] = torch.tensor(sparsity(pruned))
                        metrics["sparsity_all"] = torch.tensor(sparsity(pruned, of="all"))
                        metrics["accuracy_drop"] = reference["accuracy"] - metrics["accuracy"]
                        drops[rate] = float(metrics["accuracy_drop"])
                        if rate in self.joint_rates and self._joint_now:
                            metrics.update(self._joint(trainer, evaluation, pruned))
                            progress.update()
                        if rate in self._logged_rates():
                            prefix = tag(MODULE, method, rate_tag(rate))
                            evaluation.scalars.update({f"{prefix}/{m}": v for m, v in metrics.items()})
                            if self.save_pruned and rate in self.rates:
                                self._save(trainer, method, rate, pruned)
                        rows.append({"method": method, "rate": rate, **metrics})
                        progress.update()
                    evaluation.scalars[tag(MODULE, method, "max_safe_rate")] = max_safe_rate(drops, self.tolerance)
        with self.isolate("writing pruning_report.csv"):
            self._write_report(trainer, evaluation.epoch, rows)
        if evaluation.want_images:
            self._figures(trainer, evaluation, rows)

    def _joint(self, trainer: pl.Trainer, evaluation: Evaluation, model: nn.Module) -> dict[str, Tensor]:
        """Mean white-box ASR of ``model`` on the probe, and its mean insertion/deletion over the
        attribution methods on the first ``attribution_probe_size`` samples."""
        inner = evaluation.for_model(model)
        probe, task = inner.probe, inner.task
        correct = task.correct(inner.outputs(probe.inputs), probe.targets).cpu()
        rates = []
        for name, params in self.attacks.items():
            with self.isolate(f"joint attack {name!r}"):
                eps = self.eps[ATTACKS[name].norm]
                rows, _ = attack_probe(inner, name, params, eps, self.generator(f"{name}@{eps!r}", inner.device))
                rates.append(attack_metrics(correct, rows)["asr"])
        scores: dict[str, list[Tensor]] = {"insertion": [], "deletion": []}
        subset = inner.subset(self.attribution_probe_size)
        for name, params in self.attribution_methods.items():
            with self.isolate(f"joint attribution method {name!r}"):
                generator = self.generator(f"attribution/{name}", inner.device)
                rows, _ = score_probe(subset, name, params, generator, steps=self.attribution_steps)
                for kind, values in scores.items():
                    values.append(rows[kind].mean())
        nan = torch.tensor(float("nan"))
        return {
            "asr": mean_attack_success_rate(rates),
            **{kind: torch.stack(values).mean() if values else nan for kind, values in scores.items()},
        }

    # -- outputs -------------------------------------------------------------------------------

    def _save(self, trainer: pl.Trainer, method: str, rate: float, pruned: nn.Module) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        directory = getattr(checkpoint, "dirpath", None) or Path(self.reporter.log_dir or ".") / "checkpoints"
        path = Path(directory) / f"pruned_{method}_{rate_tag(rate)}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in pruned.state_dict().items()}, path)

    def _write_report(self, trainer: pl.Trainer, epoch: int, rows: list[dict[str, Any]]) -> None:
        if trainer.is_global_zero and self.reporter is not None and self.reporter.log_dir:
            write_report(self.reporter.log_dir, rows, metrics=self.task.metric_names, extra=JOINT, epoch=epoch,
                         global_step=trainer.global_step, stage=trainer.state.fn.value)

    @override
    def estimated_cost(self, forward: float) -> list[Callable[[int], float]]:
        """What the analysis will cost, from one sample's ``forward`` seconds (see :mod:`._pruning_cost`):
        with its joint analysis, and without it (the variant a budget may choose)."""
        def cost(joint: bool) -> Callable[[int], float]:
            return pruning_cost(
                forward, methods=list(self.methods), rates=len(self._grid()),
                calibration=len(self._calibration) if self._calibration is not None else self.calibration_size,
                attacks=self.attacks if joint else {}, attributions=self.attribution_methods if joint else {},
                joint_copies=(1 + len(self.methods) * len(self.joint_rates)) if joint else 0,
                attribution_samples=self.attribution_probe_size or 32, attribution_steps=self.attribution_steps,
            )
        return [cost(True), cost(False)] if self.joint else [cost(False)]

    def _figures(self, trainer: pl.Trainer, evaluation: Evaluation, rows: list[dict[str, Any]]) -> None:
        reference = rows[0]
        by_method: dict[str, list[dict[str, Any]]] = {}
        for row in rows[1:]:
            by_method.setdefault(row["method"], []).append(row)
        if not by_method:
            return
        epoch = evaluation.epoch
        grid = [0.0, *self._grid()]
        accuracy = {m: [float(reference["accuracy"])] + [float(r["accuracy"]) for r in rs] for m, rs in by_method.items()}
        accuracy[UNPRUNED] = [float(reference["accuracy"])] * len(grid)
        evaluation.images["compass/pruning/accuracy"] = line_chart(
            grid, accuracy, xlabel="pruning rate (fraction of weights set to zero)", ylabel="probe accuracy",
            title=f"accuracy after pruning without fine-tuning, epoch {epoch}", chance=UNPRUNED,
        )
        if not self._joint_now:
            return
        joint = [0.0, *self.joint_rates]
        at = {m: [reference] + [r for r in rs if r["rate"] in self.joint_rates] for m, rs in by_method.items()}
        evaluation.images["compass/pruning/asr"] = line_chart(
            joint, {m: [float(r["asr"]) for r in rs] for m, rs in at.items()},
            xlabel="pruning rate", ylabel="mean white-box attack success rate",
            title=f"attack success rate after pruning, epoch {epoch}",
        )
        evaluation.images["compass/pruning/insertion_deletion"] = line_chart(
            joint,
            {f"{m} {kind}": [float(r[kind]) for r in rs] for m, rs in at.items() for kind in ("insertion", "deletion")},
            xlabel="pruning rate", ylabel="area under the curve",
            title=f"insertion (higher: better), deletion (lower: better), epoch {epoch}",
        )
