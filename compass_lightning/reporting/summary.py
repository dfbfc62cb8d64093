"""Reports from ``compass_history.jsonl``: per-module tables and charts over epochs, the radar across
epochs or runs, as self-contained HTML and as a text summary; and the TensorBoard custom-scalars
layout that groups the same charts per module.

The history is plain JSON (read with :func:`~compass_lightning.reporting.history.read_records`), so nothing is
unpickled. A hostile or damaged history renders or is refused with the reason
(:class:`HistoryError`), never a traceback: lines that are not records are skipped and counted on
the page, every text is escaped (HTML) or kept out of matplotlib's mathtext (a ``$`` in a path),
numbers beyond a chart's range are left out of the charts, and the page stays bounded — at most
:data:`MAX_ROWS` evaluations and :data:`MAX_COLUMNS` tags per table (evenly spaced, the first and
the latest always kept; every value is in the history file) — so a report of many evaluations
costs time linear in them.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from compass_lightning.reporting.figures import line_chart
from compass_lightning.reporting.radar import AXES, axis_values, radar_chart, radar_scores
from compass_lightning.reporting.history import HISTORY_FILE, read_records, read_texts
from compass_lightning.reporting.tags import CHARTS, best, module_of

#: The most evaluations (rows) and tags (columns) a table of the report shows.
MAX_ROWS, MAX_COLUMNS = 120, 60
#: Values beyond this magnitude are left out of the charts (matplotlib cannot lay out an axis to 1e308).
CHART_LIMIT = 1e30


class HistoryError(ValueError):
    """A log directory without a readable compass history."""


def load_run(log_dir: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """``(records, skipped)`` of ``log_dir/compass_history.jsonl``: its complete records and the
    numbers of the lines that are not records; :class:`HistoryError` with the reason if it has none."""
    directory = Path(log_dir)
    path = directory / HISTORY_FILE
    if not directory.is_dir():
        raise HistoryError(f"{directory} is not a directory")
    if not path.is_file():
        found = sorted(p.parent for p in directory.rglob(HISTORY_FILE))[:5]
        hint = f"; runs below it: {', '.join(map(str, found))}" if found else ""
        raise HistoryError(f"no {HISTORY_FILE} in {directory} (is it a run's log directory?){hint}")
    try:
        records, skipped = read_records(path)
    except OSError as error:
        raise HistoryError(f"{path} cannot be read ({error})") from error
    if not records:
        lines = f" ({len(skipped)} lines, none a complete record)" if skipped else ""
        raise HistoryError(f"{path} holds no compass evaluations{lines}")
    return records, skipped


def merged(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, float]]]:
    """One row per evaluation (the records of several callbacks at the same epoch, step and stage
    merged), in order: ``(label, {tag: value})``, undefined values left out. An epoch evaluated
    more than once (``trainer.validate`` between epochs) is labelled with the step too."""
    rows: dict[tuple[Any, ...], dict[str, float]] = {}
    for record in records:
        key = (record.get("stage"), record.get("epoch"), record.get("global_step"))
        values = rows.setdefault(key, {})
        values.update({k: float(v) for k, v in record["metrics"].items() if v is not None})
    labels, seen = [], set()
    for (stage, epoch, step), values in rows.items():
        label = f"epoch {epoch}" if stage == "fit" else f"{stage} (epoch {epoch})"
        if label in seen:
            label = f"{label}, step {step}"
        base, copy = label, 1
        while label in seen:  # only records that repeat (stage, epoch, step) with other types get here
            copy += 1
            label = f"{base} #{copy}"
        seen.add(label)
        labels.append((label, values))
    return labels


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spaced, the first and the last always among them."""
    if len(items) <= limit:
        return list(items)
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def carried_axes(rows: Sequence[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, float | None]]:
    """The radar axes of every row, each axis carrying its latest value forward (modules that run
    less often, pruning at the end of fit)."""
    latest: dict[str, float | None] = {axis: None for axis in AXES}
    out = {}
    for label, values in rows:
        current = axis_values(values)
        latest = {axis: current[axis] if current[axis] is not None else latest[axis] for axis in AXES}
        out[label] = dict(latest)
    return out


def _png(image: Tensor) -> str:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, float]]], prefix: str = "") -> str:
    shown_rows, shown_columns = _spread(rows, MAX_ROWS), _spread(columns, MAX_COLUMNS)
    head = "".join(f"<th>{html.escape(c[len(prefix):] if c.startswith(prefix) else c)}</th>" for c in shown_columns)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f"<td>{'' if values.get(c) is None else f'{values[c]:.4g}'}</td>" for c in shown_columns)
        + "</tr>"
        for label, values in shown_rows
    )
    note = ""
    if len(shown_rows) < len(rows) or len(shown_columns) < len(columns):
        note = (f"<p>{len(shown_rows)} of {len(rows)} evaluations and {len(shown_columns)} of {len(columns)} tags shown "
                f"(evenly spaced, the first and the latest kept); every value is in {HISTORY_FILE}.</p>")
    return f"{note}<div class=scroll><table><tr><th></th>{head}</tr>{body}</table></div>"


def _chart_value(value: float) -> float:
    return value if math.isfinite(value) and abs(value) <= CHART_LIMIT else math.nan


def _charts(module: str, rows: Sequence[tuple[str, Mapping[str, float]]]) -> list[str]:
    """The module's charts over the evaluations, as ``<img>`` elements (a chart that cannot be drawn
    as a sentence saying why)."""
    epochs = list(range(len(rows)))
    images = []
    for title, regex in CHARTS.get(module, {}).items():
        tags = sorted({t for _, values in rows for t in values if re.match(regex, t)})
        if not tags:
            continue
        series = {t.split("/", 2)[-1]: [_chart_value(values.get(t, math.nan)) for _, values in rows] for t in tags[:12]}
        finite = [v for s in series.values() for v in s if math.isfinite(v)]
        bounded = finite and min(finite) >= 0 and max(finite) <= 1
        try:
            images.append(_png(line_chart(epochs, series, xlabel="evaluation (see the table)", ylabel=title, title=title,
                                          ylim=(0.0, 1.0) if bounded else None)))
        except (ValueError, OverflowError) as error:  # matplotlib's layout of a crafted series
            images.append(f"<p>The chart {html.escape(title)} could not be drawn ({html.escape(str(error))}).</p>")
    return images


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
.scroll{overflow-x:auto;max-width:100%;margin-bottom:1em}img{max-width:48%;margin:4px}
.tokens{margin:6px 0;font-size:13px;line-height:1.9}.token{padding:1px 3px;border-radius:2px}"""


def _token_text(pictures: Mapping[str, Mapping[str, Any]]) -> str:
    """The latest pictures made of text (token heatmaps) as coloured HTML: each row its label, then its
    tokens on backgrounds coloured by score (divided by the row's largest absolute score), as in the
    TensorBoard images."""
    from compass_lightning.reporting.text_figures import shade

    parts = []
    for tag, picture in pictures.items():
        parts.append(f"<h3>{html.escape(tag)} (epoch {html.escape(str(picture.get('epoch')))})</h3>"
                     "<p>red: for the predicted class, blue: against it; the shade is relative to the row's strongest token.</p>")
        for row in picture["rows"]:
            peak = max((abs(v) for v in row["scores"]), default=0.0) or 1.0
            spans = "".join(f'<span class=token style="background:rgb{shade(v / peak)}" title="{v:.3g}">{html.escape(t)}</span> '
                            for t, v in zip(row["tokens"], row["scores"]))
            parts.append(f"<div class=tokens><b>{html.escape(row['label'])}</b><br>{spans}</div>")
    return "".join(parts)


def _skipped_note(skipped: Sequence[int]) -> str:
    """A sentence naming the skipped lines (numbers only: nothing to escape), or ``""``."""
    if not skipped:
        return ""
    shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
    return (f"{len(skipped)} lines of {HISTORY_FILE} are not complete records (a write cut short, an edit) and "
            f"were skipped: lines {shown}.")


def _skipped_text(skipped: Sequence[int]) -> str:
    return f"; {len(skipped)} damaged lines skipped" if skipped else ""


def _page(title: str, sections: Sequence[str]) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def _plain_text(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with matplotlib's mathtext off: a ``$`` in a run's path or a tag is a character."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return function(*args, **kwargs)

    return wrapped


@_plain_text
def run_report(log_dir: str | Path) -> tuple[str, str]:
    """``(html, text)``: the report of one run (tables and charts per module, the radar across epochs)
    and its terminal summary."""
    records, skipped = load_run(log_dir)
    rows = merged(records)
    modules = [m for m in CHARTS if any(module_of(t) == m for _, values in rows for t in values)]
    sections = [f"<p>Log directory: <code>{html.escape(str(Path(log_dir).resolve()))}</code>; "
                f"{len(rows)} evaluations. {_skipped_note(skipped)}</p>"]
    axes = carried_axes(rows)
    if any(v is not None for row in axes.values() for v in row.values()):
        labels = list(axes)
        pick = list(dict.fromkeys([labels[0], *labels[-6:]]))  # first and latest evaluations
        scores = radar_scores(axes)
        sections.append("<h2>Radar</h2>" + _png(radar_chart({k: scores[k] for k in pick}, values=axes, title="best = 5 per axis"))
                        + _table(list(AXES), [(k, {a: v for a, v in axes[k].items() if v is not None}) for k in labels]))
    text = [f"compass report: {Path(log_dir)} ({len(rows)} evaluations)" + _skipped_text(skipped)]
    for module in modules:
        tags = sorted({t for _, values in rows for t in values if module_of(t) == module})
        prefix = f"compass/{module}/"
        sections.append(f"<h2>{html.escape(module)}</h2>" + _table(tags, rows, prefix) + "".join(_charts(module, rows)))
        for title, regex in CHARTS[module].items():
            for tag in [t for t in tags if re.match(regex, t)][:6]:
                values = [v[tag] for _, v in rows if tag in v and math.isfinite(v[tag])]
                if values:
                    text.append(f"  {tag:<58} last {values[-1]:.4g}   min {min(values):.4g}   max {max(values):.4g}")
    pictures = read_texts(log_dir)
    if pictures:
        sections.append("<h2>Token attributions</h2>" + _token_text(pictures))
    return _page("compass_lightning report", sections), "\n".join(text)


@_plain_text
def compare_runs(log_dirs: Sequence[str | Path]) -> tuple[str, str]:
    """``(html, text)``: runs side by side — the radar with one polygon per run (each run's latest
    value of every axis) and each run's best and last value of every charted tag."""
    runs: dict[str, list[tuple[str, dict[str, float]]]] = {}
    skipped: dict[str, list[int]] = {}
    for index, directory in enumerate(log_dirs):
        label = str(directory) if str(directory) not in runs else f"{directory} #{index + 1}"
        records, skipped[label] = load_run(directory)
        runs[label] = merged(records)
    latest = {label: list(carried_axes(rows).values())[-1] for label, rows in runs.items()}
    scores = radar_scores(latest)
    sections = ["".join(f"<p>{html.escape(label)}: {_skipped_note(lines)}</p>" for label, lines in skipped.items() if lines),
                "<h2>Radar (each run's latest values)</h2>", _png(radar_chart(scores, values=latest, title="best run = 5 per axis")),
                _table(list(AXES), [(k, {a: v for a, v in row.items() if v is not None}) for k, row in latest.items()])]
    tags = sorted({t for rows in runs.values() for _, v in rows for t in v
                   if any(re.match(r, t) for charts in CHARTS.values() for r in charts.values())})
    table_rows = []
    for label, rows in runs.items():
        for kind, pick in (("best", max), ("last", None)):
            values = {}
            for tag in tags:
                series = [v[tag] for _, v in rows if tag in v and math.isfinite(v[tag])]
                if series:
                    values[tag] = series[-1] if pick is None else best(tag, series)
            table_rows.append((f"{label} ({kind})", values))
    sections += ["<h2>Best and last values</h2><p>best: the highest value, the lowest where lower is better (loss, ASR, deletion, accuracy drop, ...).</p>",
                 _table(tags, table_rows, "compass/")]
    text = [f"compass compare: {len(runs)} runs" + _skipped_text([n for lines in skipped.values() for n in lines])] + [
        f"  {label:<30} " + "  ".join(f"{a} {v:.3g}" for a, v in row.items() if v is not None)
        for label, row in latest.items()
    ]
    return _page("compass_lightning comparison", sections), "\n".join(text)
