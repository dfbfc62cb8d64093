"""Integrated gradients against Captum, insertion/deletion against Quantus and its forward floor, and
every gradient attribution method against its pass floor.

    python benchmarks/attribution.py              # CPU, 5 interleaved repeats
    python benchmarks/attribution.py --device cuda

One run measures, interleaved after a warm-up, on the same model and inputs (32 x 1x32x32: Quantus
steps over H*W features but perturbs channels separately, so only one channel gives it whole pixels):

* integrated gradients at 32 steps, on this model and on a narrower one at 16x16 (where the
  activation rule alone chooses 2x too many rows per forward): ours as the callback runs it (Captum
  inside the guard, its steps batched into forwards of the size
  :func:`~compass_lightning.engine.batching.gradient_rows` measured, once, before the timings)
  against Captum at its best ``internal_batch_size`` (the fastest of 16..1024 and ``None`` in an
  untimed sweep first) and at its default (every step in one forward); the measurement's own cost
  (once per run) against one integrated-gradients call;
* deletion: Quantus' ``PixelFlipping`` (32 steps of 32 pixels, softmax probability), after checking
  that our deletion curve has the same values, against our ``insertion_deletion`` (which computes
  both curves: twice Quantus' work, so one curve is half of it), and both against the floor: one
  forward pass of every masked image;
* saliency, input x gradient, integrated gradients, SmoothGrad and Grad-CAM as the callback runs
  them, against their pass floor: their number of forward+backward passes times one measured
  forward+backward of the batch (Grad-CAM: one forward and one backward to its layer, the last
  convolution, since its backward stops there).

Targets: IG <= 1.0x Captum at its best internal batch; insertion/deletion >= 2x faster than Quantus and <= 1.10x its floor;
every gradient method <= 1.10x its pass floor.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, arguments, machine, model_for_benchmark, ratios_of, seconds_of, table  # noqa: E402

from compass_lightning.attribution import METHODS, attribute, insertion_deletion  # noqa: E402
from compass_lightning.engine.batching import auto_batch_size  # noqa: E402
from compass_lightning.engine.guard import analysis_mode  # noqa: E402
from compass_lightning.engine.layers import capture  # noqa: E402
from compass_lightning.engine.sites import layer_site  # noqa: E402

STEPS = 32
# method: (its parameters, forward+backward passes per sample); the callback adds internal_batch_size=batch_size
GRADIENT_METHODS = {
    "saliency": ({}, 1),
    "input_x_gradient": ({}, 1),
    "integrated_gradients": ({"steps": STEPS}, STEPS),
    "smoothgrad": ({"samples": 25}, 25),
    "gradcam": ({}, 1),
}
#: Methods whose backward stops at a layer: their floor is a forward and a backward to that layer
#: (Grad-CAM's default layer is the last convolution), not the full backward to the input.
LAYER_FLOOR = {"gradcam"}


def rows(device: torch.device, repeats: int, *, batch: int = 32) -> list[Row]:
    """IG against Captum, insertion/deletion against Quantus and its floor, methods against their pass floor."""
    warnings.filterwarnings("ignore")
    import quantus

    model = model_for_benchmark(channels=1).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, 32, 32, generator=generator, device=device)
    x[:, :, 0, 0] = 0.0  # Quantus' "black" is each image's minimum: make it 0, our black
    with torch.no_grad():
        target = model(x).argmax(1)
    attributions = torch.rand(batch, 1, 32, 32, generator=generator, device=device)
    forward_size = auto_batch_size(model, model, x)  # what the callback chooses at its default batch_size

    # -- equal values first ------------------------------------------------------------------
    pixel_flipping = quantus.PixelFlipping(features_in_step=32, perturb_baseline="black", disable_warnings=True)

    def theirs() -> list:
        return pixel_flipping(
            model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=attributions.cpu().numpy(),
            device=str(device), softmax=True, batch_size=batch,
        )

    with analysis_mode(model):
        _, _, curves = insertion_deletion(model, x, attributions, target=target, steps=STEPS + 1)
    difference = np.abs(curves["deletion"][:, 1:].cpu().numpy() - np.asarray(theirs())).max()
    if difference > 1e-5:
        raise SystemExit(f"the deletion curves differ from Quantus' by {difference:.2e}: the timing would not compare equal work")

    # -- timings -------------------------------------------------------------------------------
    masked = torch.rand(2 * (STEPS + 1) * batch, 1, 32, 32, generator=generator, device=device)

    def ours_id() -> None:
        with analysis_mode(model):
            insertion_deletion(model, x, attributions, target=target, steps=STEPS + 1, batch_size=forward_size)

    def floor() -> None:  # every masked image through the model once, in forwards of the batch's size (Quantus')
        with torch.no_grad():
            for part in masked.split(batch):
                model(part).softmax(1)

    def one_pass() -> None:
        with analysis_mode(model):
            inputs = x.clone().requires_grad_(True)
            torch.autograd.grad(model(inputs).gather(1, target.view(-1, 1)).sum(), inputs)

    site = layer_site(model, None, x[:1], default="last")  # where gradcam reads

    def layer_pass() -> None:  # Grad-CAM's floor: a forward, and a backward to its layer only
        with analysis_mode(model), capture(site) as kept:
            # the input needs a gradient path (the guard freezes the parameters), as in Grad-CAM
            score = model(x.clone().requires_grad_(True)).gather(1, target.view(-1, 1)).sum()
            torch.autograd.grad(score, kept.value)

    def method(name: str, params: dict):
        def run() -> None:
            with analysis_mode(model):
                extra = {"internal_batch_size": forward_size} if "internal_batch_size" in METHODS[name].defaults else {}
                attribute(name, model, x, target, **params, **extra)
        return run

    cases = {"id_ours": ours_id,
             "quantus": theirs, "floor": floor,
             "pass": one_pass, "layer_pass": layer_pass, **{name: method(name, params) for name, (params, _) in GRADIENT_METHODS.items()}}
    times = seconds_of(cases, repeats, device)
    result = [
        Row("attribution", "insertion + deletion: ours / one forward of every masked image (floor)",
            ratios_of(times, "id_ours", "floor"), 1.10),
        Row("attribution", "one curve (half of ours) / Quantus' deletion curve, equal values",
            ratios_of(times, "id_ours", "quantus", 2.0), 0.5),
        Row("attribution", "Quantus' deletion curve / its floor (half the masked images)",
            ratios_of(times, "quantus", "floor", 0.5)),
    ]
    result = ig_rows(model, x, target, device, repeats, "1x32x32") + result
    narrow = model_for_benchmark(width=16, channels=1).to(device)
    small = x[:, :, ::2, ::2].contiguous()
    with torch.no_grad():
        result = ig_rows(narrow, small, narrow(small).argmax(1), device, repeats, "1x16x16, width 16") + result
    for name, (_, passes) in GRADIENT_METHODS.items():
        floor, label = ("layer_pass", "a forward and a backward to its layer") if name in LAYER_FLOOR else \
            ("pass", f"{passes} forward+backward passes")
        result.append(Row("attribution", f"{name}: ours / {label} (floor)", ratios_of(times, name, floor, passes), 1.10))
    return result


def ig_rows(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, device: torch.device, repeats: int,
            label: str) -> list[Row]:
    """Integrated gradients as the callback runs them against Captum at its best and default internal batch."""
    from compass_lightning.engine import batching

    def captum_ig(internal_batch_size: int | None) -> Callable[[], None]:
        return lambda: IntegratedGradients(model).attribute(
            x.clone().requires_grad_(), baselines=0.0, target=target, n_steps=STEPS, internal_batch_size=internal_batch_size
        )

    sizes = [None, *(2**k for k in range(4, 11))]
    sweep = seconds_of({str(size): captum_ig(size) for size in sizes}, 2, device)
    best = min(sizes, key=lambda size: min(sweep[str(size)]))
    rule = auto_batch_size(model, model, x)
    batching._CALIBRATED.clear()
    start = time.perf_counter()
    with analysis_mode(model):
        rows = batching.gradient_rows(model, x, target, rule)
    calibration = time.perf_counter() - start

    def ours() -> None:  # as the callback runs it: the measured rows per forward
        with analysis_mode(model):
            attribute("integrated_gradients", model, x, target, steps=STEPS, internal_batch_size=rows)

    times = seconds_of({"ours": ours, "best": captum_ig(best), "default": captum_ig(None)}, repeats, device)
    return [
        Row("attribution", f"IG ({label}; rule {rule}, measured {rows} rows): ours / Captum at its best internal_batch_size={best}",
            ratios_of(times, "ours", "best"), 1.0),
        Row("attribution", f"IG ({label}): ours / Captum at its default (every step in one forward)",
            ratios_of(times, "ours", "default")),
        Row("attribution", f"IG ({label}): measuring the rows (once per run) / one IG call",
            [calibration / t for t in times["ours"]]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine(device)}; {args.batch} x 1x32x32, {STEPS} steps, {args.repeats} interleaved repeats\n")
    print(table(rows(device, 3 if args.quick else args.repeats, batch=args.batch)))
    memory_flatness(model_for_benchmark(channels=1).to(device), device)


def memory_flatness(model: torch.nn.Module, device: torch.device, batch_size: int = 128) -> None:
    """With ``batch_size`` set, the largest batch that reaches the model (what bounds activation
    memory) does not grow with the number of samples; on CUDA the peak allocation is shown too."""
    largest = [0]

    def record(module: torch.nn.Module, inputs: tuple) -> None:
        largest[0] = max(largest[0], len(inputs[0]))

    handle = model.register_forward_pre_hook(record)
    print(f"\n| samples | largest forward batch (images), batch_size={batch_size} | CUDA peak (MiB) |")
    print("|---|---|---|")
    try:
        for samples in (32, 128, 512):
            x = torch.rand(samples, 1, 32, 32, device=device)
            largest[0] = 0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with analysis_mode(model):
                insertion_deletion(model, x, torch.rand_like(x), steps=STEPS + 1, batch_size=batch_size)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f}" if device.type == "cuda" else "n/a (CPU)"
            print(f"| {samples} | {largest[0]} | {peak} |")
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
