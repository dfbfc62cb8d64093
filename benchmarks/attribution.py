"""Integrated gradients against Captum, and insertion/deletion against Quantus and its forward floor.

    python benchmarks/attribution.py              # CPU, 5 interleaved repeats
    python benchmarks/attribution.py --device cuda

One run measures, interleaved after a warm-up, on the same model and inputs (32 x 1x32x32: Quantus
steps over H*W features but perturbs channels separately, so only one channel gives it whole pixels):

* integrated gradients at 32 steps: ours (the callback's path: Captum inside the guard) against
  Captum called directly with its ``internal_batch_size`` set to the whole batch times the steps;
* deletion: Quantus' ``PixelFlipping`` (32 steps of 32 pixels, softmax probability), after checking
  that our deletion curve has the same values, against our ``insertion_deletion`` (which computes
  both curves: twice Quantus' work, so one curve is half of it), and both against the floor: one
  forward pass of every masked image, in forwards of the size ours uses.

Targets: IG <= 1.0x Captum; insertion/deletion >= 2x faster than Quantus and <= 1.10x its floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import model_for_benchmark, timed  # noqa: E402

from compass_lightning.attribution import attribute, insertion_deletion  # noqa: E402
from compass_lightning.guard import analysis_mode  # noqa: E402

STEPS = 32


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import quantus

    device = torch.device(args.device)
    model = model_for_benchmark(channels=1).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 1, 32, 32, generator=generator, device=device)
    x[:, :, 0, 0] = 0.0  # Quantus' "black" is each image's minimum: make it 0, our black
    with torch.no_grad():
        target = model(x).argmax(1)
    attributions = torch.rand(args.batch, 1, 32, 32, generator=generator, device=device)

    # -- equal values first ------------------------------------------------------------------
    pixel_flipping = quantus.PixelFlipping(features_in_step=32, perturb_baseline="black", disable_warnings=True)

    def theirs() -> list:
        return pixel_flipping(
            model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=attributions.cpu().numpy(),
            device=str(device), softmax=True, batch_size=args.batch,
        )

    with analysis_mode(model):
        _, _, curves = insertion_deletion(model, x, attributions, target=target, steps=STEPS + 1)
    reference = np.asarray(theirs())
    difference = np.abs(curves["deletion"][:, 1:].cpu().numpy() - reference).max()
    print(f"deletion curves, ours vs Quantus PixelFlipping: max |difference| = {difference:.2e}")
    if difference > 1e-5:
        raise SystemExit("the deletion curves differ: the timing comparison would not be on the same work")

    # -- timings -------------------------------------------------------------------------------
    masked = torch.rand(2 * (STEPS + 1) * args.batch, 1, 32, 32, generator=generator, device=device)

    def ours_ig() -> None:
        with analysis_mode(model):
            attribute("integrated_gradients", model, x, target, steps=STEPS, internal_batch_size=args.batch * STEPS)

    def captum_ig() -> None:
        IntegratedGradients(model).attribute(
            x.clone().requires_grad_(), baselines=0.0, target=target, n_steps=STEPS, internal_batch_size=args.batch * STEPS
        )

    chunk = max(1, 128 // (2 * (STEPS + 1)))  # as AttributionScores chunks at its default batch_size=128

    def ours_id() -> None:
        with analysis_mode(model):
            insertion_deletion(model, x, attributions, target=target, steps=STEPS + 1, chunk_size=chunk)

    def floor() -> None:  # every masked image through the model, in forwards of the same size as ours
        with torch.no_grad():
            for part in masked.split(2 * (STEPS + 1) * chunk):
                model(part).softmax(1)

    cases = {"ig_ours": ours_ig, "ig_captum": captum_ig, "id_ours": ours_id, "quantus": theirs, "floor": floor}
    for function in cases.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, function in cases.items():
            times[name].append(timed(function, device))

    def ratio(a: str, b: str) -> str:
        values = [x / y for x, y in zip(times[a], times[b])]
        return f"**{statistics.median(values):.2f}** ({min(values):.2f}-{max(values):.2f})"

    print(f"\ndevice: {device}, {args.batch} x 1x32x32, {STEPS} steps, CPU threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats, captum, quantus {quantus.__version__}\n")
    print("| comparison | ours (ms) | reference (ms) | ratio ours / reference, median (min-max) |")
    print("|---|---|---|---|")
    median = lambda name: 1000 * statistics.median(times[name])  # noqa: E731
    print(f"| integrated gradients vs Captum | {median('ig_ours'):.1f} | {median('ig_captum'):.1f} | {ratio('ig_ours', 'ig_captum')} |")
    print(f"| insertion + deletion vs its forward floor | {median('id_ours'):.1f} | {median('floor'):.1f} | {ratio('id_ours', 'floor')} |")
    per_curve = [o / 2 / q for o, q in zip(times["id_ours"], times["quantus"])]
    print(f"| one curve (half of ours) vs Quantus' deletion curve | {median('id_ours') / 2:.1f} | {median('quantus'):.1f} | "
          f"**{statistics.median(per_curve):.2f}** ({min(per_curve):.2f}-{max(per_curve):.2f}) |")
    quantus_floor = [2 * q / f for q, f in zip(times["quantus"], times["floor"])]
    print(f"| Quantus' deletion curve vs the same floor (half the images) | {median('quantus'):.1f} | {median('floor') / 2:.1f} | "
          f"{statistics.median(quantus_floor):.2f} ({min(quantus_floor):.2f}-{max(quantus_floor):.2f}) |")
    print("\ntargets: IG <= 1.0x Captum; insertion/deletion >= 2x faster than Quantus, <= 1.10x its floor")
    memory_flatness(model, device)


def memory_flatness(model: torch.nn.Module, device: torch.device, chunk_size: int = 2) -> None:
    """With ``chunk_size`` set, the largest batch that reaches the model (what bounds activation
    memory) does not grow with the number of samples; on CUDA the peak allocation is shown too."""
    largest = [0]

    def record(module: torch.nn.Module, inputs: tuple) -> None:
        largest[0] = max(largest[0], len(inputs[0]))

    handle = model.register_forward_pre_hook(record)
    print(f"\n| samples | largest forward batch (images), chunk_size={chunk_size} | CUDA peak (MiB) |")
    print("|---|---|---|")
    try:
        for samples in (32, 128, 512):
            x = torch.rand(samples, 1, 32, 32, device=device)
            largest[0] = 0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with analysis_mode(model):
                insertion_deletion(model, x, torch.rand_like(x), steps=STEPS + 1, chunk_size=chunk_size)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f}" if device.type == "cuda" else "n/a (CPU)"
            print(f"| {samples} | {largest[0]} | {peak} |")
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
