"""The run's history: every evaluation as one JSON object per line of ``compass_history.jsonl``.

A record is ``{"epoch", "global_step", "callback", "key", "stage", "metrics"}``; ``metrics`` maps
tags to floats, with ``null`` for NaN and infinities (strict JSON has neither). The history is
plain JSON, so reading it unpickles nothing. :class:`~compass_lightning.reporting.reporter.Reporter`
appends the records, the summaries read them back.

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
from collections.abc import Mapping
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


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``compass_history.jsonl`` file (or of the one inside a log directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    with path.open(encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


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
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("tag"), str) or not isinstance(record.get("rows"), list):
                continue
            rows = [r for r in map(_row, record["rows"]) if r is not None]
            latest[record["tag"]] = {"epoch": record.get("epoch"), "global_step": record.get("global_step"), "rows": rows}
    return latest
