"""Under DDP every rank analyses its shard; the logged values equal a single-process run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EVERY_MODULE, assert_monitor_ran

from compass_lightning.reporting.history import read_history

HELPER = Path(__file__).with_name("ddp_run.py")


def _run(devices: int, logdir: Path, which: str, timeout: float = 240) -> tuple[list[dict], str]:
    """The history the helper wrote and its standard output; a hang fails the test after ``timeout``
    seconds, every process of the run killed (the second rank is a child of the first)."""
    process = subprocess.Popen([sys.executable, str(HELPER), str(devices), str(logdir), which], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the {devices}-process run of {which!r} did not finish in {timeout} s (a rank waits on a collective?)")
    assert process.returncode == 0, err[-3000:]
    return read_history(logdir / "run" / "version_0"), out


def _validate(devices: int, logdir: Path, which: str = "mutation") -> list[dict]:
    records, _ = _run(devices, logdir, which)
    return records


def test_two_processes_log_what_one_process_logs_and_write_files_once(tmp_path):
    (single,) = _validate(1, tmp_path / "single")
    (ddp,) = _validate(2, tmp_path / "ddp")  # one history line: written by rank 0 only
    assert_monitor_ran([single, ddp], "compass/basic/accuracy", "compass/mutation/*/accuracy")
    assert single["metrics"].keys() == ddp["metrics"].keys()
    for tag, value in single["metrics"].items():
        assert ddp["metrics"][tag] == pytest.approx(value, abs=1e-6), tag
    images = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*.png"))
    assert images == [
        "run/version_0/compass_images/compass/basic/confusion_matrix/step_0000000.png",
        "run/version_0/compass_images/compass/mutation/examples/step_0000000.png",
    ]


@pytest.mark.parametrize("which", ["compass", "text"])  # the digits CNN, and the TextCNN on token ids
def test_every_module_under_two_processes_logs_what_one_process_logs(tmp_path, which):
    (single,) = _validate(1, tmp_path / "single", which)
    (ddp,) = _validate(2, tmp_path / "ddp", which)
    assert_monitor_ran([single, ddp], *EVERY_MODULE)
    assert single["metrics"].keys() == ddp["metrics"].keys()
    modules = {tag.split("/")[1] for tag in single["metrics"]}
    assert {"basic", "mutation", "robustness", "interpretability", "neurons", "pruning", "score"} <= modules
    for tag, value in single["metrics"].items():
        if tag.startswith("compass/passes/"):
            continue  # each process counts its own passes
        assert ddp["metrics"][tag] == pytest.approx(value, abs=1e-6, nan_ok=True), tag
    for name in ("pruning_report.csv", "compass_history.jsonl"):
        assert len(list((tmp_path / "ddp").rglob(name))) == 1, name
    reports = [(p / "pruning_report.csv").read_text().splitlines() for p in (tmp_path / "single" / "run" / "version_0", tmp_path / "ddp" / "run" / "version_0")]
    assert reports[0] == reports[1] and len(reports[0]) == 1 + 1 + 2 * 2  # header, unpruned, 2 methods x (0.2, 0.4)
    single_images = sorted(p.relative_to(tmp_path / "single").as_posix() for p in (tmp_path / "single").rglob("*.png"))
    ddp_images = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*.png"))
    assert ddp_images == single_images and ddp_images


def test_an_analysis_failing_on_one_process_fails_on_both_without_hanging(tmp_path):
    (record,), out = _run(2, tmp_path / "ddp", "fail_on_rank_1", timeout=180)
    lines = out.splitlines()
    assert sorted(line for line in lines if " errors " in line) == ["rank 0 errors 1", "rank 1 errors 1"]
    assert record["metrics"]["compass/errors"] == 1
    # each rank names the cause: its own failure, or the agreement that another rank failed (without
    # the agreement rank 0 would wait in the gather, or fail there on a mismatched collective)
    warnings = {rank: [line for line in lines if line.startswith(f"rank {rank} warning")] for rank in (0, 1)}
    assert len(warnings[1]) == 1 and "injected failure on rank 1" in warnings[1][0], warnings
    assert len(warnings[0]) == 1 and "the same analysis failed on another process" in warnings[0][0], warnings


def test_ddp_spawn_with_hundreds_of_scalars_is_warned_about_before_training(tmp_path):
    import lightning.pytorch as pl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from digits import DigitsClassifier, digits_task

    from compass_lightning import Compass, CompassWarning
    from compass_lightning.callbacks import _watchers

    trainer = pl.Trainer(strategy="ddp_spawn", devices=2, accelerator="cpu", callbacks=[Compass(task=digits_task())],
                         logger=False, default_root_dir=tmp_path)
    trainer.callbacks[0].check_model(DigitsClassifier())
    _watchers._spawn_warned = False
    with pytest.warns(CompassWarning, match=r"log \d+ scalars, and strategy='ddp_spawn' .* Use strategy='ddp'"):
        _watchers.warn_about_spawn(trainer, set(trainer.callbacks[0].expected_tags()))
