"""Our attacks against torchattacks (and PGD against ART) on the same model and batch, and against the pass floor.

    python benchmarks/attacks.py                  # CPU, 7 interleaved repeats
    python benchmarks/attacks.py --repeats 3 --device cuda

The model is the benchmark CNN trained briefly on the ResNet example's generated images (a random
one predicts one class for every input, so no attack fools anything and C&W and DeepFool stop at
once); C&W runs on its logits + 50, where torchattacks' margin equals ours, and its timing starts
only after both fooled the same samples. For every attack torchattacks also has, one run
measures, interleaved after a warm-up: our attack
(inside the guard, as the callback runs it), torchattacks' attack (as its users run it) and one
forward+backward of the same batch with respect to the input. It prints the median ratio ours /
torchattacks with its range, and ours / floor, where the floor is the attack's number of
forward+backward passes times the measured single pass; PGD is also timed against ART's
``ProjectedGradientDescentPyTorch`` with the same settings. Targets: ours / torchattacks <= 1.0,
ours / ART's PGD <= 0.6 and ours / pass floor <= 1.10.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchattacks
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, arguments, machine, ratios_of, seconds_of, table, trained_for_benchmark  # noqa: E402

from compass_lightning.attacks import run_attack  # noqa: E402
from compass_lightning.engine.guard import analysis_mode  # noqa: E402

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
    "cw": ({}, lambda m: torchattacks.CW(m, c=1, kappa=0, steps=50, lr=0.01), None),
    "deepfool": ({}, lambda m: torchattacks.DeepFool(m, steps=50, overshoot=0.02), None),
}


def art_pgd(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """ART's PGD with torchattacks' settings (eps 8/255, step 2/255, 10 steps, one random start), on numpy
    arrays as ART's users call it."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    attack = ProjectedGradientDescentPyTorch(
        classifier, norm=np.inf, eps=EPS, eps_step=2 / 255, max_iter=10, num_random_init=1, batch_size=len(x), verbose=False,
    )
    return lambda inputs, targets: attack.generate(inputs.cpu().numpy(), targets.cpu().numpy())


class PositiveLogits(nn.Module):
    """Logits + 50: C&W's margin is unchanged, and torchattacks' best-other-logit (``max((1 - onehot) *
    logits)``) is then the real one, so both C&W implementations search for the same examples."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 50


def rows(device: torch.device, repeats: int, *, quick: bool = False, batch: int = 64, only: list[str] | None = None) -> list[Row]:
    """Every shared attack against torchattacks and the pass floor, and PGD against ART."""
    model, x = trained_for_benchmark(device, samples=batch)  # a model the attacks can fool, on images
    generator = torch.Generator(device=device).manual_seed(0)
    y = model(x).argmax(1).detach()

    def one_pass() -> None:
        with analysis_mode(model):
            inputs = x.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(inputs), y), inputs)

    result = []
    for name, (params, reference, passes) in CASES.items():
        if only and name not in only:
            continue
        eps = 1.0 if name == "pgd_l2" else (float("inf") if name in ("cw", "deepfool") else EPS)
        target = PositiveLogits(model).eval() if name == "cw" else model
        attack = reference(target)

        def ours() -> torch.Tensor:
            with analysis_mode(model):
                return run_attack(name, target, x, y, eps=eps, generator=generator, **params)

        if name == "cw":  # equal work: both fool the same samples (and some), or the timing compares nothing
            examples = (ours(), attack(x, y))
            with torch.no_grad():
                rates = [(target(x_adv).argmax(1) != y).float().mean().item() for x_adv in examples]
            if rates[0] != rates[1] or rates[0] == 0:
                raise SystemExit(f"C&W success rates ours / torchattacks: {rates}: the timing would not compare equal work")

        cases = {"ours": ours, "torchattacks": lambda: attack(x, y), "pass": one_pass}
        if name == "deepfool" and quick:  # torchattacks builds a Jacobian per sample in Python: minutes a run on a CPU
            del cases["torchattacks"]
        if name == "pgd":
            cases["art"] = lambda generate=art_pgd(model, x): generate(x, y)
        times = seconds_of(cases, min(repeats, 2) if name == "deepfool" else repeats, device)
        if "torchattacks" in times:
            result.append(Row("attacks", f"{name}: ours / torchattacks", ratios_of(times, "ours", "torchattacks"), 1.0))
        else:
            result.append(Row("attacks", f"{name}: ours / torchattacks", [float("nan")], note="(not timed: torchattacks "
                              "loops over samples in Python, minutes per run; run without --quick)"))
        if "art" in times:
            result.append(Row("attacks", "pgd: ours / ART's ProjectedGradientDescentPyTorch", ratios_of(times, "ours", "art"), 0.6))
        if passes:
            result.append(Row("attacks", f"{name}: ours / {passes} forward+backward passes (floor)",
                              ratios_of(times, "ours", "pass", passes), 1.10))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="attack names to run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine(device)}; batch {args.batch} x 3x32x32, {args.repeats} interleaved repeats, "
          f"torchattacks {torchattacks.__version__}\n")
    print(table(rows(device, 3 if args.quick else args.repeats, quick=args.quick, batch=args.batch, only=args.only)))


if __name__ == "__main__":
    main()
