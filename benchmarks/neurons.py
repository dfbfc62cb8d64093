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
* **coverage**: NC, KMNC, NBC, SNAC and TKNC of the batch (``coverage``) against a plain forward.

Targets: all-layers deviation maps within 1.5x of a single-layer Grad-CAM pass; coverage <= 1.3x a
plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import timed  # noqa: E402

from compass_lightning.neurons import conv_neuron_layers, coverage, gradcam_maps, profile_ranges  # noqa: E402


def resnet18_32() -> nn.Module:
    """ResNet-18 for 32×32 inputs (the usual CIFAR adaptation), random weights, eval mode."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = resnet18_32().to(device).requires_grad_(False)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    layers = conv_neuron_layers(model)
    first = {name: layers[name] for name in list(layers)[:1]}  # its backward runs the whole depth
    last = {name: layers[name] for name in list(layers)[-1:]}  # its backward stops at the head
    ranges = profile_ranges(model, [torch.rand(args.batch, 3, 32, 32).to(device)])

    def all_layers() -> None:
        gradcam_maps(model, x, target, layers)

    def per_layer() -> None:
        for name, layer in layers.items():
            gradcam_maps(model, x, target, {name: layer})

    def first_layer() -> None:
        gradcam_maps(model, x, target, first)

    def last_layer() -> None:
        gradcam_maps(model, x, target, last)

    def covered() -> None:
        coverage(model, [x], ranges=ranges)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    pairs = {
        f"Grad-CAM at all {len(layers)} convs: one backward / one backward per layer": (all_layers, per_layer),
        f"Grad-CAM at all {len(layers)} convs / Grad-CAM at the first conv (target <= 1.5)": (all_layers, first_layer),
        f"Grad-CAM at all {len(layers)} convs / Grad-CAM at the last conv (a shallow backward)": (all_layers, last_layer),
        "coverage (5 criteria) / a plain forward (target <= 1.3)": (covered, forward),
    }
    for a, b in pairs.values():  # warm-up
        a(), b()
    ratios: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(args.repeats):
        for name, (a, b) in pairs.items():  # interleaved A B A B
            ratios[name].append(timed(a, device) / timed(b, device))
    print(f"\nneuron analyses: ResNet-18 (32x32), batch {args.batch}, {device.type}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    print("| comparison | median ratio | min-max |")
    print("|---|---|---|")
    for name, values in ratios.items():
        print(f"| {name} | {statistics.median(values):.2f}x | {min(values):.2f}-{max(values):.2f} |")


if __name__ == "__main__":
    main()
