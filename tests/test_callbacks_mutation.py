"""MutationMetrics inside real Lightning runs: what reaches TensorBoard, CSV, checkpoints and history."""

import csv
import dataclasses
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, StateBracket, digits_task, make_trainer, read_events, train_digits
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from compass_lightning import CompassWarning, MutationMetrics
from compass_lightning.metrics import METRIC_NAMES, classification_metrics, to_floats
from compass_lightning.mutation import MUTATIONS
from compass_lightning.reporting.history import read_history

SCALARS = [f"compass/basic/{m}" for m in METRIC_NAMES] + [
    f"compass/mutation/{name}/{m}" for name in MUTATIONS for m in (*METRIC_NAMES, "accuracy_drop")
] + ["compass/mutation/data_shuffle/batch_dependence", "compass/mutation/mean_accuracy", "compass/errors"]
IMAGES = ["compass/mutation/examples", "compass/basic/confusion_matrix"]


def _fit(tmp_path, callback, *, epochs=2, logger="tensorboard", model=None, callbacks=(), **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [callback, *callbacks], epochs=epochs, logger=logger, **kwargs)
    trainer.fit(model or DigitsClassifier(), datamodule=DigitsDataModule())
    return trainer


def test_fit_logs_every_scalar_and_image_to_tensorboard(tmp_path):
    trainer = _fit(tmp_path, MutationMetrics(task=digits_task(), images_every_n=1))
    events = read_events(trainer.logger.log_dir)
    tags = events.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    for tag in SCALARS:
        values = [event.value for event in events.Scalars(tag)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), tag
    for tag in IMAGES:
        images = events.Images(tag)
        assert len(images) == 2 and images[0].width > 100 and images[0].height > 100
    accuracy = [e.value for e in events.Scalars("compass/basic/accuracy")]
    assert accuracy[1] > accuracy[0] > 0.1  # the model learns, and the monitor sees it
    assert [e.value for e in events.Scalars("compass/errors")] == [0.0, 0.0]


def test_logged_values_are_the_metrics_of_the_probe(tmp_path):
    monitor = MutationMetrics(task=digits_task(), probe_size=100, mutations=["noise", "label_error"])
    trainer = _fit(tmp_path, monitor, epochs=1)
    probe = monitor._probe
    model = trainer.lightning_module.eval()
    with torch.no_grad():
        expected = to_floats(classification_metrics(model(probe.inputs), probe.targets))
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    for name, value in expected.items():
        assert logged[f"compass/basic/{name}"] == pytest.approx(value, abs=1e-6)
    drop = logged["compass/basic/accuracy"] - logged["compass/mutation/noise/accuracy"]
    assert logged["compass/mutation/noise/accuracy_drop"] == pytest.approx(drop, abs=1e-6)
    # label noise on 10 % of the probe: exactly 10 labels differ, so accuracy can fall by at most 0.1
    assert 0 <= logged["compass/mutation/label_error/accuracy_drop"] <= 0.1 + 1e-6
    # the mean over the mutants, which differ here
    accuracies = [logged[f"compass/mutation/{name}/accuracy"] for name in ("noise", "label_error")]
    assert accuracies[0] != accuracies[1], accuracies
    assert logged["compass/mutation/mean_accuracy"] == pytest.approx(sum(accuracies) / 2, abs=1e-6)


def test_mutants_are_the_same_every_epoch(tmp_path):
    monitor = MutationMetrics(task=digits_task(), mutations=["noise"], probe_size=64)
    trainer = make_trainer(tmp_path, [monitor], epochs=1)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    first = trainer.callback_metrics["compass/mutation/noise/accuracy"].item()
    trainer.validate(trainer.lightning_module, datamodule=DigitsDataModule(), verbose=False)
    assert trainer.callback_metrics["compass/mutation/noise/accuracy"].item() == first  # same weights, same noise


def test_model_checkpoint_can_monitor_the_logged_accuracy(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="compass/basic/accuracy", mode="max", save_top_k=1)
    trainer = _fit(tmp_path, MutationMetrics(task=digits_task()), epochs=3, callbacks=[checkpoint])
    logged = [e.value for e in read_events(trainer.logger.log_dir).Scalars("compass/basic/accuracy")]
    assert checkpoint.best_model_score.item() == pytest.approx(max(logged))
    assert checkpoint.best_model_path.endswith(".ckpt")


class ModeRecorder(DigitsClassifier):
    modes: list

    def validation_step(self, batch, batch_idx):
        self.modes.append(torch.is_inference_mode_enabled())
        return super().validation_step(batch, batch_idx)


def test_validate_and_test_run_under_inference_mode_and_log(tmp_path):
    monitor = MutationMetrics(task=digits_task(), mutations=["noise", "random_crop"])
    trainer = make_trainer(tmp_path, [monitor], epochs=1, num_sanity_val_steps=0)
    model, data = ModeRecorder(), DigitsDataModule()
    model.modes = []
    trainer.fit(model, datamodule=data)
    (validated,) = trainer.validate(model, datamodule=data, verbose=False)
    assert model.modes[0] is False and model.modes[-1] is True  # fit: no_grad; validate: inference_mode
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    for results in (validated, tested):
        assert math.isfinite(results["compass/mutation/random_crop/accuracy"])
    assert [r["stage"] for r in monitor.history] == ["fit", "validate", "test"]
    events = read_events(trainer.logger.log_dir)
    assert len(events.Scalars("compass/mutation/random_crop/accuracy")) == 3  # fit, validate, test
    assert len(events.Images("compass/mutation/examples")) == 3
    assert [r["stage"] for r in read_history(trainer.logger.log_dir)] == ["fit", "validate", "test"]


def test_csv_logger_gets_scalars_and_png_images(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    _fit(tmp_path, MutationMetrics(task=digits_task(), mutations=["noise"], images_every_n=1), logger=logger)
    with open(f"{logger.log_dir}/metrics.csv") as stream:
        rows = [r for r in csv.DictReader(stream) if r.get("compass/mutation/noise/accuracy")]
    assert len(rows) == 2 and all(0 <= float(r["compass/basic/accuracy"]) <= 1 for r in rows)
    pngs = sorted((tmp_path / "csv" / "version_0" / "compass_images").rglob("*.png"))
    assert [p.relative_to(pngs[0].parents[3]).as_posix() for p in pngs] == [
        "compass/basic/confusion_matrix/step_0000023.png",
        "compass/basic/confusion_matrix/step_0000046.png",
        "compass/mutation/examples/step_0000023.png",
        "compass/mutation/examples/step_0000046.png",
    ]


def test_without_a_logger_images_are_dropped_with_one_warning(tmp_path):
    with pytest.warns(CompassWarning, match="no logger") as caught:
        trainer = _fit(tmp_path, MutationMetrics(task=digits_task(), mutations=["noise"]), logger=False)
    assert sum("no logger" in str(w.message) for w in caught) == 1
    assert "compass/mutation/noise/accuracy" in trainer.callback_metrics
    assert len(read_history(tmp_path)) == 2  # the history still goes to default_root_dir


def test_sanity_check_is_skipped_and_every_n_epochs_is_honoured(tmp_path):
    monitor = MutationMetrics(task=digits_task(), mutations=["noise"], every_n_epochs=2)
    _fit(tmp_path, monitor, epochs=5, num_sanity_val_steps=2)
    assert [r["epoch"] for r in monitor.history] == [1, 3]


def test_resume_from_a_checkpoint_continues_the_history(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = MutationMetrics(task=digits_task(), mutations=["noise"])
    _fit(tmp_path, first, epochs=2, callbacks=[checkpoint])
    resumed = MutationMetrics(task=digits_task(), mutations=["noise"])
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [resumed], epochs=4)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == first.history
    # the resumed run logs into a new directory, whose history file holds the whole curve
    assert [r["epoch"] for r in read_history(trainer.logger.log_dir)] == [0, 1, 2, 3]


def test_two_instances_with_different_settings_keep_separate_state(tmp_path):
    a = MutationMetrics(task=digits_task(), mutations=["noise"])
    b = MutationMetrics(task=digits_task(), mutations=["contrast"], every_n_epochs=2)
    assert a.state_key != b.state_key
    trainer = make_trainer(tmp_path, [a, b], epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert len(a.history) == 2 and len(b.history) == 1
    assert {r["key"] for r in read_history(trainer.logger.log_dir)} == {a.state_key, b.state_key}


def test_the_monitor_does_not_change_training(tmp_path):
    def final_weights(callbacks):
        pl.seed_everything(0)
        trainer = make_trainer(tmp_path, callbacks, epochs=2, logger=False)
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        return trainer.lightning_module.state_dict()

    without = final_weights([])
    with_monitor = final_weights([MutationMetrics(task=digits_task())])
    assert without.keys() == with_monitor.keys()
    for name, value in without.items():
        assert torch.equal(value, with_monitor[name]), name


class BatchMeanNet(DigitsClassifier):
    """Subtracts the batch mean of its features even in eval mode, so outputs depend on the batch."""

    def forward(self, x):
        features = self.net[:-1](x)
        return self.net[-1](features - features.mean(dim=0, keepdim=True))


def test_data_shuffle_flags_a_model_whose_outputs_depend_on_the_batch(tmp_path):
    with pytest.warns(CompassWarning, match="depend on which other samples share their batch"):
        flagged = _fit(tmp_path, MutationMetrics(task=digits_task(), batch_size=32), model=BatchMeanNet(), epochs=1)
    assert flagged.callback_metrics["compass/mutation/data_shuffle/batch_dependence"].item() > 1e-3

    with warnings.catch_warnings():
        warnings.simplefilter("error", CompassWarning)
        clean = _fit(tmp_path, MutationMetrics(task=digits_task(), batch_size=32), epochs=1)
    metrics = {k: v.item() for k, v in clean.callback_metrics.items()}
    assert metrics["compass/mutation/data_shuffle/batch_dependence"] < 1e-5
    for name in METRIC_NAMES:
        assert metrics[f"compass/mutation/data_shuffle/{name}"] == pytest.approx(metrics[f"compass/basic/{name}"], abs=1e-5)


class DictOutputNet(DigitsClassifier):
    def forward(self, x):
        return {"logits": self.net(x)}

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])["logits"], batch[1])

    def validation_step(self, batch, batch_idx):
        pass


def test_a_failing_analysis_warns_once_counts_errors_and_training_goes_on(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.warns(CompassWarning) as caught:
        trainer = _fit(
            tmp_path, MutationMetrics(task=digits_task()), model=DictOutputNet(), epochs=2,
            callbacks=[checkpoint],
        )
    messages = [str(w.message) for w in caught if "failed and was skipped" in str(w.message)]
    assert len(messages) == 1 and "returned a dict with keys ['logits']" in messages[0]
    assert trainer.current_epoch == 2 and (tmp_path / "ckpt" / "last.ckpt").exists()
    assert trainer.callback_metrics["compass/errors"].item() == 2


def test_one_failing_mutant_does_not_stop_the_others(tmp_path, monkeypatch):
    def broken(x, y, **kwargs):
        raise RuntimeError("mutant exploded")

    monkeypatch.setitem(MUTATIONS._entries, "noise", dataclasses.replace(MUTATIONS["noise"], function=broken))
    with pytest.warns(CompassWarning, match="mutation 'noise' failed and was skipped.*mutant exploded"):
        trainer = _fit(tmp_path, MutationMetrics(task=digits_task(), mutations=["noise", "contrast"]), epochs=1)
    assert math.isfinite(trainer.callback_metrics["compass/mutation/contrast/accuracy"].item())
    assert math.isnan(trainer.callback_metrics["compass/mutation/noise/accuracy"].item())
    assert trainer.callback_metrics["compass/errors"].item() == 1


def test_fail_fast_raises_the_original_exception(tmp_path):
    with pytest.raises(TypeError, match="returned a dict"):
        _fit(tmp_path, MutationMetrics(task=digits_task(), fail_fast=True), model=DictOutputNet(), epochs=1)


class CountingNet(DigitsClassifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingNet.steps += 1
        return super().training_step(batch, batch_idx)


class NoValidation(CountingNet):
    validation_step = pl.LightningModule.validation_step


@pytest.mark.parametrize(
    ("monitor", "model", "message"),
    [
        (lambda: MutationMetrics(probe_size=5000), CountingNet, r"probe_size=5000 is larger than .*\(360 samples\)"),
        (lambda: MutationMetrics(), NoValidation, "has no validation_step"),
    ],
)
def test_data_problems_raise_before_training_starts(tmp_path, monitor, model, message):
    CountingNet.steps = 0
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, monitor(), model=model())
    assert CountingNet.steps == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mutations": ["noise", "nope"]}, ValueError, "mutations: unknown mutation 'nope'; choose from: label_error"),
        ({"mutations": []}, ValueError, "mutations must name at least one mutation; choose from: label_error"),
        ({"mutations": ["noise", "noise"]}, ValueError, "'noise' listed more than once"),
        ({"mutations": "noise"}, TypeError, "mutations must be a list of names"),
        ({"mutations": {"noise": {"sigma": -1}}}, ValueError, r"noise.sigma must be a number in \[0.0, inf\]"),
        ({"mutations": {"noise": {"bogus": 1}}}, ValueError, "has no parameter bogus"),
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs must be an integer >= 1"),
        ({"probe_size": 0}, ValueError, "probe_size must be an integer >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
        ({"seed": -1}, ValueError, r"seed must be an integer in \[0, "),
        ({"image_count": -1}, ValueError, "image_count must be an integer >= 0"),
        ({"shuffle_tolerance": -0.1}, ValueError, "shuffle_tolerance must be a number"),
        ({"task": "classification"}, TypeError, "task must be a task adapter"),
        ({"probe_data": 3}, TypeError, "probe_data must be a Dataset or a pair"),
        ({"probe_data": (torch.rand(4, 2), torch.arange(4)), "probe_size": 5}, ValueError, "probe_size=5 is larger"),
        ({"fail_fast": "yes"}, TypeError, "fail_fast must be True or False"),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        MutationMetrics(**kwargs)


def test_probe_data_replaces_the_validation_loader(tmp_path):
    data = DigitsDataModule()
    data.setup()
    x, y = data.val_set.tensors
    monitor = MutationMetrics(task=digits_task(), mutations=["noise"], probe_data=(x[:50], y[:50]))
    _fit(tmp_path, monitor, epochs=1)
    assert len(monitor._probe) == 50


def test_a_successful_evaluation_logs_exactly_the_expected_tags(tmp_path):
    monitor = MutationMetrics(task=digits_task(), mutations=["data_shuffle", "noise"])
    _fit(tmp_path, monitor, epochs=1)
    assert set(monitor.history[0]["metrics"]) == {*monitor.expected_tags(), "compass/errors"}


def test_a_failed_analysis_logs_nan_so_a_monitoring_checkpoint_keeps_going(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="compass/basic/accuracy", mode="max", save_last=True)
    with pytest.warns(CompassWarning, match="failed and was skipped"):
        trainer = _fit(tmp_path, MutationMetrics(task=digits_task()), model=DictOutputNet(), callbacks=[checkpoint])
    assert trainer.current_epoch == 2 and (tmp_path / "ckpt" / "last.ckpt").exists()
    assert math.isnan(trainer.callback_metrics["compass/basic/accuracy"].item())


def test_a_checkpoint_watching_on_other_epochs_than_the_monitor_runs_is_refused_before_training(tmp_path):
    CountingNet.steps = 0
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "a", monitor="compass/basic/accuracy", mode="max")
    with pytest.raises(ValueError, match=r"use ModelCheckpoint\(monitor='compass/basic/accuracy', every_n_epochs=2\)"):
        _fit(tmp_path, MutationMetrics(task=digits_task(), every_n_epochs=2), model=CountingNet(), callbacks=[every_epoch])
    stopper = pl.callbacks.EarlyStopping(monitor="compass/mutation/mean_accuracy", mode="max")
    with pytest.raises(ValueError, match=r"Trainer\(check_val_every_n_epoch=3\)"):
        _fit(tmp_path, MutationMetrics(task=digits_task(), every_n_epochs=3), model=CountingNet(), callbacks=[stopper])
    assert CountingNet.steps == 0
    # the advised configuration works
    aligned = ModelCheckpoint(dirpath=tmp_path / "b", monitor="compass/basic/accuracy", mode="max", every_n_epochs=2)
    trainer = _fit(tmp_path, MutationMetrics(task=digits_task(), every_n_epochs=2), epochs=4, callbacks=[aligned])
    logged = [e.value for e in read_events(trainer.logger.log_dir).Scalars("compass/basic/accuracy")]
    assert len(logged) == 2 and aligned.best_model_score.item() == pytest.approx(max(logged))


@pytest.mark.parametrize("stage", ["fit", "test"])
def test_the_model_is_left_as_found(tmp_path, stage):
    bracket = StateBracket()
    monitor = MutationMetrics(task=digits_task(), probe_size=64)
    trainer = make_trainer(tmp_path, bracket.around(monitor), epochs=2)
    if stage == "fit":
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    else:
        trainer.test(train_digits(epochs=1), datamodule=DigitsDataModule(), verbose=False)
    assert bracket.checked == (3 if stage == "fit" else 1) and monitor.error_count == 0
