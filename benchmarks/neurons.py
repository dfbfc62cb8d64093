"""Neuron analyses against their floors: Grad-CAM of every layer in one backward, coverage in one forward.

    python benchmarks/neurons.py              # CPU, 3 interleaved repeats
    python benchmarks/neurons.py --device cuda

One run measures, interleaved after a warm-up, on a torchvision ResNet-18 adapted to 32×32 inputs
(3×3 stem, no max-pool; random weights, nothing downloaded) and a batch of 3×32×32 images:

* **deviation maps**: Grad-CAM at all 20 convolutions from one forward and one backward
  (``gradcam_maps``, what ``layer_deviation`` uses) against one forward+backward per layer, and
  against a single-layer Grad-CAM pass: at the first convolution (the floor: any pass that reaches
  every layer runs the backward through the whole depth) and, for reference, at the last one
  (whose backward stops after the head);
* **coverage**: NC, KMNC, NBC, SNAC, TKNC and BKNC of the batch (``coverage``) against a plain forward;
* **test generation**: DeepSensor's swarm (``generate_tests``, 4 seeds × 8 particles, 3 generations)
  against its forward floor, the forwards it cannot avoid: the seeds once, and all seeds × particles
  before the first generation and after each.

* **Deep Validation** (on the briefly trained benchmark CNN, whose predictions cover the classes):
  the discrepancy of the batch (``Validator.discrepancy``) against its floor, one plain forward plus
  the one-class SVMs' scoring of features computed beforehand; the fitting time on 512 training
  images is printed in the row's note.

Targets: all-layers deviation maps within 1.5x of a single-layer Grad-CAM pass; coverage <= 1.3x a
plain forward; test generation <= 1.10x its forward floor; the discrepancy <= 1.3x its floor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import cifar_like  # noqa: E402
from common import Row, arguments, interleaved, machine, table  # noqa: E402

from compass_lightning.attribution import gradcam_maps  # noqa: E402
from compass_lightning.neurons import conv_neuron_layers, coverage, generate_tests, profile_ranges  # noqa: E402


def resnet18_32() -> nn.Module:
    """The ResNet-18 of the cifar_like example (3x3 stem, no max-pool), random weights, eval mode."""
    torch.manual_seed(0)
    return cifar_like.resnet18_32().eval()


def rows(device: torch.device, repeats: int, *, batch: int = 16) -> list[Row]:
    """Grad-CAM of every layer in one backward against per-layer and single-layer passes; coverage against a forward."""
    model = resnet18_32().to(device).requires_grad_(False)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    layers = {name: layer.site for name, layer in conv_neuron_layers(model, example=x[:1]).items()}
    first = {name: layers[name] for name in list(layers)[:1]}  # its backward runs the whole depth
    last = {name: layers[name] for name in list(layers)[-1:]}  # its backward stops at the head
    ranges = profile_ranges(model, [torch.rand(batch, 3, 32, 32).to(device)])

    def maps(which: dict) -> Callable[[], object]:
        return lambda: gradcam_maps(model, x, target, which)

    def per_layer() -> None:
        for name, layer in layers.items():
            gradcam_maps(model, x, target, {name: layer})

    def forward() -> None:
        with torch.no_grad():
            model(x)

    seeds, particles, generations = x[:4], 8, 3
    swarm = torch.rand(len(seeds) * particles, *x.shape[1:], generator=torch.Generator().manual_seed(1)).to(device)

    def generation_floor() -> None:
        with torch.no_grad():
            model(seeds)
            for _ in range(generations + 1):
                model(swarm)

    count = len(layers)
    pairs = {
        f"Grad-CAM at all {count} convs in one backward / one backward per layer": (maps(layers), per_layer, None),
        f"Grad-CAM at all {count} convs / Grad-CAM at the first conv (a full-depth backward)": (maps(layers), maps(first), 1.5),
        f"Grad-CAM at all {count} convs / Grad-CAM at the last conv (a shallow backward)": (maps(layers), maps(last), None),
        "coverage (6 criteria) / a plain forward": (lambda: coverage(model, [x], ranges=ranges), forward, 1.3),
        f"test generation ({len(seeds)} seeds x {particles} particles, {generations} generations) / its "
        f"{generations + 1} forwards of {len(swarm)} and one of the seeds (floor)": (
            lambda: generate_tests(model, seeds, particles=particles, generations=generations), generation_floor, 1.10),
    }
    ratios = interleaved({name: (a, b) for name, (a, b, _) in pairs.items()}, repeats, device)
    return [Row("neurons", name, ratios[name], target) for name, (_, _, target) in pairs.items()]


def validation_rows(device: torch.device, repeats: int, *, batch: int = 64) -> list[Row]:
    """Deep Validation's discrepancy against a forward plus the SVM scoring; the fitting time."""
    import time

    from common import trained_for_benchmark

    from compass_lightning.neurons import neuron_values
    from compass_lightning.neurons.validation import _features, fit_validator, hidden_layers

    model, x = trained_for_benchmark(device, samples=batch + 512)
    x, train = x[:batch], x[batch:]
    with torch.no_grad():
        labels = model(train).argmax(1)  # all "correct": every class that the model predicts gets its models
    started = time.perf_counter()
    validator = fit_validator(model, train, labels, batch_size=batch)
    fitting = time.perf_counter() - started
    layers = hidden_layers(model, example=x)
    features, predicted = _features(model, x, layers, batch)

    def floor() -> None:
        with torch.no_grad():
            model(x)
        for name in validator.layers:
            scaled = ((features[name] - validator.mean[name]) / validator.std[name]).double().numpy()
            for k, svm in validator.models[name].items():
                rows = (predicted == k).numpy()
                if rows.any():
                    svm.decision_function(scaled[rows])

    ratios = interleaved({"d": (lambda: validator.discrepancy(model, x, batch), floor)}, repeats, device)
    models = sum(len(m) for m in validator.models.values())
    return [Row("neurons", f"Deep Validation discrepancy of {batch} / a forward + the SVM scoring "
                f"({models} one-class SVMs on {len(validator.layers)} layers; fitting on 512 images: {fitting:.2f} s)",
                ratios["d"], 1.3)]


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine(device)}; ResNet-18 (32x32), batch {args.batch}, {args.repeats} interleaved repeats\n")
    repeats = 2 if args.quick else args.repeats
    print(table(rows(device, repeats, batch=args.batch) + validation_rows(device, repeats)))


if __name__ == "__main__":
    main()
