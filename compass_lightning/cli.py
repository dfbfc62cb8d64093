"""The ``compass-lightning`` command: ``report`` one run, ``compare`` several.

    compass-lightning report runs/digits/version_0            # writes compass_report.html there
    compass-lightning compare runs/digits/version_0 runs/digits/version_1 --output .

A missing or unreadable log directory prints the reason and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from compass_lightning import __version__

DESCRIPTION = """compass_lightning monitors a model's trustworthiness while it trains with PyTorch Lightning.
Add its callbacks to a Trainer (or a LightningCLI preset from callbacks/*.yaml); the results are
logged to TensorBoard and to compass_history.jsonl in the run's log directory, which the
sub-commands below turn into reports."""

REPORT_FILE = "compass_report.html"
COMPARE_FILE = "compass_compare.html"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the ``report`` and ``compare`` sub-commands."""
    parser = argparse.ArgumentParser(prog="compass-lightning", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"compass-lightning {__version__}")
    commands = parser.add_subparsers(title="sub-commands", dest="command")
    report = commands.add_parser("report", help="an HTML report and a text summary of one run")
    report.add_argument("log_dir", help="the run's log directory (where compass_history.jsonl is)")
    report.add_argument("--output", help=f"directory for {REPORT_FILE} (default: the log directory)")
    compare = commands.add_parser("compare", help="several runs side by side: radar and best/last values")
    compare.add_argument("log_dirs", nargs="+", help="the runs' log directories")
    compare.add_argument("--output", default=".", help=f"directory for {COMPARE_FILE} (default: the current one)")
    return parser


def _write(directory: Path, name: str, page: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad log directory)."""
    from compass_lightning.reporting.summary import HistoryError, compare_runs, run_report

    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        print(f"compass-lightning {__version__}")
        parser.print_help()
        return 0
    try:
        if arguments.command == "report":
            page, text = run_report(arguments.log_dir)
            path = _write(Path(arguments.output or arguments.log_dir), REPORT_FILE, page)
        else:
            page, text = compare_runs(arguments.log_dirs)
            path = _write(Path(arguments.output), COMPARE_FILE, page)
    except HistoryError as error:
        print(f"compass-lightning {arguments.command}: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"HTML: {path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
