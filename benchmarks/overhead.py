"""Wall time of ``fit`` on the digits example with and without the monitors, measured side by side.

    python benchmarks/overhead.py              # 5 interleaved rounds of 10-epoch fits
    python benchmarks/overhead.py --repeats 9 --epochs 20

Runs alternate (plain, variant A, variant B, ..., plain, ...) after a warm-up, so drifts in machine
load hit every side alike; the printed figure is the median of the per-round ratios with its range.
Target: median ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch

from compass_lightning import MutationMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import DigitsClassifier, DigitsDataModule, digits_task, monitors  # noqa: E402


def fit_seconds(epochs: int, callbacks: Callable[[], list[pl.Callback]]) -> float:
    """Seconds of one ``trainer.fit`` of the digits example (TensorBoard logging on both sides)."""
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=pl.loggers.TensorBoardLogger(logdir, name="bench"),
            callbacks=callbacks(),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
            deterministic=True,
        )
        data = DigitsDataModule()
        started = time.perf_counter()
        trainer.fit(DigitsClassifier(), datamodule=data)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    variants: dict[str, Callable[[], list[pl.Callback]]] = {
        "MutationMetrics() at its defaults (every epoch)": lambda: [MutationMetrics(task=digits_task())],
        "MutationMetrics(every_n_epochs=5)": lambda: [MutationMetrics(task=digits_task(), every_n_epochs=5)],
        "the digits example's monitors": monitors,
    }
    fit_seconds(1, list)  # warm-up: imports, allocator, thread pools
    for make in variants.values():
        fit_seconds(1, make)
    plain: list[float] = []
    timed: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: plain, A, B, C, plain, A, B, C, ...
        plain.append(fit_seconds(args.epochs, list))
        for name, make in variants.items():
            timed[name].append(fit_seconds(args.epochs, make))

    print(f"digits example, {args.epochs} epochs, {args.repeats} interleaved repeats, CPU threads: {torch.get_num_threads()}")
    print(f"plain fit: median {statistics.median(plain):.2f} s\n")
    print("| callbacks | fit (s, median) | ratio to plain, median | ratio min-max |")
    print("|---|---|---|---|")
    medians = {}
    for name, seconds in timed.items():
        ratios = [m / p for p, m in zip(plain, seconds)]
        medians[name] = statistics.median(ratios)
        print(f"| {name} | {statistics.median(seconds):.2f} | **{medians[name]:.3f}** | {min(ratios):.3f}-{max(ratios):.3f} |")
    print("\ntarget: median ratio <= 1.10")
    return medians


if __name__ == "__main__":
    main()
