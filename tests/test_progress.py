"""The progress bar shows what an evaluation is doing: a "Compass" line with the module running, under
Lightning's TQDM and Rich bars, and nothing when the bar is disabled."""

from __future__ import annotations

from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from compass_lightning import AttackSuccessRate, Compass


def _compass():
    return Compass(task=digits_task(), probe_size=16, budget=None, mutation={"mutations": ["noise"]},
                   robustness={"attacks": ["fgsm"]}, interpretability=False, neurons=False, pruning=False)


def _watch_the_bar(monitor, modules, seen, read):
    """Make each of ``modules`` record what the bar shows (``read(monitor)``) while it evaluates."""
    for name, module in modules.items():
        evaluate = module.evaluate

        def spying(trainer, evaluation, evaluate=evaluate, name=name):
            seen.append((name, read(trainer, monitor)))
            evaluate(trainer, evaluation)

        module.evaluate = spying


def _tqdm_line(trainer, monitor):
    line = monitor.progress._line
    return None if line is None else (line.desc, line.n, line.total)


def _rich_tasks(trainer, monitor):
    return [task.description for task in trainer.progress_bar_callback.progress.tasks if task.visible]


def test_the_tqdm_bar_shows_the_compass_line_with_the_module_running(tmp_path, capsys):
    compass, seen = _compass(), []
    _watch_the_bar(compass, compass.modules, seen, _tqdm_line)
    trainer = make_trainer(tmp_path, [compass, TQDMProgressBar()], epochs=1, enable_progress_bar=True)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert seen == [("mutation", ("Compass: mutation", 0, 2)), ("robustness", ("Compass: robustness", 1, 2))]
    assert "Compass: robustness" in capsys.readouterr().out


def test_the_rich_bar_shows_the_compass_line_with_the_module_running(tmp_path):
    compass, seen = _compass(), []
    _watch_the_bar(compass, compass.modules, seen, _rich_tasks)
    trainer = make_trainer(tmp_path, [compass, RichProgressBar()], epochs=1, enable_progress_bar=True)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert [name for name, _ in seen] == ["mutation", "robustness"]
    for name, tasks in seen:
        assert f"Compass: {name}" in tasks
    # and the line is gone once the evaluation is over
    assert not any("Compass" in d for d in _rich_tasks(trainer, compass))


def test_a_single_monitor_shows_its_own_line(tmp_path):
    monitor, seen = AttackSuccessRate(attacks=["fgsm"], task=digits_task(), probe_size=16), []
    _watch_the_bar(monitor, {"robustness": monitor}, seen, _tqdm_line)
    trainer = make_trainer(tmp_path, [monitor, TQDMProgressBar()], epochs=1, enable_progress_bar=True)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert seen == [("robustness", ("AttackSuccessRate: robustness", 0, 1))]


def test_nothing_is_printed_with_the_bar_disabled(tmp_path, capsys):
    compass, seen = _compass(), []
    _watch_the_bar(compass, compass.modules, seen, _tqdm_line)
    trainer = make_trainer(tmp_path, [compass], epochs=1, enable_progress_bar=False)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert seen == [("mutation", None), ("robustness", None)]
    captured = capsys.readouterr()
    assert "Compass" not in captured.out and "Compass" not in captured.err
