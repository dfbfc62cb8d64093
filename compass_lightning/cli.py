"""The ``compass-lightning`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from compass_lightning import __version__

DESCRIPTION = """compass_lightning monitors a model's trustworthiness while it trains with PyTorch Lightning.
Add its callbacks to a Trainer (or a LightningCLI preset from callbacks/*.yaml); the results are
logged to TensorBoard and to compass_history.jsonl in the run's log directory."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands are added as they are built)."""
    parser = argparse.ArgumentParser(prog="compass-lightning", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"compass-lightning {__version__}")
    parser.add_subparsers(title="sub-commands", dest="command", metavar="(none yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the version and the sub-commands that exist."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        print(f"compass-lightning {__version__}")
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
