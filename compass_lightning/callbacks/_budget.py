"""A monitor's time budget in a Lightning fit: :class:`BudgetSchedule` feeds the trainer's state to a
:class:`~compass_lightning.engine.budget.Budget` and turns its plans into tags.

What it reads from the trainer: which modules a ``ModelCheckpoint``/``EarlyStopping`` watches (they
run at full size), which validation epoch is a module's last chance in the fit (``max_epochs``, or a
stop already requested), and the rank: the plan is made on global zero and broadcast, since the
processes' clocks differ and every process must run the same analyses (they are collectives).

Tags (logged with each evaluation that runs): ``compass/budget/share`` (the monitors' fraction of
the fit's wall time before this evaluation), ``compass/budget/skipped`` (module runs postponed so
far in this fit) and ``compass/budget/probe_size/<module>``; with the end-of-fit evaluation,
``compass/budget/final_seconds`` and ``compass/budget/final_share`` (its wall time, and that over the
training's).

Example:
    >>> schedule = BudgetSchedule(0.1)
    >>> schedule.share, schedule.final
    (0.1, True)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from compass_lightning.engine.budget import Budget, Estimate, Plan
from compass_lightning.engine.checks import check_bool
from compass_lightning.reporting.tags import tag

SHARE, SKIPPED = tag("budget", "share"), tag("budget", "skipped")
FINAL_SECONDS, FINAL_SHARE = tag("budget", "final_seconds"), tag("budget", "final_share")
#: The smallest probe a module is scaled down to before it is postponed.
FLOOR = 16


def probe_size_tag(module: str) -> str:
    return tag("budget", "probe_size", module)


def check_budget(budget: Optional[float]) -> Optional[float]:
    """``budget`` if it is ``None`` or a fraction in ``(0, 1)``; else a ``ValueError`` naming it."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 1:
        raise ValueError(f"budget must be None (no time budget) or the largest fraction of the fit's wall time the "
                         f"monitors may take, in (0, 1) such as 0.1; got {budget!r}")
    return float(budget)


def budget_schedule(budget: Optional[float], final: bool) -> BudgetSchedule | None:
    """The schedule of a monitor's ``budget`` (``None`` without one), both arguments checked."""
    final, share = check_bool("final", final), check_budget(budget)
    return None if share is None else BudgetSchedule(share, final)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time what they did, not what was queued
        torch.cuda.synchronize(device)


class BudgetSchedule:
    """Runs a monitor's modules within ``share`` of the fit's wall time (see :mod:`compass_lightning.engine.budget`).

    Args:
        share: the budget, a fraction in ``(0, 1)``.
        final: evaluate every module (and the end-of-fit analyses) once more when training ends.
    """

    def __init__(self, share: float, final: bool = True) -> None:
        self.share = share
        self.final = check_bool("final", final)
        self.budget: Budget | None = None
        self.skipped = 0
        self.seconds: dict[str, float] = {}
        #: Seconds of the last clean forward per probe sample (:meth:`forward_timing`).
        self.forward_rate: float | None = None
        self._saved: Mapping[str, Any] = {}
        #: Seconds, monotonic: what the budget measures with (a fake clock in tests).
        self.clock: Callable[[], float] = time.perf_counter

    def start(self, trainer: pl.Trainer, modules: Mapping[str, tuple[int, set[str]]]) -> None:
        """At fit start: ``modules`` maps each module to its full probe size and its tags."""
        watched = {getattr(cb, "monitor", None) for cb in trainer.callbacks}
        self.budget = Budget(self.share, {n: size for n, (size, _) in modules.items()}, floor=FLOOR,
                             watched={n for n, (_, tags) in modules.items() if tags & watched}, clock=self.clock)
        self.budget.load_state_dict(self._saved)
        self.budget.start()
        self.skipped = 0

    def plan(self, trainer: pl.Trainer, eligible: Mapping[str, Optional[int]]) -> Plan:
        """The plan of this validation epoch for the ``eligible`` modules (name: ``every_n_epochs``),
        the same on every process."""
        plan = Plan()
        if trainer.is_global_zero and self.budget is not None:
            epoch, last_epoch = trainer.current_epoch + 1, trainer.max_epochs
            last = {n for n, every in eligible.items()
                    if trainer.should_stop or (last_epoch is not None and last_epoch > 0 and epoch + (every or 1) > last_epoch)}
            plan = self.budget.plan(list(eligible), last=last)
        plan = self._agreed(trainer, plan)
        self.skipped += len(plan.postponed)
        return plan

    def last_chances(self, trainer: pl.Trainer, names: list[str]) -> list[str]:
        """Of ``names``, the modules that have not run in this fit while this is its last training
        epoch: they run now off their ``every_n_epochs`` (the budget then sizes them to its floor),
        so that every module reports during training. The same on every process."""
        last = trainer.max_epochs
        if self.budget is None or not (trainer.should_stop or (last is not None and 0 < last <= trainer.current_epoch + 1)):
            return []
        never = [n for n in names if not self.budget.runs.get(n)]  # global zero books the runs
        return trainer.strategy.broadcast(never, src=0) if trainer.world_size > 1 else never

    def final_plan(self, trainer: pl.Trainer, names: list[str],
                   estimators: Mapping[str, Callable[[float], Estimate | None]] | None = None) -> Plan:
        """The plan of the end-of-fit evaluation of ``names``, the same on every process;
        ``estimators`` give the a-priori cost of modules from one sample's forward seconds."""
        plan = Plan()
        if trainer.is_global_zero and self.budget is not None:
            estimates = {}
            if self.forward_rate is not None:
                for name, estimate in (estimators or {}).items():
                    if name in names and (cost := estimate(self.forward_rate)) is not None:
                        estimates[name] = cost
            plan = self.budget.final_plan(names, estimates)
        return self._agreed(trainer, plan)

    def forward_timing(self, samples: int, device: torch.device) -> contextlib.AbstractContextManager:
        """Time the evaluation's clean forward of ``samples`` probe samples: :attr:`forward_rate`,
        the unit of the a-priori costs of modules not measured yet."""
        def rate(seconds: float) -> None:
            if samples:
                self.forward_rate = seconds / samples

        return self._stopwatch(device, rate)

    def _agreed(self, trainer: pl.Trainer, plan: Plan) -> Plan:
        """Global zero's ``plan`` on every process; the new evaluation's module times start empty."""
        self.seconds = {}
        return trainer.strategy.broadcast(plan, src=0) if trainer.world_size > 1 else plan

    def timing(self, name: str, device: torch.device) -> contextlib.AbstractContextManager:
        """Time the block as module ``name``'s part of the evaluation."""
        def add(seconds: float) -> None:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

        return self._stopwatch(device, add)

    @contextlib.contextmanager
    def _stopwatch(self, device: torch.device, record: Callable[[float], None]) -> Iterator[None]:
        """Hand the block's seconds on :attr:`clock`, synchronised with ``device`` at both ends, to
        ``record`` (a block that raises is timed too)."""
        _synchronise(device)
        started = self.clock()
        try:
            yield
        finally:
            _synchronise(device)
            record(self.clock() - started)

    def scalars(self, plan: Plan) -> dict[str, float]:
        """The tags of an evaluation that runs ``plan``."""
        share = self.budget.share_so_far if self.budget is not None else 0.0
        return {SHARE: share, SKIPPED: float(self.skipped), **{probe_size_tag(n): float(s) for n, s in plan.sizes.items()}}

    def charge(self) -> float:
        """Book the evaluation that just ended; its wall seconds."""
        return self.budget.charge(self.seconds) if self.budget is not None else 0.0

    def final_scalars(self, seconds: float) -> dict[str, float]:
        training = self.budget.training if self.budget is not None else 0.0
        return {FINAL_SECONDS: seconds, FINAL_SHARE: seconds / training if training > 0 else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return self.budget.state_dict() if self.budget is not None else dict(self._saved)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._saved = dict(state)
        if self.budget is not None:
            self.budget.load_state_dict(state)


class BudgetedRuns:
    """Mixin of :class:`~compass_lightning.callbacks.base.CompassCallback`: its evaluations under a
    budget (``self.schedule``), and the end-of-fit evaluation the budget adds."""

    schedule: BudgetSchedule | None
    #: The cost variant of :meth:`estimated_cost` the budget chose for the running evaluation (0: the first).
    variant: int = 0

    @property
    def budget_name(self) -> str:
        """This monitor's name as a module (``compass/budget/probe_size/<name>``)."""
        return getattr(type(self), "module_name", type(self).__name__)

    def timed(self, name: str, device: torch.device) -> contextlib.AbstractContextManager:
        """Time a block as module ``name``'s part of the evaluation (nothing without a budget)."""
        return self.schedule.timing(name, device) if self.schedule is not None else contextlib.nullcontext()

    def forward_timed(self, samples: int, device: torch.device) -> contextlib.AbstractContextManager:
        """Time the clean forward of ``samples`` probe samples (nothing without a budget)."""
        return self.schedule.forward_timing(samples, device) if self.schedule is not None else contextlib.nullcontext()

    def estimated_cost(self, forward: float) -> Estimate | None:
        """The seconds this monitor's evaluation will cost as a function of its probe size, from one
        sample's ``forward`` seconds, for a budget that must plan it before it has run (an analysis
        at the end of fit) — or several such functions, richest first, where it can leave a part out
        (the budget sets :attr:`variant` to the one it chose); ``None``: measured when it runs."""
        return None

    def budget_member(self, name: str) -> BudgetedRuns:
        """The callback that runs as the budget's module ``name`` (here: this monitor itself)."""
        return self

    def budget_modules(self) -> dict[str, tuple[int, set[str]]]:
        """What the budget plans: each module's full probe size and tags (here: the monitor itself)."""
        return {self.budget_name: (len(self.probe), set(self.expected_tags()))}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and self.schedule.final:  # the end-of-fit evaluation of a budget
            plan = self.schedule.final_plan(trainer, [self.budget_name], {self.budget_name: self.estimated_cost})
            self._run_planned(trainer, pl_module, plan, final=True)

    def _run_planned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, plan: Plan | None, *,
                     final: bool = False) -> None:
        """Run one evaluation of what ``plan`` says (``None``: everything, no budget), then book its time."""
        if plan is not None and not plan.sizes:
            return  # the budget postponed every module: nothing runs, nothing is logged
        chosen = {self.budget_member(n): v for n, v in plan.variants.items()} if plan is not None else {}
        for member, variant in chosen.items():
            member.variant = variant
        try:
            self._run(trainer, pl_module, in_epoch_end=not final, plan=plan)
        finally:
            for member in chosen:
                member.variant = 0  # for evaluations outside the budget's plan
        if plan is None:
            return
        seconds = self.schedule.charge()
        if final:
            scalars = self.schedule.final_scalars(seconds)
            self.reporter.log_scalars(trainer, scalars)
            self.history[-1]["metrics"].update(scalars)
            with self.isolate("writing the history file"):
                self.reporter.write_history(self.state_key, self.history)
