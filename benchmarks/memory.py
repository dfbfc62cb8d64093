"""Peak memory of one Compass evaluation against the probe size, at a fixed ``batch_size``.

    python benchmarks/memory.py                 # probe sizes 64, 256, 1024 (CPU: peak RSS)
    python benchmarks/memory.py --device cuda   # the same with the CUDA allocator's peak

Each size runs in a fresh process: it builds a CIFAR-shaped CNN and a random probe, warms up with
one evaluation of 32 samples, then records the peak memory (``ru_maxrss`` on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU) of one evaluation of ``Compass()`` (every module but
pruning) on the whole probe. The promise: beyond the probe tensors themselves (and the per-sample
results, a few numbers per sample), the peak does not grow with the probe size, because every
analysis works in chunks of ``batch_size``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(size: int, device: str, batch_size: int) -> dict[str, float]:
    import lightning.pytorch as pl

    from attacks import model_for_benchmark
    from compass_lightning import Classification, Compass, Evaluation, ProbeSet
    from compass_lightning.guard import analysis_mode

    model = model_for_benchmark().to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (size,), generator=generator)
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    trainer.state.fn = TrainerFn.VALIDATING  # as under trainer.validate
    compass = Compass(
        pruning=False, batch_size=batch_size, task=Classification(),
        neurons={"profile_data": (inputs[:64], targets[:64]), "profile_size": 64},  # no training loader here
    )
    compass._running = list(compass.modules)

    def evaluate(probe: ProbeSet) -> None:
        with analysis_mode(model):
            evaluation = Evaluation(model, probe, Classification(), batch_size=batch_size)
            evaluation.logits(probe.inputs)
            compass.evaluate(trainer, evaluation)

    evaluate(ProbeSet(inputs[:32], targets[:32]))  # warm-up: allocator pools, thread pools, imports
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    evaluate(ProbeSet(inputs, targets))
    after = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "probe_mb": inputs.numel() * 4 / 2**20, "growth_mb": max(after - before, 0) / 2**20,
            "peak_mb": after / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.device, args.batch_size)))
        return
    rows = []
    for size in args.sizes:
        result = subprocess.run([sys.executable, __file__, "--child", str(size), "--device", args.device,
                                 "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"\nCompass() evaluation (no pruning), batch_size {args.batch_size}, {args.device}")
    print("| probe size | probe tensors (MB) | peak growth over a 32-sample evaluation (MB) | peak (MB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']} | {row['probe_mb']:.1f} | {row['growth_mb']:.1f} | {row['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
