"""The run's history: every evaluation as one JSON object per line of ``compass_history.jsonl``.

A record is ``{"epoch", "global_step", "callback", "key", "stage", "metrics"}``; ``metrics`` maps
tags to floats, with ``null`` for NaN and infinities (strict JSON has neither). The history is
plain JSON, so reading it unpickles nothing. :class:`~compass_lightning.reporting.reporter.Reporter`
appends the records, the summaries read them back.

Crash safety: each append is one ``write`` of complete lines (:func:`append_lines`), and starts on a
new line when the file does not end with one (a write cut short by a full disk or a kill left a
partial line), so a damaged line never fuses with the next record. The reader skips what is not a
complete record — a partial or invalid line, bytes that are not UTF-8, a number JSON cannot hold —
and says which lines it skipped (:func:`read_records`).

Example:
    >>> import json, tempfile
    >>> record = history_record(epoch=0, global_step=5, callback="MutationMetrics", key="k", stage="fit",
    ...                         metrics={"compass/basic/accuracy": 0.5, "compass/basic/loss": float("nan")})
    >>> record["metrics"]
    {'compass/basic/accuracy': 0.5, 'compass/basic/loss': None}
    >>> directory = tempfile.mkdtemp()
    >>> with open(f"{directory}/{HISTORY_FILE}", "w") as stream:
    ...     _ = stream.write(json.dumps(record))
    >>> read_history(directory)[0]["global_step"]
    5
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HISTORY_FILE = "compass_history.jsonl"
#: Token pictures as text, one ``{"epoch", "global_step", "tag", "rows"}`` per line, each row
#: ``{"label": str, "tokens": [str], "scores": [float]}`` (see :func:`read_texts`).
TEXTS_FILE = "compass_texts.jsonl"


def _plain(value: float) -> float | None:
    # Strict JSON has no NaN or infinity.
    return value if math.isfinite(value) else None


def history_record(
    *, epoch: int, global_step: int, callback: str, key: str, stage: str, metrics: Mapping[str, float]
) -> dict[str, Any]:
    """One line of ``compass_history.jsonl``."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "callback": callback,
        "key": key,
        "stage": stage,
        "metrics": {name: _plain(float(value)) for name, value in metrics.items()},
    }


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append ``lines`` to ``path`` as one write of complete lines, after a newline if the file's last
    line was left unfinished (see the module docstring).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "h.jsonl"
        >>> _ = path.write_text('{"epoch": 0, "metr')      # a write cut short
        >>> append_lines(path, ['{"a": 1}'])
        >>> path.read_text().splitlines()
        ['{"epoch": 0, "metr', '{"a": 1}']
    """
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as stream:  # "a": every write goes to the end; "+": the last byte can be read
        if stream.seek(0, os.SEEK_END) > 0:
            stream.seek(-1, os.SEEK_END)
            if stream.read(1) != b"\n":
                data = b"\n" + data
        stream.write(data)
        stream.flush()


def _number(value: Any) -> float | None:
    # A metric is a number or null; NaN, infinities and numbers beyond a float are undefined (None).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _record(value: Any) -> dict[str, Any] | None:
    """``value`` as a history record (metrics as floats or ``None``), or ``None`` if it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("metrics"), dict):
        return None
    if not all(isinstance(value.get(k), int) and not isinstance(value.get(k), bool) for k in ("epoch", "global_step")):
        return None
    if not isinstance(value.get("stage", "fit"), str) or not all(isinstance(k, str) for k in value["metrics"]):
        return None
    try:
        metrics = {name: None if v is None else _number(v) for name, v in value["metrics"].items()}
    except ValueError:
        return None
    return {**value, "metrics": metrics}


def read_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[int]]:
    r"""``(records, skipped)``: the complete records of a ``compass_history.jsonl`` file (or of the one
    inside a log directory), and the numbers of the lines that are not records (empty lines aside).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / HISTORY_FILE
        >>> good = '{"epoch": 0, "global_step": 3, "stage": "fit", "metrics": {"compass/x": 1e999}}'
        >>> _ = path.write_bytes(good.encode() + b'\n{"epoch": 1, "glo\n\xff\n')
        >>> records, skipped = read_records(path)
        >>> records[0]["metrics"], skipped
        ({'compass/x': None}, [2, 3])
    """
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    records, skipped = [], []
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = _record(json.loads(line.decode("utf-8")))
            except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                record = None
            if record is None:
                skipped.append(number)
            else:
                records.append(record)
    return records, skipped


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete records of a ``compass_history.jsonl`` file (or of the one inside a log
    directory); lines that are not records are skipped (:func:`read_records` names them)."""
    return read_records(path)[0]


def _row(row: Any) -> dict[str, Any] | None:
    """A well-formed token row, or ``None`` (a hand-edited or truncated file must not break a report)."""
    if not isinstance(row, dict) or not isinstance(row.get("label"), str):
        return None
    tokens, scores = row.get("tokens"), row.get("scores")
    if not isinstance(tokens, list) or not isinstance(scores, list) or len(tokens) != len(scores):
        return None
    if not all(isinstance(t, str) for t in tokens) or not all(isinstance(v, (int, float)) or v is None for v in scores):
        return None
    return {"label": row["label"], "tokens": tokens, "scores": [float(v) if v is not None else 0.0 for v in scores]}


def read_texts(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest record of every tag in a ``compass_texts.jsonl`` file (or the one inside a log
    directory): ``{tag: {"epoch", "global_step", "rows"}}``; empty when there is none. Lines that are
    not well-formed records are skipped.

    Example:
        >>> import json, tempfile
        >>> directory = tempfile.mkdtemp()
        >>> rows = [{"label": "#0 saliency", "tokens": ["a", "film"], "scores": [0.2, -1.0]}]
        >>> with open(f"{directory}/{TEXTS_FILE}", "w") as stream:
        ...     _ = stream.write(json.dumps({"epoch": 1, "global_step": 8, "tag": "t", "rows": rows}) + "\\nnot json\\n")
        >>> read_texts(directory)["t"]["rows"][0]["tokens"]
        ['a', 'film']
    """
    path = Path(path)
    if path.is_dir():
        path = path / TEXTS_FILE
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return latest
    with path.open("rb") as stream:  # bytes: a line that is not UTF-8 is skipped, not fatal
        for line in stream:
            try:
                record = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):
                continue
            if not isinstance(record, dict) or not isinstance(record.get("tag"), str) or not isinstance(record.get("rows"), list):
                continue
            rows = [r for r in map(_row, record["rows"]) if r is not None]
            latest[record["tag"]] = {"epoch": record.get("epoch"), "global_step": record.get("global_step"), "rows": rows}
    return latest
