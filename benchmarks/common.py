"""What every benchmark shares: the model, interleaved timing, and rows of one Markdown table.

A comparison is always measured in one process run, interleaved (A B B A A B ...) after a warm-up, and
reported as the median of the per-round ratios with their min-max, never as one absolute time: the
development machines are shared and their speed drifts, but a drift hits both sides of a round alike.

    >>> rows = [Row("attacks", "fgsm / torchattacks", [0.9, 1.0, 1.1], at_most=1.0)]
    >>> print(table(rows).splitlines()[2])
    | attacks | fgsm / torchattacks | **1.00** | 0.90-1.10 | <= 1.00 | met |
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn


@dataclass
class Row:
    """One comparison: the per-round ratios A / B and, where there is one, the target on their median."""

    area: str
    comparison: str
    ratios: Sequence[float]
    at_most: Optional[float] = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> Optional[bool]:
        return None if self.at_most is None else self.median <= self.at_most

    def markdown(self) -> str:
        target = "" if self.at_most is None else f"<= {self.at_most:.2f}"
        verdict = {None: "", True: "met", False: "**missed**"}[self.met]
        spread = f"{min(self.ratios):.2f}-{max(self.ratios):.2f}"
        note = f" {self.note}" if self.note else ""
        return f"| {self.area} | {self.comparison}{note} | **{self.median:.2f}** | {spread} | {target} | {verdict} |"


def table(rows: Sequence[Row]) -> str:
    """The rows as one Markdown table."""
    lines = ["| area | comparison (A / B) | median ratio | min-max | target | |", "|---|---|---|---|---|---|"]
    return "\n".join(lines + [row.markdown() for row in rows])


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, with the device's queue drained on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def interleaved(
    pairs: Mapping[str, tuple[Callable[[], object], Callable[[], object]]],
    repeats: int,
    device: torch.device,
    *,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Per comparison, the ratios time(A) / time(B) of ``repeats`` rounds, every round running every
    pair A B in turn, after ``warmup`` untimed rounds (imports, allocator pools, thread pools)."""
    for _ in range(warmup):
        for a, b in pairs.values():
            a(), b()
    ratios: dict[str, list[float]] = {name: [] for name in pairs}
    for round_ in range(repeats):
        for name, (a, b) in pairs.items():
            if round_ % 2:  # B A on odd rounds, so that running first or second favours neither side
                b_seconds = timed(b, device)
                ratios[name].append(timed(a, device) / b_seconds)
            else:
                ratios[name].append(timed(a, device) / timed(b, device))
    return ratios


def seconds_of(
    cases: Mapping[str, Callable[[], object]], repeats: int, device: torch.device, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each case in ``repeats`` interleaved rounds (A B C A B C ...), after a warm-up,
    for comparisons that divide by more than one measured case (a floor made of several passes)."""
    for _ in range(warmup):
        for function in cases.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats):
        order = list(cases.items())
        for name, function in reversed(order) if round_ % 2 else order:  # alternate the order, as above
            times[name].append(timed(function, device))
    return times


def ratios_of(times: Mapping[str, Sequence[float]], a: str, b: str, scale: float = 1.0) -> list[float]:
    """Per round, ``times[a] / (scale * times[b])``."""
    return [x / (scale * y) for x, y in zip(times[a], times[b])]


def model_for_benchmark(width: int = 32, channels: int = 3) -> nn.Module:
    """A small CIFAR-shaped CNN (``channels``x32x32 inputs, 10 classes), with BatchNorm, in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * width, 10),
    ).eval()


def trained_for_benchmark(device: torch.device, samples: int = 64, steps: int = 32) -> tuple[nn.Module, torch.Tensor]:
    """:func:`model_for_benchmark` trained for ``steps`` Adam steps on the ResNet example's generated
    CIFAR-shaped images (about 80 % accuracy), in eval mode, and ``samples`` held-out images.

    A randomly initialised CNN predicts one class for almost every input, so attacks on it fool no
    sample and the searching ones (C&W, DeepFool) stop at once: timings there compare no work.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import cifar_like

    x, y = cifar_like.synthetic_cifar(steps * 64 // 2, seed=1)
    model = model_for_benchmark().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for index in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimiser.step()
    held_out, _ = cifar_like.synthetic_cifar(samples, seed=2)
    return model.eval().to(device), held_out.to(device)


def arguments(description: str, repeats: Optional[int] = None) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--device``, ``--quick`` and, given a default, ``--repeats``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes")
    return parser


def machine(device: torch.device) -> str:
    """The machine a table was measured on, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            cpu = next(line.split(":", 1)[1].strip() for line in stream if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"{where}; {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, Python {platform.python_version()}"
