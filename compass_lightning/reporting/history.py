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
