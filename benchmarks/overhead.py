"""Wall time of ``fit`` with and without the monitors, measured side by side, and the passes the
shared Compass saves over the same modules as separate callbacks.

    python benchmarks/overhead.py                          # digits, 5 interleaved rounds of 10-epoch fits
    python benchmarks/overhead.py --example cifar_like     # the ResNet-18 example (slow without a GPU)
    python benchmarks/overhead.py --repeats 9 --epochs 20
    python benchmarks/overhead.py --budget                 # the time budget: before/after, training and end of fit
    python benchmarks/overhead.py --budget --example cifar_like --epochs 3 --repeats 1 [--full-size]

Runs alternate (plain, callback A, plain, callback B, ...) after a warm-up, so drifts in machine
load hit every side alike; the printed figure is the median of the per-round ratios with its range.
Every callback is timed at its defaults, and ``Compass()`` too. Targets: ``Compass()`` at its
defaults <= 1.15x plain fit on digits, <= 1.10x on the ResNet-18 example.

``--budget`` times, in the same interleaved rounds, a plain fit, ``Compass(budget=None)`` (every
module on its own schedule: the behaviour before the budget, images at every evaluation) and
``Compass()`` (its default budget of 0.1), and splits the latter into training (target 1.12x) and
the end-of-fit evaluation, which the budget's ``compass/budget/final_seconds`` measures; overall
target 1.25x on the ResNet-18 example. It fails if a module did not report during training.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch

import compass_lightning as cl
from compass_lightning.engine.passes import PassCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_like  # noqa: E402
import digits  # noqa: E402
from common import Row, arguments, interleaved, machine, ratios_of, seconds_of, table  # noqa: E402

EXAMPLES = {
    "digits": (digits.DigitsClassifier, digits.DigitsDataModule, digits.digits_task),
    "cifar_like": (
        lambda: cifar_like.ResNetClassifier(),
        lambda: cifar_like.SyntheticCifarDataModule(**CIFAR_SIZE),
        lambda: cl.Classification(mean=cifar_like.MEAN, std=cifar_like.STD),
    ),
}


TARGETS = {"digits": 1.15, "cifar_like": 1.10}
#: The ResNet-18 example's data in these benchmarks (``--full-size``: the example's own 10,000/2,000).
CIFAR_SIZE = {"train_size": 2048, "val_size": 512}
CALLBACKS = ("MutationMetrics", "AttackSuccessRate", "AttributionScores", "NeuronAnalysis", "PruningAnalysis", "Compass")


def fit(example: str, epochs: int, callbacks: Callable[[], list[pl.Callback]], device: torch.device) -> Callable[[], None]:
    """One ``trainer.fit`` of the example (TensorBoard logging on both sides), as a function to time."""
    model, data, _ = EXAMPLES[example]

    def run() -> None:
        pl.seed_everything(0, verbose=False)
        with tempfile.TemporaryDirectory() as logdir:
            trainer = pl.Trainer(
                max_epochs=epochs,
                logger=pl.loggers.TensorBoardLogger(logdir, name="bench"),
                callbacks=callbacks(),
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                deterministic=example == "digits",
            )
            trainer.fit(model(), datamodule=data())

    return run


def pass_saving(example: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Forward and backward sample-passes of one ``trainer.validate`` with the Compass' per-epoch
    modules as separate callbacks, and with ``Compass()`` (the validation loop's own passes included)."""
    model_cls, data, task = EXAMPLES[example]
    model = model_cls()
    separate = [cl.MutationMetrics(task=task(), probe_size=256), cl.AttackSuccessRate(task=task()),
                cl.AttributionScores(task=task()), cl.NeuronAnalysis(task=task())]
    counts = []
    for callbacks in (separate, [cl.Compass(task=task(), pruning=False)]):
        with tempfile.TemporaryDirectory() as root:  # without a logger the history goes under the root dir
            trainer = pl.Trainer(logger=False, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                                 default_root_dir=root)
            with PassCounter(model) as passes:
                trainer.validate(model, datamodule=data(), verbose=False)
        counts.append((passes.forward, passes.backward))
    return counts[0], counts[1]


def rows(example: str, device: torch.device, repeats: int, *, epochs: int = 10, callbacks: tuple[str, ...] = CALLBACKS,
         passes: bool = True) -> list[Row]:
    """``fit`` with each callback at its defaults against plain ``fit``, interleaved; and the Compass' pass saving."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    task = EXAMPLES[example][2]
    sides = {name: (lambda name=name: [getattr(cl, name)(task=task())]) for name in callbacks}
    plain = fit(example, epochs, list, device)
    pairs = {name: (fit(example, epochs, side, device), plain) for name, side in sides.items()}
    # warm-up, both sides alike: a one-epoch fit of each (imports, allocator and thread pools, every
    # callback's first-use costs such as Captum's and matplotlib's imports), then the timed rounds
    for side in (list, *sides.values()):
        fit(example, 1, side, device)()
    ratios = interleaved(pairs, repeats, device, warmup=0)
    result = [Row(f"fit overhead ({example}, {epochs} epochs)", f"{name}() at its defaults / plain fit", ratios[name],
                  TARGETS[example] if name == "Compass" else None) for name in callbacks]
    if passes:
        (f_sep, b_sep), (f_com, b_com) = pass_saving(example)
        result.append(Row(f"passes ({example})", f"sample-passes of one evaluation, Compass() / separate callbacks: "
                          f"forward {f_com} / {f_sep}", [f_com / f_sep], 1.0))
        result.append(Row(f"passes ({example})", f"the same, backward {b_com} / {b_sep}", [b_com / max(b_sep, 1)], 1.0))
    return result


def budget_rows(example: str, device: torch.device, repeats: int, *, epochs: int) -> list[Row]:
    """Plain fit, ``Compass(budget=None)`` and ``Compass()`` interleaved: the budget's training share
    and its end-of-fit evaluation apart."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    task = EXAMPLES[example][2]
    finals: list[float] = []
    compasses: list[cl.Compass] = []

    def budgeted() -> list[pl.Callback]:
        compasses.append(cl.Compass(task=task()))
        return [compasses[-1]]

    cases = {"plain": fit(example, epochs, list, device), "budget": fit(example, epochs, budgeted, device)}
    if example == "digits":  # on the ResNet-18 example "before" takes ten times a fit (measured once: 10.6x)
        cases["before"] = fit(example, epochs, lambda: [cl.Compass(task=task(), budget=None, images_every_n=1)], device)
    if example == "digits":  # warm-up: first-use costs (imports, matplotlib), ~2 s, on both sides;
        for side in (list, budgeted):  # on the ResNet-18 example they are ~1 % of a fit, not worth two more
            fit(example, 1, side, device)()
    compasses.clear()
    times = seconds_of(cases, repeats, device, warmup=0)
    for compass in compasses:
        finals.append(compass.schedule.budget.final_spent)
        reported = {name for record in compass.history if "compass/budget/final_seconds" not in record["metrics"]
                    for name in compass.modules if f"compass/budget/probe_size/{name}" in record["metrics"]}
        missing = set(compass.modules) - reported - {"pruning"}  # pruning: at the end of fit by default
        if missing:
            raise SystemExit(f"modules that did not report during training: {sorted(missing)}")
    plain = times["plain"]
    budget, final = compasses[-1].schedule.budget, compasses[-1].history[-1]["metrics"]
    print("last budgeted fit: module runs", budget.runs, "| seconds per probe sample",
          {n: round(r, 4) for n, r in budget.per_sample.items()}, "| end-of-fit probe sizes",
          {k.rsplit("/", 1)[1]: int(v) for k, v in final.items() if "/probe_size/" in k}, "\n")
    training = [(b - f) / p for b, f, p in zip(times["budget"], finals, plain)]
    area = f"budget ({example}, {epochs} epochs)"
    before = [Row(area, "Compass(budget=None, images_every_n=1) / plain fit (before)", ratios_of(times, "before", "plain"))
              ] if "before" in times else []
    return [
        *before,
        Row(area, "Compass() (budget=0.1) during training / plain fit", training, 1.12),
        Row(area, "Compass() end-of-fit evaluation / plain fit", [f / p for f, p in zip(finals, plain)]),
        Row(area, "Compass() overall, end of fit included / plain fit", ratios_of(times, "budget", "plain"),
            1.25 if example == "cifar_like" else None),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=5)
    parser.add_argument("--example", choices=sorted(EXAMPLES), default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", nargs="*", choices=CALLBACKS, default=list(CALLBACKS), help="callbacks to time")
    parser.add_argument("--no-passes", action="store_true", help="skip the pass-count comparison")
    parser.add_argument("--budget", action="store_true", help="the time budget's rows instead")
    parser.add_argument("--full-size", action="store_true", help="the ResNet-18 example at its default data size")
    args = parser.parse_args(argv)
    if args.full_size:
        CIFAR_SIZE.clear()
    device = torch.device(args.device)
    print(f"{machine(device)}; {args.example} example, {args.epochs} epochs, {args.repeats} interleaved repeats\n")
    if args.budget:
        print(table(budget_rows(args.example, device, 2 if args.quick else args.repeats, epochs=args.epochs)))
        return
    print(table(rows(args.example, device, 2 if args.quick else args.repeats, epochs=args.epochs,
                     callbacks=tuple(args.only), passes=not args.no_passes)))


if __name__ == "__main__":
    main()
