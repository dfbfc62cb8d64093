"""Our attacks against torchattacks on the same model and batch, and against the pass-count floor.

    python benchmarks/attacks.py                  # CPU, 7 interleaved repeats
    python benchmarks/attacks.py --repeats 3 --device cuda

For every attack torchattacks also has, one run measures, interleaved after a warm-up: our attack
(inside the guard, as the callback runs it), torchattacks' attack (as its users run it) and one
forward+backward of the same batch with respect to the input. It prints the median ratio ours /
torchattacks with its range, and ours / floor, where the floor is the attack's number of
forward+backward passes times the measured single pass. Targets: ours / torchattacks <= 1.0 and
ours / floor <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchattacks
from torch import nn

from compass_lightning.attacks import run_attack
from compass_lightning.guard import analysis_mode

EPS = 8 / 255

# name: (our parameters, torchattacks constructor, forward+backward passes per sample)
CASES: dict[str, tuple[dict, Callable[[nn.Module], torchattacks.Attack], int | None]] = {
    "fgsm": ({}, lambda m: torchattacks.FGSM(m, eps=EPS), 1),
    "ifgsm": ({"alpha": 2 / 255}, lambda m: torchattacks.BIM(m, eps=EPS, alpha=2 / 255, steps=10), 10),
    "pgd": ({}, lambda m: torchattacks.PGD(m, eps=EPS, alpha=2 / 255, steps=10), 10),
    "pgd_l2": ({"alpha": 0.2}, lambda m: torchattacks.PGDL2(m, eps=1.0, alpha=0.2, steps=10), 10),
    "mifgsm": ({}, lambda m: torchattacks.MIFGSM(m, eps=EPS), 10),
    "difgsm": ({}, lambda m: torchattacks.DIFGSM(m, eps=EPS), 10),
    "tifgsm": ({"len_kernel": 15}, lambda m: torchattacks.TIFGSM(m, eps=EPS), 10),
    "sinifgsm": ({}, lambda m: torchattacks.SINIFGSM(m, eps=EPS), 50),
    "cw": ({}, lambda m: torchattacks.CW(m, c=1, kappa=0, steps=50, lr=0.01), None),  # both stop early
    "deepfool": ({}, lambda m: torchattacks.DeepFool(m, steps=50, overshoot=0.02), None),
}


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


def timed(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="attack names to run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = model_for_benchmark().to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=generator, device=device)
    y = model(x).argmax(1).detach()

    def one_pass() -> None:
        with analysis_mode(model):
            inputs = x.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(inputs), y), inputs)

    print(f"device: {device}, batch {args.batch} x 3x32x32, CPU threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats, torch {torch.__version__}, torchattacks {torchattacks.__version__}\n")
    print("| attack | ours (ms) | torchattacks (ms) | ours / torchattacks, median (min-max) | passes | ours / pass floor |")
    print("|---|---|---|---|---|---|")
    for name, (params, reference, passes) in CASES.items():
        if args.only and name not in args.only:
            continue
        eps = 1.0 if name == "pgd_l2" else (float("inf") if name in ("cw", "deepfool") else EPS)
        attack = reference(model)

        def ours() -> None:
            with analysis_mode(model):
                run_attack(name, model, x, y, eps=eps, generator=generator, **params)

        def theirs() -> None:
            attack(x, y)

        for function in (ours, one_pass) if name == "deepfool" else (ours, theirs, one_pass):  # warm-up
            function()
        times: dict[str, list[float]] = {"ours": [], "theirs": [], "pass": []}
        # torchattacks' DeepFool builds a Jacobian per sample in Python: minutes per run on a CPU
        for _ in range(min(args.repeats, 2) if name == "deepfool" else args.repeats):
            times["ours"].append(timed(ours, device))
            times["theirs"].append(timed(theirs, device))
            times["pass"].append(timed(one_pass, device))
        ratios = [o / t for o, t in zip(times["ours"], times["theirs"])]
        floor = f"{statistics.median(o / (passes * p) for o, p in zip(times['ours'], times['pass'])):.2f}" if passes else "n/a"
        print(
            f"| {name} | {1000 * statistics.median(times['ours']):.1f} | {1000 * statistics.median(times['theirs']):.1f} | "
            f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) | {passes or 'varies'} | {floor} |",
            flush=True,
        )
    print("\ntargets: ours / torchattacks <= 1.0; ours / pass floor <= 1.10")


if __name__ == "__main__":
    main()
