"""Under DDP every rank analyses its shard; the logged values equal a single-process run."""

import subprocess
import sys
from pathlib import Path

import pytest

from compass_lightning.report import read_history

HELPER = Path(__file__).with_name("ddp_run.py")


def _validate(devices: int, logdir: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(HELPER), str(devices), str(logdir)], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return read_history(logdir / "run" / "version_0")


def test_two_processes_log_what_one_process_logs_and_write_files_once(tmp_path):
    (single,) = _validate(1, tmp_path / "single")
    (ddp,) = _validate(2, tmp_path / "ddp")  # one history line: written by rank 0 only
    assert single["metrics"].keys() == ddp["metrics"].keys()
    for tag, value in single["metrics"].items():
        assert ddp["metrics"][tag] == pytest.approx(value, abs=1e-6), tag
    images = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*.png"))
    assert images == [
        "run/version_0/compass_images/compass/basic/confusion_matrix/step_0000000.png",
        "run/version_0/compass_images/compass/mutation/examples/step_0000000.png",
    ]
