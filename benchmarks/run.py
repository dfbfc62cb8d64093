"""The whole benchmark suite: one Markdown table of side-by-side ratios, then the scaling table.

    python benchmarks/run.py                 # everything (CPU: about an hour on 2 cores)
    python benchmarks/run.py --quick         # fewer rounds, smaller sizes: under 10 minutes on 2 CPU cores
    python benchmarks/run.py --device cuda   # the same on a GPU (the ResNet-18 fit overhead included)
    python benchmarks/run.py --only attacks attribution

Every comparison is measured in one process run, interleaved (A B A B ...) after a warm-up, and
reported as the median of the per-round ratios with its min-max (see ``common.py``). The parts:

* ``overhead``: ``fit`` of the digits example with each callback at its defaults, and with
  ``Compass()``, against a plain ``fit``; the Compass' sample-passes against the same modules as
  separate callbacks; on a GPU (or without ``--quick``) also the ResNet-18 example;
* ``attacks``: every attack torchattacks also has, against torchattacks and its pass floor; PGD
  against ART;
* ``autoattack``: the AutoAttack cascade (lite, and standard without ``--quick``) against
  torchattacks' ``MultiAttack`` of the same attacks; APGD and Square against their pass floors;
* ``attribution``: integrated gradients against Captum, insertion/deletion against Quantus and its
  forward floor, every gradient method against its pass floor;
* ``pruning``: the pruning sweep against its floor and ModelPruning-style masking, Taylor and OBD
  importances against one forward+backward;
* ``neurons``: layer deviation (Grad-CAM of every layer) and coverage against their floors;
* ``scaling``: time and peak memory of a Compass evaluation for probe sizes 64/256/1024 and model
  widths x1/x2/x4 (``memory.py``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attacks  # noqa: E402
import attribution  # noqa: E402
import autoattack  # noqa: E402
import memory  # noqa: E402
import neurons  # noqa: E402
import overhead  # noqa: E402
import pruning  # noqa: E402
import tokens  # noqa: E402
from common import Row, arguments, machine, table  # noqa: E402


def parts(device: torch.device, quick: bool) -> dict[str, Callable[[], list[Row]]]:
    """Each part of the suite, as a function returning its rows (quick: fewer rounds, smaller sizes)."""
    cpu_quick = quick and device.type == "cpu"

    def fit_overhead() -> list[Row]:
        rows = overhead.rows("digits", device, 2 if quick else 5, epochs=5 if quick else 10)
        if not cpu_quick:  # a ResNet-18 fit takes minutes per epoch on a CPU
            rows += overhead.rows("cifar_like", device, 1 if quick else 3, epochs=2, callbacks=("Compass",), passes=False)
        return rows

    return {
        "overhead": fit_overhead,
        "attacks": lambda: attacks.rows(device, 3 if quick else 7, quick=cpu_quick, batch=32 if quick else 64),
        "autoattack": lambda: autoattack.quick_rows(device) if quick else autoattack.rows(device, 5),
        "attribution": lambda: attribution.rows(device, 3 if quick else 5),
        "pruning": lambda: pruning.rows(device, 3 if quick else 5),
        "neurons": lambda: neurons.rows(device, 2 if quick else 3) + neurons.validation_rows(device, 2 if quick else 3),
        "text": lambda: tokens.rows(device, 3 if quick else 5),
    }


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="parts to run: overhead attacks autoattack attribution pruning "
                        "neurons text scaling (default: all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    rows: list[Row] = []
    for name, part in parts(device, args.quick).items():
        if args.only and name not in args.only:
            continue
        print(f"[{time.perf_counter() - started:6.0f} s] {name} ...", file=sys.stderr, flush=True)
        rows += part()
    scaling = None
    if not args.only or "scaling" in args.only:
        print(f"[{time.perf_counter() - started:6.0f} s] scaling ...", file=sys.stderr, flush=True)
        scaling = memory.scaling_table(args.device, quick=args.quick)
    mode = "--quick" if args.quick else "full"
    print(f"\n{machine(device)}; {mode} run, {time.perf_counter() - started:.0f} s\n")
    if rows:
        print(table(rows))
        missed = [row for row in rows if row.met is False]
        print(f"\n{sum(row.met is True for row in rows)} targets met, {len(missed)} missed.")
    if scaling:
        print(f"\n{scaling}")


if __name__ == "__main__":
    main()
