"""The monitors' time budget: which modules run at a validation epoch, and on how many probe samples.

:class:`Budget` is pure bookkeeping over clock readings (no Lightning, no tensors), so that its
decisions can be tested on a fake clock and made on one process and broadcast to the others.

Invariants (the example below shows each on a fake clock):

1. **Share.** The fit earns ``share / (1 - share)`` seconds of monitoring per second spent outside
   the monitors, so spending all of it keeps the monitors at ``share`` of the fit's wall time. An
   evaluation that cost more than planned is paid back: later modules wait until the credit
   recovers. Only rules 3 and 4 may overspend, and they are paid back the same way.
2. **Fair rotation** (deficit round robin): every module earns an equal part of each new allowance,
   and runs when its credit pays for its *turn*: its full probe, or, where that costs more than one
   evaluation's earnings, the probe those earnings pay for (what its part earns over a rotation of
   as many evaluations as there are modules), but never less than its ``floor``. It then runs on as
   much of the probe as its credit pays for. So a cheap module runs at every evaluation on its full
   probe, a dearer one in turn on a scaled probe, and one whose floor costs more than a rotation
   earns (attribution, pruning) less often; of the modules that are not cheap (whose turn costs more
   than their part of one evaluation), at most one runs per evaluation, the one that waited
   longest, so they take turns rather than coinciding. Credit beyond what a module's full probe
   costs goes to the others rather than being hoarded.
3. **Watched modules** (a ``ModelCheckpoint`` or ``EarlyStopping`` monitors one of their tags) run
   at their full probe size whenever they are eligible: the watcher ranks comparable values.
4. **At least once.** A module's cost is unknown until it has run: its first run is on its floor,
   one new module per evaluation, so first runs rotate too; a module that has not run yet runs (on
   its floor) on its last chance in the fit, whatever its credit.
5. **Nothing runs, nothing costs**: an evaluation where every module is postponed is skipped.

Costs are learnt as seconds per probe sample (an exponential average over runs, the evaluation's
shared work split among the modules that ran), which is what scaling a probe changes.

Example:
    >>> clock = FakeClock()
    >>> budget = Budget(0.1, {"cheap": 256, "dear": 256}, floor=16, clock=clock)
    >>> budget.start()
    >>> clock.now = 9.0                                   # 9 s of training earn 1 s of monitoring
    >>> budget.plan(["cheap", "dear"]).sizes              # rule 4: one first run, on the floor
    {'cheap': 16}
    >>> clock.now += 0.016; _ = budget.charge({"cheap": 0.016})   # 1 ms per sample
    >>> clock.now += 9.0
    >>> plan = budget.plan(["cheap", "dear"]); plan.sizes        # cheap at full size; dear's first run
    {'cheap': 256, 'dear': 16}
    >>> clock.now += 0.256 + 1.6; _ = budget.charge({"cheap": 0.256, "dear": 1.6})  # dear: 100 ms a sample
    >>> clock.now += 9.0
    >>> plan = budget.plan(["cheap", "dear"]); plan.sizes, plan.postponed  # rule 2: dear's turn costs 1.6 s
    ({'cheap': 256}, ('dear',))
    >>> budget.plan(["dear"], last={"dear"}).sizes == {}  # it has run: no last-chance run
    True
    >>> budget.share_so_far < 0.1
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Union

#: An a-priori cost: seconds as a function of the probe size, or such functions richest first.
Estimate = Union[Callable[[int], float], Sequence[Callable[[int], float]]]
#: Weight of the newest measurement in a module's cost per sample.
SMOOTHING = 0.5
#: Seconds the end-of-fit evaluation may always take, however short the fit: a share of a toy fit
#: (0.3 s of a 3-s digits fit) would shrink every module to its floor and drop pruning's joint
#: analysis, to save seconds nobody waits for; the share decides from a 5-minute fit on.
FINAL_FLOOR = 30.0


@dataclass(frozen=True)
class Plan:
    """One evaluation's decision: the probe size of each module that runs (in the order they were
    asked for), the eligible modules postponed, and for a module planned with several cost variants
    (:meth:`Budget.final_plan`) the one chosen where it is not the first."""

    sizes: dict[str, int] = field(default_factory=dict)
    postponed: tuple[str, ...] = ()
    variants: dict[str, int] = field(default_factory=dict)


class FakeClock:
    """A clock that moves only when told (``clock.now += seconds``), for tests and examples."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Budget:
    """Plans the evaluations of ``modules`` so that they take at most ``share`` of the wall time.

    Args:
        share: the largest fraction of the fit's wall time the monitors may take, in ``(0, 1)``.
        modules: each module's full probe size (what it analyses when the budget allows).
        floor: the smallest probe a module is scaled down to before it is postponed (capped at its
            full size).
        watched: modules that run at full size whenever eligible (rule 3).
        final_floor: seconds the end-of-fit evaluation may take even where one share of the fit is less.
        clock: seconds, monotonic (``time.perf_counter``; a :class:`FakeClock` in tests).

    Call :meth:`start` when the fit starts, :meth:`plan` at each validation epoch, then
    :meth:`charge` with the seconds each planned module took, when the evaluation is over (its
    logging included). :meth:`final_plan` sizes the end-of-fit evaluation.
    """

    def __init__(self, share: float, modules: Mapping[str, int], *, floor: int = 16, watched: Set[str] = frozenset(),
                 final_floor: float = FINAL_FLOOR, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0 < share < 1:
            raise ValueError(f"budget must be a fraction of the fit's wall time in (0, 1), got {share!r}")
        self.share = share
        self.full = {name: int(size) for name, size in modules.items()}
        self.floors = {name: min(floor, size) for name, size in self.full.items()}
        self.watched = frozenset(watched)
        self.final_floor = final_floor
        self.clock = clock
        self.per_sample: dict[str, float] = {}
        self.credit = dict.fromkeys(self.full, 0.0)
        self.runs = dict.fromkeys(self.full, 0)
        self.spent = 0.0  # seconds inside the monitors during this fit's training
        self.final_spent = 0.0  # seconds of the end-of-fit evaluation, reported apart
        self._final = False
        self._earned = 0.0
        self._per_evaluation: float | None = None  # what an evaluation earns (an exponential average)
        self._last_run: dict[str, int] = dict.fromkeys(self.full, -1)
        self._evaluations = 0
        self._started: float | None = None
        self._planned_at: float | None = None
        self._planned: dict[str, int] = {}

    # -- the clock ---------------------------------------------------------------------------

    def start(self) -> None:
        """The fit starts now (a resumed fit starts again, keeping what was learnt of the costs)."""
        self._started = self.clock()
        self.spent = self.final_spent = 0.0
        self._earned = 0.0

    @property
    def elapsed(self) -> float:
        """Wall seconds since :meth:`start`."""
        return 0.0 if self._started is None else self.clock() - self._started

    @property
    def training(self) -> float:
        """Wall seconds of the fit outside the monitors."""
        return max(self.elapsed - self.spent - self.final_spent, 0.0)

    @property
    def share_so_far(self) -> float:
        """The monitors' fraction of the fit's wall time so far (the end-of-fit evaluation apart)."""
        total = self.spent + self.training
        return self.spent / total if total > 0 else 0.0

    @property
    def overspent(self) -> bool:
        """Whether the forced runs (rules 3 and 4) have put the monitors above their share for now."""
        return self.share_so_far > self.share

    def cost(self, name: str, size: int) -> float | None:
        """Estimated seconds of ``name`` on ``size`` samples (``None`` before it has run)."""
        rate = self.per_sample.get(name)
        return None if rate is None else rate * size

    # -- decisions ---------------------------------------------------------------------------

    def _earn(self) -> None:
        earned = self.share / (1 - self.share) * self.training
        new, self._earned = earned - self._earned, earned
        average = self._per_evaluation
        self._per_evaluation = new if average is None else SMOOTHING * new + (1 - SMOOTHING) * average
        for name in self.credit:
            self.credit[name] += new / len(self.credit)
        # credit beyond a measured module's full cost goes to the modules that can still use it
        overflow, needy = 0.0, []
        for name, credit in self.credit.items():
            full = self.cost(name, self.full[name])
            if full is not None and credit > full:
                overflow += credit - full
                self.credit[name] = full
            else:
                needy.append(name)
        for name in needy:
            self.credit[name] += overflow / len(needy)

    def plan(self, eligible: Iterable[str], *, last: Set[str] = frozenset()) -> Plan:
        """Which of the ``eligible`` modules run now and on how many samples; ``last``: those whose
        last chance in the fit this is."""
        self._earn()
        self._evaluations += 1
        self._planned_at = self.clock()
        rotation = self._per_evaluation or 0.0  # what a module's part earns over a rotation
        part = rotation / len(self.full)
        eligible = list(eligible)
        sizes: dict[str, int] = {}
        started_one = dear_one = False
        # watched modules first, then the module that has waited longest
        for name in sorted(eligible, key=lambda n: (n not in self.watched, self._last_run[n])):
            full, floor, rate = self.full[name], self.floors[name], self.per_sample.get(name)
            credit = max(self.credit[name], 0.0)
            size = 0
            if name in self.watched:
                size = full
            elif rate is None:  # rule 4: its first run measures it
                size = floor if (not started_one and self.credit[name] > 0) or name in last else 0
                started_one = started_one or size > 0
            else:
                turn = min(rate * full, max(rate * floor, rotation))
                dear = turn > part
                if credit >= turn * (1 - 1e-9) and not (dear and dear_one):
                    size = max(floor, min(full, int(credit / rate + 1e-9))) if rate > 0 else full
                    dear_one = dear_one or dear
                elif name in last and self.runs[name] == 0:
                    size = floor
            if size:
                sizes[name] = size
                self._last_run[name] = self._evaluations
        self._planned = {n: sizes[n] for n in eligible if n in sizes}
        return Plan(dict(self._planned), tuple(n for n in eligible if n not in sizes))

    def final_plan(self, names: Iterable[str], estimates: Mapping[str, Estimate] | None = None) -> Plan:
        """Probe sizes of the end-of-fit evaluation of ``names``: every module at full size if its
        cost fits one more ``share`` of the fit's wall time (or ``final_floor`` seconds, if more),
        else every costed module's probe scaled by the largest common factor that fits (not below
        its floor). A module's cost is what it was
        measured at, or for one never measured its ``estimates`` entry: seconds as a function of the
        probe size (what an end-of-fit analysis such as pruning says it will cost; it may have parts
        that do not grow with the probe), or a sequence of them, richest first, for an analysis that
        can leave out a part: the first whose floor fits is chosen (``Plan.variants``; the last if
        none does). A module with neither runs at full size.

        Example:
            >>> clock = FakeClock()
            >>> budget = Budget(0.1, {"a": 100, "pruning": 100}, floor=10, final_floor=0.0, clock=clock)
            >>> budget.start(); clock.now = 100.0         # 100 s of training: 10 s for the final evaluation
            >>> budget.per_sample["a"] = 0.05             # 5 s at full size
            >>> budget.final_plan(["a", "pruning"], {"pruning": lambda size: 2.0 + 0.08 * size}).sizes
            {'a': 61, 'pruning': 61}
            >>> with_part, without = (lambda size: 20.0 + 0.08 * size), (lambda size: 0.08 * size)
            >>> budget.final_plan(["a", "pruning"], {"pruning": [with_part, without]})  # the part cannot fit
            Plan(sizes={'a': 76, 'pruning': 76}, postponed=(), variants={'pruning': 1})
        """
        names = list(names)
        self._planned_at, self._final = self.clock(), True
        allowance = max(self.share * (self.training + self.spent), self.final_floor)
        options: dict[str, list[Callable[[int], float]]] = {
            n: [lambda size, rate=self.per_sample[n]: rate * size] for n in names if self.per_sample.get(n) is not None
        }
        for n in names:
            if n not in options and estimates and n in estimates:
                given = estimates[n]
                options[n] = [given] if callable(given) else list(given)
        chosen = dict.fromkeys(options, 0)

        def sizes_at(scale: float) -> dict[str, int]:
            return {n: max(self.floors[n], int(self.full[n] * scale)) if n in options else self.full[n] for n in names}

        def fits(scale: float) -> bool:
            sizes = sizes_at(scale)
            return sum(options[n][chosen[n]](sizes[n]) for n in options) <= allowance

        for n in options:  # leave parts out, one module at a time, until the floors fit
            while not fits(0.0) and chosen[n] + 1 < len(options[n]):
                chosen[n] += 1
        low, high = 0.0, 1.0  # the largest common scale that fits: costs grow with the probe
        if fits(high):
            low = high
        else:
            for _ in range(30):
                middle = (low + high) / 2
                low, high = (middle, high) if fits(middle) else (low, middle)
        sizes = sizes_at(low)
        self._planned = dict(sizes)
        return Plan(sizes, variants={n: v for n, v in chosen.items() if v})

    def charge(self, seconds: Mapping[str, float]) -> float:
        """Book the evaluation planned last: ``seconds`` each planned module took. The time since the
        plan that no module accounts for (the clean forward, logging) is split among them. Returns
        the evaluation's wall seconds."""
        if self._planned_at is None:
            return 0.0
        total = max(self.clock() - self._planned_at, 0.0)
        self._planned_at = None
        if self._final:
            self.final_spent += total
        else:
            self.spent += total
        ran = [n for n in self._planned if n in seconds]
        shared = max(total - sum(seconds[n] for n in ran), 0.0) / len(ran) if ran else 0.0
        for name in ran:
            cost = seconds[name] + shared
            size = self._planned[name]
            rate = cost / max(size, 1)
            previous = self.per_sample.get(name)
            self.per_sample[name] = rate if previous is None else SMOOTHING * rate + (1 - SMOOTHING) * previous
            self.credit[name] -= cost
            self.runs[name] += 1
        if not ran and self._planned:  # planned but nothing reported (every module failed): still paid
            for name in self._planned:
                self.credit[name] -= total / len(self._planned)
        self._planned, self._final = {}, False
        return total

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit keeps: the learnt costs and how often each module ran."""
        return {"per_sample": dict(self.per_sample), "runs": dict(self.runs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.per_sample.update({k: float(v) for k, v in state.get("per_sample", {}).items() if k in self.full})
        self.runs.update({k: int(v) for k, v in state.get("runs", {}).items() if k in self.full})
