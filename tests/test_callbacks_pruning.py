"""PruningAnalysis inside real Lightning runs: end-of-fit report, loggers, files, the model untouched, bad input."""

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, StateBracket, digits_task, make_trainer, read_events
from lightning.pytorch.callbacks import ModelCheckpoint

from compass_lightning import PruningAnalysis
from compass_lightning.callbacks.pruning import REPORT_FILE, rate_tag
from compass_lightning.pruning import importance, prune, sparsity

FAST = {"sweep": [0.1, 0.2, 0.3], "probe_size": 96, "calibration_size": 64, "attribution_steps": 8, "task": digits_task()}


def _fit(tmp_path, monitor, *, epochs=2, callbacks=(), **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, list(callbacks) or [monitor], epochs=epochs, **kwargs)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return trainer


def _report(directory):
    with (Path(directory) / REPORT_FILE).open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_end_of_fit_report_in_tensorboard_with_figures_and_csv_and_the_model_untouched(tmp_path):
    bracket = StateBracket(hooks=("on_train_end",))
    monitor = PruningAnalysis(**FAST)
    trainer = _fit(tmp_path, monitor, callbacks=bracket.around(monitor), epochs=3)
    assert bracket.checked == 1 and monitor.error_count == 0  # ran once, at the end, and left the model as found
    assert [r["epoch"] for r in monitor.history] == [2]
    events = read_events(trainer.logger.log_dir)
    for tag in monitor.expected_tags():
        (value,) = [e.value for e in events.Scalars(tag)]
        assert math.isfinite(value), tag
    assert {"compass/pruning/accuracy", "compass/pruning/asr", "compass/pruning/insertion_deletion"} <= set(
        events.Tags()["images"]
    )
    rows = _report(trainer.logger.log_dir)
    grid = sorted({0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5})
    assert [(r["method"], float(r["rate"])) for r in rows] == [("unpruned", 0.0)] + [
        (m, rate) for m in ("magnitude", "taylor", "obd") for rate in grid
    ]
    for row in rows[1:]:  # the achieved sparsity is the rate, to one weight in ~1.7k
        assert abs(float(row["sparsity"]) - float(row["rate"])) < 1e-3
        assert 0 < float(row["sparsity_all"]) < float(row["sparsity"])  # biases and BatchNorm count there, unpruned
        assert row["changes_weights"] == "False" and row["stage"] == "fit"
    metrics = monitor.history[-1]["metrics"]
    # the joint analysis ran on the pruned copies: its values are those of a pruned model
    assert metrics["compass/pruning/taylor/rate_0.40/asr"] != metrics["compass/pruning/unpruned/asr"]
    assert 0 < metrics["compass/pruning/magnitude/max_safe_rate"] <= 0.5


def test_the_methods_that_train_their_copy_are_evaluated_on_that_copy_and_marked_in_the_csv(tmp_path):
    short = {"greg2": {"pick_steps": 2, "steps": 10}, "asl": {"steps": 10}}
    monitor = PruningAnalysis(methods={"magnitude": {}, **short}, rates=[0.5], joint=False,
                              **{**FAST, "sweep": [0.9]})
    trainer = _fit(tmp_path, monitor, epochs=1)
    assert monitor.error_count == 0
    rows = {(r["method"], float(r["rate"])): r for r in _report(trainer.logger.log_dir)}
    for method in ("greg2", "asl"):
        assert rows[(method, 0.5)]["changes_weights"] == "True"
        assert abs(float(rows[(method, 0.9)]["sparsity"]) - 0.9) < 1e-3
        # trained on while pruned: not the one-shot magnitude numbers
        assert rows[(method, 0.9)]["accuracy"] != rows[("magnitude", 0.9)]["accuracy"]
    assert rows[("magnitude", 0.5)]["changes_weights"] == "False"


def test_logged_metrics_are_those_of_prune_on_the_probe(tmp_path):
    monitor = PruningAnalysis(["taylor"], rates=[0.0, 0.4], sweep=[], joint=False, probe_size=64, calibration_size=64,
                              task=digits_task(), batch_size=32)
    trainer = _fit(tmp_path, monitor, epochs=1)
    model = trainer.lightning_module.eval()  # fit leaves it in train mode
    calibration = [(monitor._calibration.inputs[i : i + 32], monitor._calibration.targets[i : i + 32]) for i in (0, 32)]
    x, y = monitor._probe.inputs, monitor._probe.targets
    scores = importance(model, "taylor", calibration)
    metrics = monitor.history[-1]["metrics"]
    with torch.no_grad():
        unpruned = (model(x).argmax(1) == y).float().mean().item()
        pruned = (prune(model, scores, 0.4)(x).argmax(1) == y).float().mean().item()
    assert metrics["compass/pruning/unpruned/accuracy"] == pytest.approx(unpruned)
    assert metrics["compass/pruning/taylor/rate_0.00/accuracy"] == metrics["compass/pruning/unpruned/accuracy"]
    assert metrics["compass/pruning/taylor/rate_0.00/loss"] == metrics["compass/pruning/unpruned/loss"]
    assert metrics["compass/pruning/taylor/rate_0.40/accuracy"] == pytest.approx(pruned)


def test_near_chance_at_099_with_a_positive_safe_rate(tmp_path):
    monitor = PruningAnalysis(["magnitude", "obd"], rates=[0.99], sweep=[0.05, 0.1, 0.2], joint=False, tolerance=0.02,
                              task=digits_task(), probe_size=256, calibration_size=128)
    trainer = _fit(tmp_path, monitor, epochs=4, logger=False)
    for method in ("magnitude", "obd"):
        assert trainer.callback_metrics[f"compass/pruning/{method}/rate_0.99/accuracy"] < 0.25
        assert trainer.callback_metrics[f"compass/pruning/unpruned/accuracy"] > 0.85
        assert trainer.callback_metrics[f"compass/pruning/{method}/max_safe_rate"] > 0


def test_csv_logger_gets_scalars_and_pngs(tmp_path):
    monitor = PruningAnalysis(["magnitude"], rates=[0.4], joint_rates=[0.4], **{**FAST, "sweep": []})
    trainer = _fit(tmp_path, monitor, logger=pl.loggers.CSVLogger(tmp_path, name="csv"))
    with (Path(trainer.logger.log_dir) / "metrics.csv").open(newline="") as stream:
        logged = list(csv.DictReader(stream))
    values = [row["compass/pruning/magnitude/rate_0.40/asr"] for row in logged if row.get("compass/pruning/magnitude/rate_0.40/asr")]
    assert len(values) == 1 and 0 <= float(values[0]) <= 1
    pngs = {p.parent.name for p in Path(trainer.logger.log_dir).rglob("*.png")}
    assert {"accuracy", "asr", "insertion_deletion"} <= pngs
    assert len(_report(trainer.logger.log_dir)) == 2


def test_no_logger_keeps_the_scalars_and_the_report_in_the_root_dir(tmp_path):
    monitor = PruningAnalysis(["magnitude"], rates=[0.4], joint=False, **{**FAST, "sweep": []})
    with pytest.warns(UserWarning, match="no logger"):
        trainer = _fit(tmp_path, monitor, logger=False)
    assert "compass/pruning/magnitude/max_safe_rate" in trainer.callback_metrics
    assert len(_report(tmp_path)) == 2


def test_every_n_epochs_runs_at_validation_epochs_once_each_and_can_be_monitored(tmp_path):
    monitor = PruningAnalysis(["magnitude"], rates=[0.4], joint=False, every_n_epochs=1, **{**FAST, "sweep": []})
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="compass/pruning/magnitude/max_safe_rate", mode="max")
    trainer = _fit(tmp_path, monitor, epochs=2, callbacks=[monitor, best])
    assert [r["epoch"] for r in monitor.history] == [0, 1]  # the end of fit does not repeat the last epoch
    assert best.best_model_path
    assert [r["epoch"] for r in _report(trainer.logger.log_dir)] == ["0", "0", "1", "1"]


def test_a_checkpoint_watching_an_end_of_fit_tag_is_refused_before_training(tmp_path):
    monitor = PruningAnalysis(["magnitude"], joint=False, **FAST)
    watcher = ModelCheckpoint(dirpath=tmp_path, monitor="compass/pruning/magnitude/max_safe_rate", mode="max")
    with pytest.raises(ValueError, match=r"only at the end of fit \(every_n_epochs=None\)"):
        _fit(tmp_path, monitor, callbacks=[monitor, watcher])


def test_save_pruned_writes_state_dicts_that_load_without_pickle(tmp_path):
    monitor = PruningAnalysis(["magnitude", "taylor"], rates=[0.35, 0.5], joint=False, save_pruned=True, **FAST)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    _fit(tmp_path, monitor, callbacks=[monitor, checkpoints])
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("pruned_*.pt"))
    assert saved == [f"pruned_{m}_{rate_tag(r)}.pt" for m in ("magnitude", "taylor") for r in (0.35, 0.5)]
    model = DigitsClassifier()
    model.load_state_dict(torch.load(tmp_path / "ckpt" / "pruned_taylor_rate_0.50.pt", weights_only=True))
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)


def test_validate_needs_calibration_data_or_uses_the_datamodules_training_data(tmp_path):
    trained = DigitsClassifier()
    data = DigitsDataModule()
    data.setup()
    monitor = PruningAnalysis(["magnitude"], rates=[0.4], joint=False, calibration_data=data.train_set, **FAST)
    trainer = make_trainer(tmp_path, [monitor], logger=False)
    (results,) = trainer.validate(trained, datamodule=data, verbose=False)
    assert 0 <= results["compass/pruning/magnitude/rate_0.40/accuracy"] <= 1
    bare = PruningAnalysis(["magnitude"], rates=[0.4], joint=False, **FAST)
    trainer = make_trainer(tmp_path, [bare], logger=False)
    (results,) = trainer.validate(trained, datamodule=data, verbose=False)  # the datamodule's train_dataloader
    assert bare.error_count == 0 and 0 <= results["compass/pruning/magnitude/rate_0.40/accuracy"] <= 1


def test_progress_bar_shows_the_sweep(tmp_path, capsys):
    monitor = PruningAnalysis(["magnitude"], rates=[0.4], joint=False, **FAST)
    _fit(tmp_path, monitor, epochs=1, enable_progress_bar=True)
    assert "PruningAnalysis" in capsys.readouterr().err


def test_calibration_larger_than_the_training_data_fails_before_training(tmp_path):
    monitor = PruningAnalysis(["magnitude"], calibration_size=100_000, **{k: v for k, v in FAST.items() if k != "calibration_size"})
    trainer = make_trainer(tmp_path, [monitor])
    model = DigitsClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="100000"):
        trainer.fit(model, datamodule=DigitsDataModule())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rates": [0.4, 1.0]}, ValueError, r"rates\[1\] must be a number in \[0.0, 1.0\)"),
        ({"rates": [-0.1]}, ValueError, r"rates must be a number in \[0.0, 1.0\)"),
        ({"rates": []}, ValueError, "rates must be a number or a non-empty list"),
        ({"sweep": 0.5}, TypeError, "sweep must be a list of rates"),
        ({"methods": ["magnitude", "snip"]}, ValueError, "methods: unknown importance 'snip'; choose from: magnitude"),
        ({"methods": {"greg2": {"steps": 0}}}, ValueError, r"greg2.steps must be an integer >= 1"),
        ({"methods": ["magnitude", "asl"], "structured": True}, ValueError, "structured: 'asl' prunes single weights"),
        ({"tolerance": -0.01}, ValueError, r"tolerance must be a number in \[0.0, inf\]"),
        ({"calibration_size": 0}, ValueError, "calibration_size must be an integer >= 1"),
        ({"joint_rates": [1.5]}, ValueError, r"joint_rates must be a number in \[0.0, 1.0\)"),
        ({"attacks": ["fgsm", "nope"]}, ValueError, "attacks: unknown attack 'nope'"),
        ({"attribution_methods": ["nope"]}, ValueError, "methods: unknown attribution method 'nope'"),
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs must be an integer >= 1"),
        ({"save_pruned": "yes"}, TypeError, "save_pruned must be True or False"),
        ({"calibration_data": [1, 2]}, TypeError, "must be a map-style Dataset|a Dataset or a pair"),
    ],
)
def test_bad_input_raises_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        PruningAnalysis(**kwargs)


def test_rates_of_all_parameters_beyond_the_prunable_share_are_refused_at_fit_start(tmp_path):
    monitor = PruningAnalysis(["magnitude"], rates=[0.999], sweep=[], joint=False, rate_of="all", calibration_size=16)
    with pytest.raises(ValueError, match=r"rates: 0.999 of all parameters is more than DigitsClassifier can prune"):
        _fit(tmp_path, monitor, epochs=1)
    with pytest.raises(ValueError, match="rate_of must be one of"):
        PruningAnalysis(rate_of="weights")
