"""The reporter's history file: plain JSON, restored records written once, NaN as null."""

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import DigitsClassifier, DigitsDataModule, read_events

from compass_lightning.engine.registry import Registry, UnknownNameError
from compass_lightning.reporting.history import HISTORY_FILE, history_record, read_history
from compass_lightning.reporting.reporter import Reporter


def _record(epoch, value=0.5, stage="fit"):
    return history_record(epoch=epoch, global_step=10 * epoch, callback="X", key="X{}", stage=stage, metrics={"m": value})


def test_history_lines_are_strict_json_with_non_finite_values_as_null(tmp_path):
    reporter = Reporter(pl.Trainer(logger=False, default_root_dir=tmp_path))
    reporter.write_history("X{}", [_record(0, float("nan"))])
    line = (tmp_path / HISTORY_FILE).read_text().strip()
    assert json.loads(line)["metrics"] == {"m": None} and "NaN" not in line
    assert read_history(tmp_path)[0]["epoch"] == 0


def test_restored_records_are_written_once_then_only_new_ones(tmp_path):
    history = [_record(0), _record(1)]  # as restored from a checkpoint
    reporter = Reporter(pl.Trainer(logger=False, default_root_dir=tmp_path))
    history.append(_record(2))
    reporter.write_history("X{}", history)
    history.append(_record(3))
    reporter.write_history("X{}", history)
    assert [r["epoch"] for r in read_history(tmp_path)] == [0, 1, 2, 3]
    # a later run logging into the same directory does not duplicate what is already there
    again = Reporter(pl.Trainer(logger=False, default_root_dir=tmp_path))
    again.write_history("X{}", [*history, _record(4)])
    assert [r["epoch"] for r in read_history(tmp_path)] == [0, 1, 2, 3, 4]


def test_registry_lookup_errors_name_the_argument_and_the_choices():
    registry = Registry("colour")
    registry.register("red")(1)
    with pytest.raises(UnknownNameError, match="palette: unknown colour 'blue'; choose from: red"):
        registry.lookup("blue", "palette")
    with pytest.raises(KeyError):
        registry["blue"]
    with pytest.raises(ValueError, match="lower case and unique"):
        registry.register("red")


class _EndOfFitLogger(pl.Callback):
    """Logs where pl_module.log is forbidden (on_train_end), as the pruning analysis will."""

    def setup(self, trainer, pl_module, stage):
        self.reporter = Reporter(trainer)

    def on_train_end(self, trainer, pl_module):
        self.reporter.log_scalars(trainer, {"compass/test/at_end": 0.25})


def test_scalars_outside_epoch_end_hooks_go_to_every_logger(tmp_path):
    loggers = [pl.loggers.CSVLogger(tmp_path, name="csv"), pl.loggers.TensorBoardLogger(tmp_path, name="tb")]
    trainer = pl.Trainer(
        max_epochs=1, logger=loggers, callbacks=[_EndOfFitLogger()], enable_progress_bar=False,
        enable_checkpointing=False, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    with open(Path(loggers[0].log_dir) / "metrics.csv") as stream:
        assert [float(r["compass/test/at_end"]) for r in csv.DictReader(stream) if r.get("compass/test/at_end")] == [0.25]
    (event,) = read_events(loggers[1].log_dir).Scalars("compass/test/at_end")
    assert event.value == 0.25 and event.step == trainer.global_step


def test_a_line_cut_short_never_fuses_with_the_next_record_and_is_skipped(tmp_path, capsys):
    from compass_lightning.cli import main

    reporter = Reporter(pl.Trainer(logger=False, default_root_dir=tmp_path))
    history = [_record(0)]
    reporter.write_history("X{}", history)
    with (tmp_path / HISTORY_FILE).open("a") as stream:  # a write that failed midway (disk full, a kill)
        stream.write(json.dumps(_record(1))[:25])
    history.append(_record(2))
    reporter.write_history("X{}", history)
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["epoch"] == 2  # the next record starts on its own line
    assert [r["epoch"] for r in read_history(tmp_path)] == [0, 2]
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "out")]) == 0  # was exit 2: the whole file refused
    assert "1 damaged lines skipped" in capsys.readouterr().out


class _NoDirectoryLogger(pl.loggers.Logger):
    """A logger with neither save_dir nor log_dir (a metrics service, say)."""

    name, version = "service", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


@pytest.mark.parametrize("case", ["fast_dev_run", "logger_without_save_dir"])
def test_every_file_goes_under_the_run_directory_never_the_working_directory(tmp_path, monkeypatch, case):
    from compass_lightning import AttackSuccessRate
    from conftest import digits_task

    working, root = tmp_path / "cwd", tmp_path / "root"
    working.mkdir()
    monkeypatch.chdir(working)
    monitor = AttackSuccessRate(attacks=["fgsm"], probe_size=8, image_count=2, task=digits_task())
    options = {"fast_dev_run": True} if case == "fast_dev_run" else {"logger": _NoDirectoryLogger(), "max_epochs": 1}
    trainer = pl.Trainer(default_root_dir=root, callbacks=[monitor], accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, **options)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert list(working.iterdir()) == []  # was compass_images/ here, and no history anywhere
    assert [r["epoch"] for r in read_history(root)] == [0]
    assert list((root / "compass_images").rglob("*.png"))
