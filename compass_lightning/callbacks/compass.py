"""``Compass``: every AI-Compass module on one probe set and one schedule, sharing their work, with the radar."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import lightning.pytorch as pl

from typing_extensions import override

from compass_lightning.callbacks._budget import FINAL_SECONDS
from compass_lightning.callbacks._end_of_fit import EndOfFit
from compass_lightning.callbacks.base import COMPASS_MODULES, IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData
from compass_lightning.engine.checks import at_least_one, check_bool, optional
from compass_lightning.engine.passes import PassCounter
from compass_lightning.reporting.radar import AXES, axis_values, radar_chart, radar_scores
from compass_lightning.reporting.tags import PASSES
from compass_lightning.tasks import Task

SHARED = ("task", "seed", "batch_size", "probe_data", "fail_fast", "budget", "final", "images_every_n")
#: ``Compass(budget=...)``'s default: the monitors take at most this fraction of the fit's wall time
#: (the README's "Cost" section has the measurements behind it).
DEFAULT_BUDGET = 0.1


#: The modules in the order they run: robustness before neurons, whose layer deviation reuses its
#: adversarial examples; pruning last.
MODULE_ORDER = ("mutation", "robustness", "interpretability", "neurons", "validation", "pruning")

ModuleConfig = Union[bool, Mapping[str, Any], None]


class Compass(EndOfFit, CompassCallback):
    """Every compass module in one callback: one probe set, one clean forward pass, shared adversarial
    examples, per-module schedules, and the AI-Compass radar.

    Each module is configured by a mapping of its callback's arguments (``True``: its defaults,
    ``False``: off) — :class:`~compass_lightning.MutationMetrics` (basic metrics and mutants),
    :class:`~compass_lightning.AttackSuccessRate`, :class:`~compass_lightning.AttributionScores`,
    :class:`~compass_lightning.NeuronAnalysis`, :class:`~compass_lightning.PruningAnalysis` (at the
    end of fit) and :class:`~compass_lightning.DeepValidation` (off by default: it needs scikit-learn) — and logs the same tags as that callback. A module's ``every_n_epochs`` is its
    schedule, and its ``probe_size`` the number of samples it analyses from the start of the shared
    probe (by default its own default, capped at the probe). ``task``, ``seed``, ``batch_size``,
    ``probe_data`` and ``fail_fast`` are shared and set on the Compass.

    Shared work per evaluation: one clean forward of the probe feeds every module, and the white-box
    adversarial examples of the robustness module feed the layer deviation of the neuron module when
    it uses the same attack and ε. ``compass/passes/{forward,backward}`` count the sample-passes of
    the model in the evaluation. The radar (see :mod:`compass_lightning.reporting.radar`): its five axis values
    are logged as ``compass/score/<axis>``, and the image ``compass/score/radar`` compares the current
    epoch with the first and the best evaluated ones (axes of modules that did not run this epoch
    carry their latest value).

    Args:
        mutation, robustness, interpretability, neurons, pruning, validation: each module's configuration.
        radar: log the radar axes and figure.
        probe_size, batch_size, seed, task, probe_data, fail_fast: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; the probe holds up to 256
            validation samples by default.
        budget, final, images_every_n: see :class:`~compass_lightning.callbacks.base.CompassCallback`;
            the Compass keeps to a budget of 0.1 by default (:data:`DEFAULT_BUDGET`): its modules
            take turns on probes scaled to fit, each reports during training, and with ``final``
            all of them (pruning too) run when training ends. ``budget=None``: every module on its
            own schedule.

    Example:
        >>> compass = Compass(robustness={"attacks": ["fgsm", "pgd"], "every_n_epochs": 2}, interpretability=False)
        >>> list(compass.modules), compass.modules["robustness"].every_n_epochs
        (['mutation', 'robustness', 'neurons', 'pruning'], 2)
    """

    default_probe_size = 256

    def __init__(
        self,
        *,
        mutation: ModuleConfig = True,
        robustness: ModuleConfig = True,
        interpretability: ModuleConfig = True,
        neurons: ModuleConfig = True,
        pruning: ModuleConfig = True,
        validation: ModuleConfig = False,
        radar: bool = True,
        probe_size: Optional[int] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        task: Optional[Task] = None,
        probe_data: Optional[ProbeData] = None,
        fail_fast: bool = False,
        budget: Optional[float] = DEFAULT_BUDGET,
        final: bool = True,
        images_every_n: int = IMAGES_EVERY_N,
    ) -> None:
        super().__init__(every_n_epochs=1, probe_size=probe_size, batch_size=batch_size, seed=seed, task=task,
                         probe_data=probe_data, fail_fast=fail_fast, budget=budget, final=final,
                         images_every_n=images_every_n)
        self.radar = check_bool("radar", radar)
        shared = {"task": self.task, "seed": self.seed, "batch_size": self.batch_size, "fail_fast": self.fail_fast}
        configs = {"mutation": mutation, "robustness": robustness, "interpretability": interpretability,
                   "neurons": neurons, "pruning": pruning, "validation": validation}
        self.modules: dict[str, CompassCallback] = {}
        self.module_probe_sizes: dict[str, Optional[int]] = {}
        for name, config in configs.items():
            if config is False or config is None:
                continue
            if config is True:
                config = {}
            if not isinstance(config, Mapping):
                raise TypeError(f"{name} must be True, False or a mapping of {COMPASS_MODULES[name].__name__} arguments, got {config!r}")
            clash = sorted(set(config) & set(SHARED))
            if clash:
                raise ValueError(f"{name}: {clash[0]} is shared by every module; set Compass({clash[0]}=...) instead")
            config = dict(config)
            size = config.pop("probe_size", None)
            self.module_probe_sizes[name] = optional(at_least_one)(f"{name}.probe_size", size)
            try:
                self.modules[name] = COMPASS_MODULES[name](**config, **shared)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name}: {error}") from error
        if not self.modules:
            raise ValueError("Compass needs at least one module; every one is switched off")
        self._running: list[str] = []
        self._sizes: dict[str, int] = {}

    @override
    def hosted(self) -> list[CompassCallback]:
        """The modules: their failures count as the Compass'."""
        return list(self.modules.values())

    # -- configuration -------------------------------------------------------------------------

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "modules": sorted(self.modules)}

    @override
    def expected_tags(self) -> list[str]:
        """The tags of the modules of the current evaluation (of every module outside one)."""
        return [tag for name in (self._running or self.modules) for tag in self.modules[name].expected_tags()]

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        for name, module in self.modules.items():
            try:
                module.check_model(pl_module)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error

    @override
    def check_watchers(self, trainer: pl.Trainer) -> None:
        for module in self.modules.values():
            module.check_watchers(trainer)

    def _probe_size_for(self, name: str) -> int:
        size = self.module_probe_sizes[name]
        return size if size is not None else type(self.modules[name]).default_probe_size

    @override
    def progress_steps(self) -> list[str]:
        return self._running or list(self.modules)

    @override
    def budget_modules(self) -> dict[str, tuple[int, set[str]]]:
        return {name: (min(self._probe_size_for(name), len(self.probe)), set(module.expected_tags()))
                for name, module in self.modules.items()}

    # -- Lightning hooks -----------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for module in self.modules.values():
            module.reporter = self.reporter  # the modules write their files through the Compass

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        for module in self.modules.values():
            module.prepare(trainer)

    def _scheduled(self, trainer: pl.Trainer, *, end_of_fit: bool = False) -> list[str]:
        if trainer.state.fn != "fit":
            return list(self.modules)
        if end_of_fit:
            pruning = self.modules.get("pruning")
            return ["pruning"] if pruning is not None and pruning.every_n_epochs is None else []
        epoch = trainer.current_epoch + 1
        due = {n for n, m in self.modules.items() if m.every_n_epochs is not None and epoch % m.every_n_epochs == 0}
        if self.schedule is not None:
            due |= set(self.schedule.last_chances(trainer, [n for n, m in self.modules.items() if m.every_n_epochs is not None]))
        return [n for n in self.modules if n in due]

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._run_modules(trainer, pl_module, self._scheduled(trainer))

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_modules(trainer, pl_module, self._scheduled(trainer))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # EndOfFit: it ran in this fit
        final = self.schedule is not None and self.schedule.final
        names = list(self.modules) if final else self._scheduled(trainer, end_of_fit=True)
        if any(r["stage"] == "fit" and r["global_step"] == trainer.global_step and
               any(t.startswith("compass/pruning/") or t == FINAL_SECONDS for t in r["metrics"]) for r in self.history):
            return  # this model's end-of-fit analysis is in the history already (restored from a checkpoint)
        self._run_modules(trainer, pl_module, names, final=True)

    def _run_modules(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str], *,
                     final: bool = False) -> None:
        """One evaluation of the modules ``names`` (none: no evaluation), as the budget (if any)
        plans it; ``final``: the end-of-fit evaluation."""
        plan = None
        if names and self.schedule is not None and trainer.state.fn == "fit":
            estimators = {n: self.modules[n].estimated_cost for n in names}
            plan = (self.schedule.final_plan(trainer, names, estimators) if final else
                    self.schedule.plan(trainer, {n: self.modules[n].every_n_epochs for n in names}))
            names = list(plan.sizes)
        if not names:
            return
        self._running = names
        self._sizes = dict(plan.sizes) if plan is not None else {}
        try:
            self._run_planned(trainer, pl_module, plan, final=final)
        finally:
            self._running, self._sizes = [], {}  # outside a scheduled hook, evaluate() covers every module

    @override
    def budget_member(self, name: str) -> CompassCallback:
        return self.modules[name]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "modules": {name: m.state_dict() for name, m in self.modules.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for name, state in state_dict.get("modules", {}).items():
            if name in self.modules:
                self.modules[name].load_state_dict(state)

    # -- evaluation ----------------------------------------------------------------------------

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        evaluation.share = True
        running = self._running or list(self.modules)
        with PassCounter(evaluation.model) as passes:  # the clean forward (made before) is counted as one pass
            for name in running:
                if self.progress is not None:
                    self.progress.show(name)
                with self.isolate(f"the {name} module"), self.timed(name, evaluation.device):
                    size = self._sizes.get(name) or self._probe_size_for(name)
                    self.modules[name].evaluate(trainer, evaluation.subset(size))
        evaluation.scalars[PASSES[0]] = float(passes.forward + len(evaluation.probe.shard(evaluation.probe.inputs)))
        evaluation.scalars[PASSES[1]] = float(passes.backward)
        for name in running:  # the modules' own histories drive their epoch-over-epoch figures
            module = self.modules[name]
            own = set(module.expected_tags())
            module.record(trainer, evaluation.epoch, {k: v for k, v in evaluation.scalars.items() if k in own})
        if self.radar:
            self._radar(trainer, evaluation, running)

    def _radar(self, trainer: pl.Trainer, evaluation: Evaluation, running: list[str]) -> None:
        current = axis_values({k: float(v) for k, v in evaluation.scalars.items()})
        evaluation.scalars.update({f"compass/score/{axis}": v for axis, v in current.items() if v is not None})
        if not evaluation.want_images:
            return
        stage = trainer.state.fn.value
        rows: dict[str, dict[str, float | None]] = {}
        latest: dict[str, float | None] = {axis: None for axis in AXES}
        for record in [r for r in self.history if r["stage"] == stage]:
            values = axis_values({k: v for k, v in record["metrics"].items() if v is not None})
            latest = {axis: values[axis] if values[axis] is not None else latest[axis] for axis in AXES}
            rows[f"epoch {record['epoch']}"] = dict(latest)
        latest = {axis: current[axis] if current[axis] is not None else latest[axis] for axis in AXES}
        label = f"epoch {evaluation.epoch}" + (" (end of fit)" if "pruning" in running and stage == "fit" else "")
        rows[label] = latest
        scores = radar_scores(rows)
        first = next(iter(scores))
        best = max(scores, key=lambda k: sum(v or 0.0 for v in scores[k].values()))
        shown = {f"{label} (current)": label}
        if best != label:
            shown[f"{best} (best)"] = best
        if first not in (label, best):
            shown[f"{first} (first)"] = first
        evaluation.images["compass/score/radar"] = radar_chart(
            {name: scores[key] for name, key in shown.items()}, values={name: rows[key] for name, key in shown.items()},
            title=f"AI-Compass radar, {len(rows)} evaluations: best = 5 per axis, others proportional",
        )
