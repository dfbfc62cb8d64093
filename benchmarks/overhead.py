"""Wall time of ``fit`` with and without the monitors, measured side by side, and the passes the
shared Compass saves over the same modules as separate callbacks.

    python benchmarks/overhead.py                          # digits, 5 interleaved rounds of 10-epoch fits
    python benchmarks/overhead.py --example cifar_like     # the ResNet-18 example (slow without a GPU)
    python benchmarks/overhead.py --repeats 9 --epochs 20

Runs alternate (plain, variant A, variant B, ..., plain, ...) after a warm-up, so drifts in machine
load hit every side alike; the printed figure is the median of the per-round ratios with its range.
Targets: ``Compass()`` at its defaults <= 1.15x plain fit on digits, <= 1.10x on the ResNet-18 example.
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

import compass_lightning as cl
from compass_lightning.passes import PassCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import cifar_like  # noqa: E402
import digits  # noqa: E402

EXAMPLES = {
    "digits": (digits.DigitsClassifier, digits.DigitsDataModule, digits.digits_task),
    "cifar_like": (
        lambda: cifar_like.ResNetClassifier(),
        lambda: cifar_like.SyntheticCifarDataModule(train_size=2048, val_size=512),
        lambda: cl.Classification(mean=cifar_like.MEAN, std=cifar_like.STD),
    ),
}


def fit_seconds(example: str, epochs: int, callbacks: Callable[[], list[pl.Callback]]) -> float:
    """Seconds of one ``trainer.fit`` of the example (TensorBoard logging on both sides)."""
    model, data, _ = EXAMPLES[example]
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
            deterministic=example == "digits",
        )
        started = time.perf_counter()
        trainer.fit(model(), datamodule=data())
        return time.perf_counter() - started


def pass_saving(example: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Forward and backward sample-passes of one ``trainer.validate`` with the Compass' per-epoch
    modules as separate callbacks, and with ``Compass()`` (the validation loop's own passes included)."""
    model_cls, data, task = EXAMPLES[example]
    model = model_cls()
    separate = [cl.MutationMetrics(task=task(), probe_size=256), cl.AttackSuccessRate(task=task()),
                cl.AttributionScores(task=task()), cl.NeuronAnalysis(task=task())]
    counts = []
    for callbacks in (separate, [cl.Compass(task=task(), pruning=False)]):
        trainer = pl.Trainer(logger=False, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False)
        with PassCounter(model) as passes:
            trainer.validate(model, datamodule=data(), verbose=False)
        counts.append((passes.forward, passes.backward))
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", choices=sorted(EXAMPLES), default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-passes", action="store_true", help="skip the pass-count comparison")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    task = EXAMPLES[args.example][2]

    variants: dict[str, Callable[[], list[pl.Callback]]] = {
        "Compass() at its defaults": lambda: [cl.Compass(task=task())],
        "MutationMetrics() at its defaults (every epoch)": lambda: [cl.MutationMetrics(task=task())],
        "MutationMetrics(every_n_epochs=5)": lambda: [cl.MutationMetrics(task=task(), every_n_epochs=5)],
    }
    if args.example == "digits":
        variants["the digits example's Compass"] = digits.monitors
    fit_seconds(args.example, 1, list)  # warm-up: imports, allocator, thread pools
    for make in variants.values():
        fit_seconds(args.example, 1, make)
    plain: list[float] = []
    timed: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: plain, A, B, C, plain, A, B, C, ...
        plain.append(fit_seconds(args.example, args.epochs, list))
        for name, make in variants.items():
            timed[name].append(fit_seconds(args.example, args.epochs, make))

    print(f"{args.example} example, {args.epochs} epochs, {args.repeats} interleaved repeats, "
          f"CPU threads: {torch.get_num_threads()}, CUDA: {torch.cuda.is_available()}")
    print(f"plain fit: median {statistics.median(plain):.2f} s\n")
    print("| callbacks | fit (s, median) | ratio to plain, median | ratio min-max |")
    print("|---|---|---|---|")
    medians = {}
    for name, seconds in timed.items():
        ratios = [m / p for p, m in zip(plain, seconds)]
        medians[name] = statistics.median(ratios)
        print(f"| {name} | {statistics.median(seconds):.2f} | **{medians[name]:.3f}** | {min(ratios):.3f}-{max(ratios):.3f} |")
    print(f"\ntarget for Compass(): median ratio <= {1.15 if args.example == 'digits' else 1.10}")
    if not args.no_passes:
        (f_sep, b_sep), (f_com, b_com) = pass_saving(args.example)
        print(f"\nsample-passes of one validate, separate callbacks vs Compass(): forward {f_sep} vs {f_com} "
              f"({f_com / f_sep:.2f}x), backward {b_sep} vs {b_com} ({b_com / max(b_sep, 1):.2f}x)")
    return medians


if __name__ == "__main__":
    main()
