"""The Compass: the same values as the separate callbacks with fewer passes, schedules, the radar,
reports, comparisons of runs and checkpoints."""

import math
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import (
    EVERY_MODULE,
    DigitsClassifier,
    DigitsDataModule,
    assert_monitor_ran,
    digits_task,
    make_trainer,
    read_events,
    train_digits,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from compass_lightning import AttackSuccessRate, Compass, MutationMetrics, NeuronAnalysis
from compass_lightning.checkpoints import compare_checkpoints
from compass_lightning.cli import main as cli
from compass_lightning.engine.passes import PassCounter
from compass_lightning.reporting.radar import AXES, axis_values, radar_scores

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "mutation": {"mutations": ["noise", "contrast"]},
    "robustness": {"attacks": ["fgsm", "pgd"]},
    "interpretability": {"methods": ["saliency", "integrated_gradients"], "every_n_epochs": 2, "probe_size": 16},
    "neurons": {"profile_size": 128},
    "pruning": {"methods": ["magnitude", "taylor"], "sweep": [0.1, 0.2, 0.3], "calibration_size": 64},
}


@pytest.fixture(scope="module")
def compass_run(tmp_path_factory):
    """A real 4-epoch fit of the digits model with the Compass (every module), shared by the tests."""
    root = tmp_path_factory.mktemp("compass")
    pl.seed_everything(0)
    # every module on its schedule, with its figures every time
    compass = Compass(task=digits_task(), probe_size=96, budget=None, images_every_n=1, **SMALL)
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer(root, [compass, checkpoints], epochs=4)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return compass, trainer, Path(trainer.logger.log_dir), root


def test_radar_scores_best_is_five_and_the_rest_proportional():
    rows = {
        "epoch 0": {"accuracy": 0.5, "robustness": 0.2, "interpretability": -0.1, "pruning": 0.0},
        "epoch 1": {"accuracy": 1.0, "robustness": 0.1, "interpretability": 0.3, "pruning": 0.0},
        "epoch 2": {"accuracy": 0.25, "robustness": None, "interpretability": 0.15, "pruning": 0.0},
    }
    scores = radar_scores(rows)
    assert scores["epoch 1"]["accuracy"] == 5.0 and scores["epoch 0"]["accuracy"] == 2.5
    assert scores["epoch 2"]["accuracy"] == 1.25
    assert scores["epoch 0"]["robustness"] == 5.0 and scores["epoch 1"]["robustness"] == 2.5
    assert scores["epoch 2"]["robustness"] is None
    assert scores["epoch 0"]["interpretability"] == 0.0 and scores["epoch 2"]["interpretability"] == 2.5
    assert all(scores[k]["pruning"] is None for k in rows)  # all 0: nobody is best, the axis is not scored
    # a model that classifies nothing right is not "best" on the axes it scores 0 on
    alone = radar_scores({"broken": {"accuracy": 0.0, "mutation_accuracy": 0.0, "robustness": 1.0,
                                     "interpretability": -0.2, "pruning": 0.0}})["broken"]
    assert alone == {"accuracy": None, "mutation_accuracy": None, "robustness": 5.0, "interpretability": None, "pruning": None}
    values = axis_values({"compass/robustness/mean_asr": 0.3, "compass/interpretability/ig/insertion_minus_deletion": 0.4,
                          "compass/interpretability/random/insertion_minus_deletion": 0.0,
                          "compass/pruning/taylor/max_safe_rate": 0.2, "compass/pruning/obd/max_safe_rate": 0.4})
    assert values["robustness"] == pytest.approx(0.7) and values["interpretability"] == pytest.approx(0.4)
    assert values["pruning"] == pytest.approx(0.3) and values["accuracy"] is None


def test_a_fit_logs_every_module_on_its_schedule_the_radar_and_the_layout(compass_run):
    compass, trainer, log_dir, _ = compass_run
    assert_monitor_ran(compass, *EVERY_MODULE)
    assert_monitor_ran(log_dir, *EVERY_MODULE)  # the history file holds what was logged
    assert [(r["epoch"], r["stage"]) for r in compass.history] == [(0, "fit"), (1, "fit"), (2, "fit"), (3, "fit"), (3, "fit")]
    events = read_events(log_dir)
    scalars = set(events.Tags()["scalars"])
    for module in ("mutation", "robustness", "neurons"):
        assert set(compass.modules[module].expected_tags()) <= scalars, module
    assert len(events.Scalars("compass/robustness/pgd/asr")) == 4
    assert len(events.Scalars("compass/interpretability/saliency/insertion")) == 2  # every 2 epochs
    assert len(events.Scalars("compass/pruning/taylor/max_safe_rate")) == 1  # at the end of fit
    assert {f"compass/score/{axis}" for axis in AXES} <= scalars
    assert len(events.Images("compass/score/radar")) == 5
    assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_the_compass_equals_the_separate_callbacks_with_fewer_passes(tmp_path):
    model, data = train_digits(epochs=2), DigitsDataModule()
    common = {"task": digits_task(), "probe_size": 64, "seed": 3}
    separate = [
        MutationMetrics(mutations=["noise"], **common),
        AttackSuccessRate(attacks=["fgsm"], **common),
        NeuronAnalysis(profile_size=64, **common),
    ]
    compass = Compass(mutation={"mutations": ["noise"]}, robustness={"attacks": ["fgsm"]}, interpretability=False,
                      neurons={"profile_size": 64}, pruning=False, **common)
    results, passes = [], []
    for callbacks in (separate, [compass]):
        trainer = make_trainer(tmp_path, callbacks, logger=False)
        with PassCounter(model) as counted:
            (logged,) = trainer.validate(model, datamodule=data, verbose=False)
        results.append(logged)
        passes.append((counted.forward, counted.backward))
    alone, shared = results
    assert_monitor_ran(alone, "compass/mutation/noise/accuracy", "compass/robustness/fgsm/asr", "compass/neurons/coverage/nc")
    assert_monitor_ran(shared, "compass/mutation/noise/accuracy", "compass/robustness/fgsm/asr", "compass/neurons/coverage/nc")
    assert set(alone) - {"compass/errors"} <= set(shared)
    for tag, value in alone.items():
        assert shared[tag] == pytest.approx(value, abs=1e-6, nan_ok=True), tag
    print("passes (separate, compass):", passes)
    assert passes[1][0] < passes[0][0] and passes[1][1] <= passes[0][1], passes
    assert shared["compass/passes/forward"] < passes[0][0]


def test_module_configuration_errors_name_the_module():
    with pytest.raises(ValueError, match="robustness: attacks: unknown attack 'nope'"):
        Compass(robustness={"attacks": ["nope"]})
    with pytest.raises(TypeError, match="neurons: .*unexpected keyword argument 'sigmaa'"):
        Compass(neurons={"sigmaa": 0.1})
    with pytest.raises(ValueError, match="mutation: seed is shared by every module; set Compass\\(seed=...\\)"):
        Compass(mutation={"seed": 1})
    with pytest.raises(TypeError, match="pruning must be True, False or a mapping"):
        Compass(pruning="yes")
    with pytest.raises(ValueError, match="at least one module"):
        Compass(mutation=False, robustness=False, interpretability=False, neurons=False, pruning=False)
    with pytest.raises(ValueError, match="interpretability.probe_size must be an integer >= 1"):
        Compass(interpretability={"probe_size": 0})


def test_report_command_writes_html_with_every_module_and_prints_a_summary(compass_run, tmp_path, capsys):
    _, _, log_dir, _ = compass_run
    assert cli(["report", str(log_dir), "--output", str(tmp_path)]) == 0
    page = (tmp_path / "compass_report.html").read_text()
    for module in ("basic", "mutation", "robustness", "interpretability", "neurons", "pruning", "score", "Radar"):
        assert f"<h2>{module}</h2>" in page, module
    assert page.count("data:image/png;base64,") >= 8 and "<script" not in page
    out = capsys.readouterr().out
    assert "compass/basic/accuracy" in out and "compass_report.html" in out


@pytest.mark.parametrize("bad", ["missing", "empty", "garbage"])
def test_report_and_compare_refuse_a_bad_log_directory_with_status_2(tmp_path, capsys, bad):
    directory = tmp_path / "run"
    if bad != "missing":
        directory.mkdir()
    if bad == "garbage":
        (directory / "compass_history.jsonl").write_text("not json\n")
    assert cli(["report", str(directory)]) == 2
    assert cli(["compare", str(directory), str(directory)]) == 2
    err = capsys.readouterr().err
    assert {"missing": "is not a directory", "empty": "no compass_history.jsonl", "garbage": "holds no compass evaluations"}[bad] in err


def test_the_console_script_runs_report(compass_run, tmp_path):
    _, _, log_dir, _ = compass_run
    result = subprocess.run([sys.executable, "-m", "compass_lightning.cli", "report", str(log_dir), "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([sys.executable, "-m", "compass_lightning.cli", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_compare_command_puts_runs_side_by_side(compass_run, tmp_path, capsys):
    _, _, log_dir, _ = compass_run
    assert cli(["compare", str(log_dir), str(log_dir), "--output", str(tmp_path)]) == 0
    page = (tmp_path / "compass_compare.html").read_text()
    assert "(best)" in page and "(last)" in page and page.count("data:image/png;base64,") == 1
    assert "compass compare: 2 runs" in capsys.readouterr().out


def test_compare_checkpoints_scores_two_checkpoints(compass_run, tmp_path, monkeypatch):
    _, _, _, root = compass_run
    monkeypatch.chdir(tmp_path)  # without a logger, nothing may land in the working directory
    paths = [root / "ckpt" / "epoch=0.ckpt", root / "ckpt" / "epoch=3.ckpt"]
    small = Compass(task=digits_task(), probe_size=48, interpretability=False,
                    **{k: v for k, v in SMALL.items() if k not in ("interpretability",)})
    result = compare_checkpoints(DigitsClassifier, paths, datamodule=DigitsDataModule(), compass=small)
    assert list(result.metrics) == ["epoch=0.ckpt", "epoch=3.ckpt"]
    assert_monitor_ran(list(result.metrics.values()), "compass/robustness/*/asr", "compass/pruning/*/max_safe_rate")
    assert result.axes["epoch=3.ckpt"]["accuracy"] > result.axes["epoch=0.ckpt"]["accuracy"]
    assert result.scores["epoch=3.ckpt"]["accuracy"] == 5.0 and result.radar.shape[0] == 3
    assert all(math.isfinite(result.axes[k]["pruning"]) for k in result.axes)
    assert "| epoch=3.ckpt |" in result.table()
    assert list(tmp_path.iterdir()) == []


def test_compare_checkpoints_refuses_a_crafted_pickle(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.ckpt"
    with path.open("wb") as stream:
        pickle.dump({"state_dict": Payload()}, stream)
    with pytest.raises(pickle.UnpicklingError):
        compare_checkpoints(DigitsClassifier, [path], datamodule=DigitsDataModule(), compass=Compass(pruning=False))
    with pytest.raises(ValueError, match="no such checkpoint file"):
        compare_checkpoints(DigitsClassifier, [tmp_path / "none.ckpt"], datamodule=DigitsDataModule())


@pytest.mark.parametrize(("neurons_size", "reused"), [(48, True), (64, True), (96, False)])
def test_the_neuron_module_reuses_the_attacks_examples_when_they_cover_its_probe(tmp_path, monkeypatch, neurons_size, reused):
    # The robustness module attacks the first 64 probe samples; the layer deviation (FGSM at the same
    # eps) takes them for a probe within those 64, and makes its own for a larger one.
    from compass_lightning.callbacks import neurons

    given = []
    original = neurons.deviation_similarities

    def spy(*args, x_adv=None, **kwargs):
        given.append(x_adv is not None)
        return original(*args, x_adv=x_adv, **kwargs)

    monkeypatch.setattr(neurons, "deviation_similarities", spy)
    compass = Compass(task=digits_task(), probe_size=128, robustness={"attacks": ["fgsm"], "probe_size": 64, "image_count": 0},
                      neurons={"profile_size": 64, "probe_size": neurons_size, "image_count": 0},
                      mutation=False, interpretability=False, pruning=False)
    trainer = make_trainer(tmp_path, [compass], logger=False)
    trainer.validate(train_digits(epochs=1), datamodule=DigitsDataModule(), verbose=False)
    assert_monitor_ran(compass, "compass/neurons/deviation/*/gap")
    assert given and set(given) == {reused}
