"""Time and peak memory of one Compass evaluation against the probe size and the model width.

    python benchmarks/memory.py                 # CPU: peak RSS
    python benchmarks/memory.py --device cuda   # the CUDA allocator's peak
    python benchmarks/memory.py --quick         # widths at a probe of 64 only

Each case runs in a fresh process: it builds a CIFAR-shaped CNN of the given width and a random
probe, warms up with one evaluation of 32 samples, then records the seconds and the memory growth
(the resident memory sampled every millisecond on the CPU, ``torch.cuda.max_memory_allocated`` on a
GPU) of one evaluation of
``Compass()`` (every module but pruning) on the whole probe. Probe sizes 64, 256 and 1024 run at
width x1, widths x1, x2 and x4 at a probe of 256 (``--quick``: a probe of 64, a base width of 8 instead of 16,
and saliency and Grad-CAM as the attribution methods).

The promises: at a fixed ``batch_size`` the time grows linearly with the probe (the time per sample
stays flat) and the peak memory does not grow beyond the probe tensors themselves (and a few numbers
per sample), because every analysis works in chunks of ``batch_size``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine  # noqa: E402

BASE_WIDTH = 16


def child(size: int, width: int, base_width: int, device: str, batch_size: int, quick: bool) -> dict[str, float]:
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.states import TrainerFn

    from common import model_for_benchmark
    from compass_lightning import Classification, Compass, Evaluation, ProbeSet
    from compass_lightning.engine.guard import analysis_mode

    model = model_for_benchmark(width=base_width * width).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (size,), generator=generator)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    trainer.state.fn = TrainerFn.VALIDATING  # as under trainer.validate
    # the one-pass attribution methods in a quick run: integrated gradients and SmoothGrad at every sample of
    # the largest probe would take most of its ten minutes, and scale the same way
    interpretability = {"probe_size": size, **({"methods": ["saliency", "gradcam"]} if quick else {})}
    compass = Compass(  # every module on the whole probe (by default each caps its own probe size)
        pruning=False, batch_size=batch_size, task=Classification(), probe_size=size,
        mutation={"probe_size": size}, robustness={"probe_size": size}, interpretability=interpretability,
        neurons={"profile_data": (inputs[:64], targets[:64]), "profile_size": 64, "probe_size": size},  # no training loader here
    )

    def evaluate(probe: ProbeSet) -> None:  # outside a scheduled hook the Compass runs every module
        with analysis_mode(model):
            evaluation = Evaluation(model, probe, Classification(), batch_size=batch_size)
            evaluation.outputs(probe.inputs)
            compass.evaluate(trainer, evaluation)

    evaluate(ProbeSet(inputs[:32], targets[:32]))  # warm-up: allocator pools, thread pools, imports
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        started = time.perf_counter()
        evaluate(ProbeSet(inputs, targets))
        torch.cuda.synchronize()
        seconds, after = time.perf_counter() - started, torch.cuda.max_memory_allocated()
    else:
        with ResidentPeak() as peak:
            started = time.perf_counter()
            evaluate(ProbeSet(inputs, targets))
            seconds = time.perf_counter() - started
        before, after = peak.before, peak.peak
    return {"size": size, "width": width, "seconds": seconds, "probe_mb": inputs.numel() * 4 / 2**20,
            "growth_mb": max(after - before, 0) / 2**20, "peak_mb": after / 2**20}


class ResidentPeak:
    """The largest resident memory of this process while the block runs, sampled every millisecond
    (``ru_maxrss`` would report the process' high-water mark, which imports can set)."""

    def __init__(self) -> None:
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def resident() -> int:
        with open("/proc/self/statm", encoding="ascii") as stream:
            return int(stream.read().split()[1]) * resource.getpagesize()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.resident())

    def __enter__(self) -> ResidentPeak:
        self.before = self.peak = self.resident()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.resident())


def measure(size: int, width: int, device: str, batch_size: int, base_width: int, quick: bool) -> dict[str, float]:
    """One case in a fresh process (so that the peak memory is its own)."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(size), str(width), str(base_width), "--device", device,
         "--batch-size", str(batch_size), *(["--quick"] if quick else [])],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling_table(device: str, *, quick: bool = False, batch_size: int = 64) -> str:
    """The cases as a Markdown table: seconds per sample relative to the first case of the sweep, and memory."""
    base_width = BASE_WIDTH // 2 if quick else BASE_WIDTH
    sweeps = {"probe size": [(size, 1) for size in (64, 256, 1024)],
              "width": [(64 if quick else 256, width) for width in (1, 2, 4)]}
    methods = "saliency and Grad-CAM as attribution methods" if quick else "default attribution methods"
    lines = [f"Compass() evaluation (pruning off, every module on the whole probe, {methods}), CIFAR-shaped CNN of "
             f"width {base_width} (x1), batch_size {batch_size}, {device}", "",
             "| sweep | probe size | width | seconds | seconds per sample / first of the sweep | probe tensors (MB) "
             "| resident memory growth during the evaluation (MB) | peak (MB) |", "|---|---|---|---|---|---|---|---|"]
    for sweep, cases in sweeps.items():
        first = None
        for size, width in cases:
            row = measure(size, width, device, batch_size, base_width, quick)
            per_sample = row["seconds"] / size
            first = first or per_sample
            lines.append(f"| {sweep} | {size} | x{width} | {row['seconds']:.1f} | {per_sample / first:.2f} | "
                         f"{row['probe_mb']:.1f} | {row['growth_mb']:.0f} | {row['peak_mb']:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", type=int, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.device, args.batch_size, args.quick)))
        return
    print(machine(torch.device(args.device)))
    print(scaling_table(args.device, quick=args.quick, batch_size=args.batch_size))


if __name__ == "__main__":
    main()
