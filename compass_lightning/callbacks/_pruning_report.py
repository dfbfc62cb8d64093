"""``pruning_report.csv``: every pruned copy ``PruningAnalysis`` evaluated, one row each, appended
per analysis so a run's file holds every epoch that was analysed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compass_lightning.pruning import IMPORTANCES

REPORT_FILE = "pruning_report.csv"


def write_report(directory: str, rows: list[dict[str, Any]], *, metrics: Sequence[str], extra: Sequence[str],
                 epoch: int, global_step: int, stage: str) -> Path:
    """Append ``rows`` (each with ``method``, ``rate`` and values) to ``directory``/``pruning_report.csv``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_report(d, [{"method": "magnitude", "rate": 0.5, "accuracy": 0.9}], metrics=["accuracy"],
        ...                         extra=[], epoch=3, global_step=30, stage="fit")
        ...     path.read_text().splitlines()[1]
        '3,30,fit,magnitude,0.5,False,,,0.9,'
    """
    path = Path(directory) / REPORT_FILE
    fields = ["epoch", "global_step", "stage", "method", "rate", "changes_weights", "sparsity", "sparsity_all", *metrics,
              "accuracy_drop", *extra]
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            values = {k: float(v) for k, v in row.items() if k != "method"}
            writer.writerow({
                "epoch": epoch, "global_step": global_step, "stage": stage, "method": row["method"],
                "changes_weights": row["method"] in IMPORTANCES and IMPORTANCES[row["method"]].changes_weights,
                **{k: f"{v:.6g}" for k, v in values.items()},
            })
    return path
