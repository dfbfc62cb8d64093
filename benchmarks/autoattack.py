"""The AutoAttack cascade against torchattacks', and APGD and Square against their pass floors.

    python benchmarks/autoattack.py                 # CPU, 5 interleaved repeats (3 for standard): about 30 minutes
    python benchmarks/autoattack.py --quick         # lite only, 16 samples, 2 repeats: about 2 minutes
    python benchmarks/autoattack.py --repeats 3 --device cuda

On the benchmark CNN (``common.trained_for_benchmark``) and one batch, interleaved after a warm-up:

* ``autoattack`` lite and standard against torchattacks' ``MultiAttack([APGD, APGDT, Square])`` with
  the same settings (steps, targets, queries, one restart, seed 0): torchattacks' ``AutoAttack`` is
  that cascade with FAB-T added and 10 APGD steps, so the ``MultiAttack`` is the same work as ours.
  Both cascades attack only the samples every earlier stage left, so their costs are comparable
  only if they break the same samples: the robust accuracies of both are printed with the row (and
  the run stops if they differ by more than 3 samples). Target: ours / torchattacks <= 1.0.
* ``apgd_ce``, ``apgd_t`` and ``square`` against their pass floor: the very model calls the attack
  made (recorded during an untimed run: the batch size of each call, and whether its gradient was
  taken), replayed on the same model with nothing else around them. The floor is what any
  implementation making the same queries must spend; ours / floor is the cost of everything else
  (the step-size rule, the projections, Square's window draws). Target: <= 1.10.

ε is 4/255: at 8/255 APGD-CE breaks every sample of this model, and APGD-T and Square would
have nothing to do; at 4/255 each stage breaks some.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, arguments, machine, ratios_of, seconds_of, table, trained_for_benchmark  # noqa: E402

from compass_lightning.attacks import run_attack  # noqa: E402
from compass_lightning.attacks.autoattack import VERSIONS  # noqa: E402
from compass_lightning.engine.guard import analysis_mode  # noqa: E402

EPS = 4 / 255
#: attack: (our parameters, what the floor replays per call)
FLOORS = {"apgd_ce": {"steps": 20}, "apgd_t": {"steps": 20, "targets": 3}, "square": {"queries": 300}}


class Recording(nn.Module):
    """The model, recording each call: its batch size and whether the output carries a graph (the
    attacks take the gradient of every such forward once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        self.calls.append((len(x), logits.requires_grad))
        return logits


def replay(model: nn.Module, x: Tensor, calls: list[tuple[int, bool]]) -> Callable[[], None]:
    """The recorded calls on ``model``, nothing else: a forward of the first ``size`` samples, and a
    backward to the input where the attack took a gradient."""

    def run() -> None:
        with analysis_mode(model):
            for size, gradient in calls:
                if gradient:
                    inputs = x[:size].clone().requires_grad_(True)
                    torch.autograd.grad(model(inputs).sum(), inputs)
                else:
                    with torch.no_grad():
                        model(x[:size])

    return run


def reference_cascade(model: nn.Module, version: str, classes: int) -> torchattacks.Attack:
    """torchattacks' cascade with our ``version``'s settings (AutoAttack's without FAB-T)."""
    setting = VERSIONS[version]
    targeted = torchattacks.APGDT(model, eps=EPS, steps=setting["steps"], n_restarts=1, seed=0, n_classes=classes)
    targeted.n_target_classes = setting["targets"]  # torchattacks fixes it to n_classes - 1 in __init__
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, eps=EPS, steps=setting["steps"], n_restarts=1, seed=0, loss="ce"),
        targeted,
        torchattacks.Square(model, eps=EPS, n_queries=setting["queries"], n_restarts=1, seed=0),
    ])


def rows(device: torch.device, repeats: int, *, batch: int = 32, versions: tuple[str, ...] = ("lite", "standard")) -> list[Row]:
    """The cascade against torchattacks', and APGD and Square against their floors."""
    model, x = trained_for_benchmark(device, samples=batch)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correct: the attacks have the whole batch to work on
    result = []

    def ours(name: str, **params: object) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with analysis_mode(model):
                return run_attack(name, model, x, y, eps=EPS, generator=torch.Generator(device=device).manual_seed(0), **params)

        return run

    def robust(x_adv: Tensor) -> int:
        with torch.no_grad():
            return int((model(x_adv).argmax(1) == y).sum())

    for version in versions:
        reference = reference_cascade(model, version, classes=10)
        cases = {"ours": ours("autoattack", version=version), "torchattacks": lambda reference=reference: reference(x, y)}
        left = {name: robust(case()) for name, case in cases.items()}
        if abs(left["ours"] - left["torchattacks"]) > 3:
            raise SystemExit(f"autoattack {version}: robust samples ours / torchattacks {left}: not the same work")
        times = seconds_of(cases, repeats if version == "lite" else min(repeats, 3), device)
        result.append(Row("autoattack", f"{version}: ours / torchattacks MultiAttack(APGD, APGDT, Square) "
                          f"(robust {left['ours']}/{left['torchattacks']} of {batch})", ratios_of(times, "ours", "torchattacks"), 1.0))

    for name, params in FLOORS.items():
        recording = Recording(model)
        with analysis_mode(model):
            run_attack(name, recording, x, y, eps=EPS, generator=torch.Generator(device=device).manual_seed(0), **params)
        cases = {"ours": ours(name, **params), "floor": replay(model, x, recording.calls)}
        times = seconds_of(cases, repeats, device)
        calls = f"{len(recording.calls)} calls, {sum(size for size, _ in recording.calls)} sample-passes"
        result.append(Row("autoattack", f"{name} {params}: ours / the same model calls replayed ({calls})",
                          ratios_of(times, "ours", "floor"), 1.10))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=5)
    parser.add_argument("--batch", type=int, default=None, help="samples (default 32; 16 with --quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (16 if args.quick else 32)
    print(f"{machine(device)}; batch {batch} x 3x32x32, eps {EPS:.4f}, {args.repeats} interleaved repeats "
          f"(standard: at most 3), torchattacks {torchattacks.__version__}\n")
    print(table(quick_rows(device) if args.quick else rows(device, args.repeats, batch=batch)))


def quick_rows(device: torch.device) -> list[Row]:
    """The lite cascade and the floors on 16 samples, 2 rounds (the standard cascade takes minutes a run on a CPU)."""
    return rows(device, 2, batch=16, versions=("lite",))


if __name__ == "__main__":
    main()
