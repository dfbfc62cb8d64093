"""``compass-lightning report``/``compare`` on crafted histories (issue 17 items 4 and 6): they render
or exit 2 with the reason, never a traceback; every text is escaped; damaged lines are skipped and
counted; and the time and the page stay linear and bounded in the number of evaluations."""

from __future__ import annotations

import json
import re
import time

import pytest

from compass_lightning.cli import main
from compass_lightning.reporting.history import HISTORY_FILE, history_record, read_records

TAG = "compass/robustness/fgsm/asr"


def _line(epoch: int, value: object = 0.5, *, step: int | None = None, tag: str = TAG) -> str:
    record = history_record(epoch=epoch, global_step=10 * epoch if step is None else step, callback="X", key="X{}",
                            stage="fit", metrics={tag: 0.5, "compass/basic/accuracy": 0.9})
    record["metrics"][tag] = value
    return json.dumps(record)


def _run(tmp_path, name: str, content: str | bytes):
    directory = tmp_path / name
    directory.mkdir(parents=True)
    path = directory / HISTORY_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return directory


def _report(directory, capsys):
    status = main(["report", str(directory), "--output", str(directory / "out")])
    out = capsys.readouterr()
    page = (directory / "out" / "compass_report.html").read_text() if status == 0 else ""
    return status, page, out.out + out.err


def test_script_injection_in_tags_and_values_is_escaped(tmp_path, capsys):
    evil = "compass/robustness/<script>alert(1)</script>/asr"
    directory = _run(tmp_path, "run", "\n".join([_line(0, tag=evil), _line(1, tag=evil)]))
    status, page, _ = _report(directory, capsys)
    assert status == 0 and "<script>" not in page and "&lt;script&gt;" in page


def test_a_dollar_in_the_run_directory_and_labels_renders(tmp_path, capsys):
    first = _run(tmp_path, "price$x$y", "\n".join(_line(e) for e in range(3)))
    second = _run(tmp_path, "$HOME$", "\n".join(_line(e, 0.2) for e in range(3)))
    status, page, _ = _report(first, capsys)
    assert status == 0 and "price$x$y" in page
    assert main(["compare", str(first), str(second), "--output", str(tmp_path / "cmp")]) == 0
    assert "$HOME$" in (tmp_path / "cmp" / "compass_compare.html").read_text()


@pytest.mark.parametrize(("value", "shown"), [
    ("NaN", ""), ("Infinity", ""), ("-Infinity", ""), ("1e308", "1e+308"), ("-1e308", "-1e+308"), ("1" * 400, ""),
])
def test_extreme_numbers_render(tmp_path, capsys, value, shown):
    lines = [_line(0), _line(1, 0.1).replace("0.1", value, 1), _line(2)]
    assert value in lines[1]
    status, page, _ = _report(_run(tmp_path, "run", "\n".join(lines)), capsys)
    assert status == 0 and (shown in page)


@pytest.mark.parametrize("bad", [
    '{"epoch": 1, "global_step": 10, "stage": "fit", "metrics": {"compass/robustness/fgsm/asr": "high"}}',  # not numeric
    '{"epoch": 1, "global_step": 10, "stage": "fit", "metrics": {"compass/x": ' + "9" * 5000 + "}}",  # 5000 digits
    '{"epoch": 1, "global_step": 10, "stage": "fit", "metr',  # truncated
    "not json at all",
    '[1, 2, 3]',
    '{"epoch": "one", "global_step": 10, "stage": "fit", "metrics": {}}',
], ids=["non_numeric", "huge_integer", "truncated", "invalid", "not_an_object", "epoch_not_a_number"])
def test_damaged_lines_are_skipped_and_counted(tmp_path, capsys, bad):
    status, page, printed = _report(_run(tmp_path, "run", "\n".join([_line(0), bad, _line(2)])), capsys)
    assert status == 0
    assert "1 lines of compass_history.jsonl are not complete records" in page and "lines 2." in page
    assert "1 damaged lines skipped" in printed and "2 evaluations" in printed


def test_non_utf8_bytes_are_skipped(tmp_path, capsys):
    content = (_line(0) + "\n").encode() + b"\xff\xfe\x00garbage\n" + (_line(1) + "\n").encode()
    records, skipped = read_records(_run(tmp_path, "run", content))
    assert [r["epoch"] for r in records] == [0, 1] and skipped == [2]
    status, _, printed = _report(tmp_path / "run", capsys)
    assert status == 0 and "1 damaged lines skipped" in printed


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "holds no compass evaluations"),
    (b"garbage\n\x80\x81\n", r"holds no compass evaluations \(2 lines, none a complete record\)"),
])
def test_a_history_without_records_exits_2_with_the_reason(tmp_path, capsys, content, reason):
    status, _, printed = _report(_run(tmp_path, "run", content), capsys)
    assert status == 2 and re.search(reason, printed) and "Traceback" not in printed


def _timed(tmp_path, name: str, count: int, capsys) -> tuple[float, int]:
    # one epoch evaluated many times (trainer.validate between steps), each with the usual tags
    lines = [_line(0, (i % 7) / 7, step=i) for i in range(count)]
    directory = _run(tmp_path, name, "\n".join(lines))
    start = time.perf_counter()
    status, page, _ = _report(directory, capsys)
    assert status == 0
    return time.perf_counter() - start, len(page)


def test_reports_of_many_evaluations_stay_linear_and_bounded(tmp_path, capsys):
    _timed(tmp_path, "warm", 80, capsys)  # imports and matplotlib's first figure out of the measurement
    small_time, small_size = _timed(tmp_path, "small", 80, capsys)
    large_time, large_size = _timed(tmp_path, "large", 1600, capsys)
    assert large_time <= 20 * small_time, (large_time, small_time)  # 20x the evaluations, at most 20x the time
    assert large_size <= 3 * small_size, (large_size, small_size)  # the tables are bounded (MAX_ROWS)
    first = [_line(0, 0.1 * i, step=i) for i in range(1600)]
    runs = [_run(tmp_path, f"cmp{k}", "\n".join(first)) for k in range(2)]
    start = time.perf_counter()
    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cmp")]) == 0
    assert time.perf_counter() - start <= 40 * small_time
