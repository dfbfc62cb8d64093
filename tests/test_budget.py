"""The time budget: the controller's decisions on a fake clock, and a real fit whose clock is fake
(training batches and each module's samples advance it by known amounts), so every decision is
deterministic and checkable."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from compass_lightning import AttackSuccessRate, Compass
from compass_lightning.callbacks._budget import FINAL_SECONDS, SHARE, SKIPPED, probe_size_tag
from compass_lightning.engine.budget import Budget, FakeClock


def _evaluate(budget: Budget, clock: FakeClock, rates: dict[str, float], eligible, *, training: float = 10.0, last=frozenset()):
    """``training`` seconds of training, then one planned evaluation whose modules cost ``rates`` seconds per sample."""
    clock.now += training
    plan = budget.plan(list(eligible), last=set(last))
    seconds = {name: rates[name] * size for name, size in plan.sizes.items()}
    clock.now += sum(seconds.values())
    budget.charge(seconds)
    return plan


def _measured(share: float, rates: dict[str, float], full: int = 100, **kwargs) -> tuple[Budget, FakeClock]:
    """A budget whose modules have each run once (their costs known), started afresh."""
    clock = FakeClock()
    budget = Budget(share, dict.fromkeys(rates, full), clock=clock, **kwargs)
    budget.per_sample.update(rates)
    budget.runs.update(dict.fromkeys(rates, 1))
    budget.start()
    return budget, clock


def test_the_share_is_kept_over_a_long_fit():
    rates = {"a": 0.01, "b": 0.05, "c": 0.2}
    budget, clock = _measured(0.1, rates)
    for _ in range(50):
        _evaluate(budget, clock, rates, rates)
        assert budget.share_so_far <= 0.1 + 1e-9
    assert budget.share_so_far > 0.09  # and the budget is used, not hoarded


def test_modules_rotate_rather_than_all_running_in_one_epoch():
    # each costs 2 s at full size; an epoch earns 10/9 s: at most one module an epoch at full size
    rates = dict.fromkeys("abc", 0.02)
    budget, clock = _measured(0.1, rates, floor=100)  # floor = full size: no scaling, only rotation
    plans = [_evaluate(budget, clock, rates, rates).sizes for _ in range(12)]
    assert all(len(p) <= 1 for p in plans)
    ran = [name for p in plans for name in p]
    assert set(ran) == set(rates) and max(ran.count(n) for n in rates) - min(ran.count(n) for n in rates) <= 1


def test_a_probe_is_scaled_down_to_the_floor_before_the_module_is_postponed():
    rates = {"a": 0.1}  # 10 s at full size; 10 s of training earn 1.11 s = 11 samples
    budget, clock = _measured(0.1, rates, floor=8)
    plan = _evaluate(budget, clock, rates, rates)
    assert plan.sizes == {"a": 11}
    budget, clock = _measured(0.1, rates, floor=16)
    plan = _evaluate(budget, clock, rates, rates)
    assert plan.sizes == {} and plan.postponed == ("a",)
    assert _evaluate(budget, clock, rates, rates).sizes == {"a": 22}  # it saved up two epochs' credit


def test_an_expensive_module_runs_less_often_than_a_cheap_one():
    rates = {"cheap": 0.001, "dear": 0.5}
    budget, clock = _measured(0.1, rates, floor=16)
    plans = [_evaluate(budget, clock, rates, rates).sizes for _ in range(20)]
    cheap, dear = (sum(name in p for p in plans) for name in rates)
    assert cheap == 20 and 0 < dear < 10


def test_first_runs_are_on_the_floor_one_new_module_per_evaluation():
    clock = FakeClock()
    budget = Budget(0.1, {"a": 100, "b": 100, "c": 100}, floor=16, clock=clock)
    budget.start()
    rates = dict.fromkeys("abc", 0.001)
    firsts = [_evaluate(budget, clock, rates, "abc").sizes for _ in range(3)]
    assert firsts[0] == {"a": 16}
    assert firsts[1]["b"] == 16 and "c" not in firsts[1]
    assert firsts[2]["c"] == 16


def test_a_module_that_never_ran_runs_on_its_last_chance_whatever_its_credit():
    clock = FakeClock()
    budget = Budget(0.1, {"a": 100, "b": 100}, floor=16, clock=clock)
    budget.start()
    rates = {"a": 1.0, "b": 1.0}
    assert _evaluate(budget, clock, rates, "ab").sizes == {"a": 16}  # b waits: one first run an evaluation
    plan = _evaluate(budget, clock, rates, "ab", training=0.0, last={"a", "b"})
    assert plan.sizes == {"b": 16}  # a has reported and has no credit; b must report before the fit ends
    assert budget.overspent  # the forced run is paid back later


def test_a_watched_module_runs_at_full_size_whenever_it_is_eligible():
    rates = {"watched": 1.0, "other": 1.0}  # 100 s at full size each, far beyond the allowance
    budget, clock = _measured(0.1, rates, watched={"watched"})
    plans = [_evaluate(budget, clock, rates, rates).sizes for _ in range(3)]
    assert all(p == {"watched": 100} for p in plans)


def test_the_final_plan_fits_one_more_share_of_the_fit():
    rates = {"a": 0.01, "b": 0.03}  # 1 s and 3 s at full size
    budget, clock = _measured(0.1, rates, final_floor=0.0)
    budget.full["new"], budget.floors["new"] = 100, 16  # never measured: at full size
    clock.now = 100.0  # the allowance of the final evaluation is 10 s: both at full size
    assert budget.final_plan(["a", "b", "new"]).sizes == {"a": 100, "b": 100, "new": 100}
    clock.now += 5.0
    assert budget.charge({"a": 1.0, "b": 3.0}) == 5.0
    assert (budget.final_spent, budget.spent, budget.training) == (5.0, 0.0, 100.0)  # reported apart
    budget, clock = _measured(0.1, rates, final_floor=0.0)
    clock.now = 20.0  # 2 s of allowance: both scaled by the same factor, not below the floor
    assert budget.final_plan(["a", "b"]).sizes == {"a": 50, "b": 50}
    budget, clock = _measured(0.1, rates)  # however short the fit, 30 s are allowed: both at full size
    assert budget.final_plan(["a", "b"]).sizes == {"a": 100, "b": 100}


def test_bad_budgets_are_refused_naming_the_argument():
    for bad in (0, 1, 1.5, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="budget"):
            Compass(budget=bad)
    with pytest.raises(ValueError, match="budget is shared"):
        Compass(robustness={"budget": 0.1})
    with pytest.raises(TypeError, match="final"):
        AttackSuccessRate(budget=0.1, final="yes")


class _FakeTime(pl.Callback):
    """Moves the monitors' fake clock: one second per training batch."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args) -> None:
        self.clock.now += 1.0


def _costly(module, clock: FakeClock, per_sample: float) -> None:
    """Make ``module``'s evaluation take ``per_sample`` fake seconds per probe sample."""
    evaluate = module.evaluate

    def costly(trainer, evaluation):
        evaluate(trainer, evaluation)
        clock.now += per_sample * len(evaluation.probe)

    module.evaluate = costly


def _runs(history, prefix):
    return [r for r in history if r["stage"] == "fit" and any(t.startswith(prefix) for t in r["metrics"])]


def test_a_budgeted_fit_rotates_scales_serves_watchers_and_ends_with_every_module(tmp_path):
    clock = FakeClock()
    compass = Compass(task=digits_task(), probe_size=96, budget=0.1, mutation={"mutations": ["noise"]},
                      robustness={"attacks": ["fgsm"]}, interpretability={"methods": ["saliency"], "every_n_epochs": 1},
                      neurons=False, pruning=False)
    compass.schedule.clock = clock
    # an epoch of 23 batches earns 2.6 s: the mutation module (0.96 s at full size) runs every epoch,
    # robustness (4.8 s) and attribution (19 s) must be scaled down and take turns
    for name, rate in {"mutation": 0.01, "robustness": 0.05, "interpretability": 0.2}.items():
        _costly(compass.modules[name], clock, rate)
    watcher = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="compass/basic/accuracy", mode="max")
    trainer = make_trainer(tmp_path, [compass, watcher, _FakeTime(clock)], epochs=6)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())

    history = compass.history
    training = [r for r in history if FINAL_SECONDS not in r["metrics"]]
    final = [r for r in history if FINAL_SECONDS in r["metrics"]]
    # the watched module ran at every epoch on the whole probe
    assert [r["metrics"][probe_size_tag("mutation")] for r in training] == [96.0] * 6
    # every module reported during training; the expensive ones on scaled probes, not every epoch
    robustness = [r["metrics"].get(probe_size_tag("robustness")) for r in training]
    attribution = [r["metrics"].get(probe_size_tag("interpretability")) for r in training]
    assert any(robustness) and any(attribution)
    assert 16 <= min(s for s in attribution if s) and max(s for s in attribution if s) < 96
    assert None in attribution
    # the budget's bookkeeping is logged, and the share stayed within the budget (the forced first
    # runs aside: the share is checked at the last training evaluation, after they are paid back)
    assert all(0 <= r["metrics"][SHARE] < 0.2 and r["metrics"][SKIPPED] >= 0 for r in training)
    assert compass.schedule.budget.share_so_far <= 0.12
    # the end-of-fit evaluation ran every module, and its cost is reported beside the training's
    assert len(final) == 1 and math.isfinite(final[0]["metrics"][FINAL_SECONDS])
    for prefix in ("compass/basic/", "compass/robustness/fgsm/", "compass/interpretability/saliency/"):
        assert prefix in " ".join(final[0]["metrics"])


def test_a_single_callback_under_a_budget_scales_its_probe_and_evaluates_at_the_end(tmp_path):
    clock = FakeClock()
    monitor = AttackSuccessRate(attacks=["fgsm"], task=digits_task(), probe_size=64, budget=0.1)
    monitor.schedule.clock = clock
    _costly(monitor, clock, 0.1)  # 6.4 s at full size; an epoch earns 2.6 s
    trainer = make_trainer(tmp_path, [monitor, _FakeTime(clock)], epochs=3)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    sizes = [r["metrics"].get(probe_size_tag("robustness")) for r in monitor.history]
    assert sizes[0] == 16 and all(s is None or 16 <= s < 64 for s in sizes[1:-1])
    assert FINAL_SECONDS in monitor.history[-1]["metrics"]
    assert monitor.history[-1]["metrics"][probe_size_tag("robustness")] <= 64


def test_without_a_budget_every_module_keeps_its_schedule(tmp_path):
    compass = Compass(task=digits_task(), probe_size=32, budget=None, mutation={"mutations": ["noise"]},
                      robustness={"attacks": ["fgsm"]}, interpretability=False, neurons=False, pruning=False)
    trainer = make_trainer(tmp_path, [compass], epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert len(_runs(compass.history, "compass/robustness/")) == 2
    assert not any(t.startswith("compass/budget/") for r in compass.history for t in r["metrics"])


def test_figures_are_drawn_at_the_first_and_every_nth_evaluation_and_at_validate(tmp_path):
    from conftest import read_events

    from compass_lightning import MutationMetrics

    monitor = MutationMetrics(task=digits_task(), mutations=["noise"], probe_size=32, images_every_n=2)
    trainer = make_trainer(tmp_path, [monitor], epochs=3)
    model = DigitsClassifier()
    trainer.fit(model, datamodule=DigitsDataModule())
    events = read_events(trainer.logger.log_dir)
    steps = [e.step for e in events.Images("compass/mutation/examples")]
    assert len(steps) == 2 and steps == sorted(steps)  # evaluations 1 and 3 of 3
    assert len(events.Scalars("compass/mutation/noise/accuracy")) == 3  # the scalars every time
    trainer.validate(model, datamodule=DigitsDataModule(), verbose=False)  # a single evaluation: its figures too
    assert len(read_events(trainer.logger.log_dir).Images("compass/mutation/examples")) == 3
    with pytest.raises(ValueError, match="images_every_n"):
        MutationMetrics(images_every_n=0)


def test_the_end_of_fit_plan_scales_pruning_by_its_a_priori_cost(tmp_path):
    # pruning has never run when the final evaluation is planned: its estimate (here 10 s a sample,
    # against about 5 s of allowance) must shrink its probe to the floor; the other modules' measured
    # costs take the same factor
    clock = FakeClock()
    compass = Compass(task=digits_task(), probe_size=96, budget=0.1, mutation={"mutations": ["noise"]},
                      robustness=False, interpretability=False, neurons=False,
                      pruning={"methods": ["magnitude"], "joint": False, "rates": [0.5], "sweep": [0.5]})
    compass.schedule.clock = clock
    asked = []
    compass.modules["pruning"].estimated_cost = lambda forward: asked.append(forward) or (lambda size: 10.0 * size)
    trainer = make_trainer(tmp_path, [compass, _FakeTime(clock)], epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    final = compass.history[-1]["metrics"]
    assert asked and asked[0] >= 0.0  # asked with the measured forward seconds of one sample
    assert final[probe_size_tag("pruning")] == 16.0 and final[probe_size_tag("mutation")] == 16.0
    assert "compass/pruning/magnitude/max_safe_rate" in final


def test_the_pruning_estimate_counts_its_passes():
    from compass_lightning import PruningAnalysis

    monitor = PruningAnalysis(["magnitude", "taylor"], rates=[0.5], sweep=[0.25], joint_rates=[0.5], attacks=["pgd"],
                              attribution_methods=["saliency"], attribution_steps=4, attribution_probe_size=8,
                              calibration_size=32)
    cost, without_joint = monitor.estimated_cost(1.0)  # in forwards of one sample
    assert without_joint(4) == 3 * 32 + 4 * (1 + 2 * 2)
    pgd = 1 + 3 * 10  # ten steps of forward+backward and the scoring forward
    copies = 1 + 2 * 1  # the unpruned model and each method at the joint rate
    fixed = 3 * 32  # taylor on the calibration set, whatever the probe
    saliency = copies * (3 + 2 * 4)  # and its insertion/deletion, per sample of at most 8
    assert cost(4) == fixed + 4 * (1 + 2 * 2 + copies * pgd) + 4 * saliency  # the sweep: the reference, 2 methods x 2 rates
    assert cost(100) - cost(99) == 1 + 2 * 2 + copies * pgd  # past the attribution subset's 8 samples


def test_a_joint_analysis_that_cannot_fit_is_left_out_with_the_reason(tmp_path):
    clock = FakeClock()
    compass = Compass(task=digits_task(), probe_size=48, budget=0.1, mutation={"mutations": ["noise"]},
                      robustness=False, interpretability=False, neurons=False,
                      pruning={"methods": ["magnitude"], "rates": [0.5], "sweep": [0.5], "joint_rates": [0.5],
                               "attacks": ["fgsm"], "attribution_methods": ["saliency"]})
    compass.schedule.clock = clock
    compass.modules["pruning"].estimated_cost = lambda forward: [lambda size: 1e6, lambda size: 0.0]
    trainer = make_trainer(tmp_path, [compass, _FakeTime(clock)], epochs=1)
    with pytest.warns(UserWarning, match="joint analysis .* does not fit the time budget"):
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    final = compass.history[-1]["metrics"]
    asr = final["compass/pruning/magnitude/rate_0.50/asr"]
    assert asr is None or math.isnan(asr)  # undefined (the history keeps NaN as None)
    assert math.isfinite(final["compass/pruning/magnitude/rate_0.50/accuracy"])
    assert compass.modules["pruning"].variant == 0  # for the next evaluation, outside the budget's plan


def test_a_module_whose_schedule_the_fit_never_reaches_runs_on_the_last_epoch(tmp_path):
    # interpretability every 5 epochs in a 2-epoch fit: the budget's at-least-once rule still runs it
    # during training, on its floor, at the last epoch
    clock = FakeClock()
    compass = Compass(task=digits_task(), probe_size=48, budget=0.1, mutation={"mutations": ["noise"]},
                      robustness=False, interpretability={"methods": ["saliency"], "every_n_epochs": 5},
                      neurons=False, pruning=False)
    compass.schedule.clock = clock
    trainer = make_trainer(tmp_path, [compass, _FakeTime(clock)], epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    training = [r for r in compass.history if FINAL_SECONDS not in r["metrics"]]
    assert [r["epoch"] for r in training if probe_size_tag("interpretability") in r["metrics"]] == [1]
    assert training[-1]["metrics"][probe_size_tag("interpretability")] == 16.0
