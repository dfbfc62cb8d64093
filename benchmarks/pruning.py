"""The pruning sweep of ``PruningAnalysis`` against its floor and against ModelPruning-style masking.

    python benchmarks/pruning.py              # CPU, 5 interleaved repeats
    python benchmarks/pruning.py --device cuda

One run measures, interleaved after a warm-up, on the same CIFAR-shaped CNN (BatchNorm, 4 conv
layers), a probe of 256 images and 256 calibration images:

* **sweep**: the callback's own evaluation (``PruningAnalysis.evaluate`` with magnitude, Taylor
  and OBD importances, the default 19-rate sweep plus the 4 logged rates, no joint analysis),
  against its **floor**: one probe forward for the unpruned model and per method and rate, plus one forward+backward of the
  calibration set for each gradient importance (Taylor, OBD);
* **importances**: Taylor and OBD each against one forward+backward of the calibration set (OBD
  needs per-sample gradients, which cost more than one batched backward), and OBD's closed form
  (:mod:`compass_lightning.pruning.fisher`) against the ``torch.func.vmap`` per-sample gradients it replaced;
* **masking**: the same magnitude sweep done as Lightning's ``ModelPruning`` does it — a deep copy
  per rate, ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` (a forward
  pre-hook applies the mask), one probe forward — against ours (one working copy re-masked per
  rate), with the same accuracies checked first.

Target: the sweep within 1.2x of its floor.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, arguments, interleaved, machine, model_for_benchmark, table  # noqa: E402

from compass_lightning import Classification, Evaluation, ProbeSet, PruningAnalysis  # noqa: E402
from compass_lightning.engine.guard import analysis_mode  # noqa: E402
from compass_lightning.pruning import PruningSweep, importance, prunable  # noqa: E402
from compass_lightning.pruning.importance import _vmap_squares  # noqa: E402
from compass_lightning.pruning.parameters import prunable_weights  # noqa: E402

METHODS = ("magnitude", "taylor", "obd")


def rows(device: torch.device, repeats: int, *, probe_size: int = 256, batch_size: int = 128, width: int = 16) -> list[Row]:
    """The sweep against its floor and ModelPruning-style masking; Taylor and OBD against a forward+backward."""
    warnings.filterwarnings("ignore")
    model = model_for_benchmark(width=width).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(probe_size, 3, 32, 32, generator=generator)
    with torch.no_grad():
        y = model(x.to(device)).argmax(1).cpu()  # labels the model gets right, so pruning has something to lose
    probe = ProbeSet(x, y)
    calibration = ProbeSet(torch.rand(256, 3, 32, 32, generator=generator), y.roll(1))

    monitor = PruningAnalysis(list(METHODS), joint=False, batch_size=batch_size, task=Classification())
    monitor._calibration = calibration
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu")
    rates = len(monitor._grid())
    chunks = lambda t: list(ProbeSet.chunks(t, batch_size, device))  # noqa: E731
    probe_chunks, calibration_batches = chunks(x), list(zip(chunks(calibration.inputs), chunks(calibration.targets)))

    def sweep() -> None:
        with analysis_mode(model):
            monitor.evaluate(trainer, Evaluation(model, probe, Classification(), batch_size=batch_size))

    working = copy.deepcopy(model).requires_grad_(True)

    def forward_backward() -> None:
        for inputs, targets in calibration_batches:
            F.cross_entropy(working(inputs), targets).backward()

    def floor() -> None:
        with analysis_mode(model), torch.no_grad():
            for _ in range(1 + len(METHODS) * rates):  # the unpruned reference and every pruned copy
                for chunk in probe_chunks:
                    model(chunk)
        for _ in ("taylor", "obd"):
            forward_backward()

    def importances(method: str):
        return lambda: importance(model, method, calibration_batches)

    def obd_by_vmap() -> None:  # the reference the closed form replaced: every per-sample gradient
        reference = copy.deepcopy(model).requires_grad_(False)
        weights = prunable_weights(reference)
        for w in weights.values():
            w.requires_grad_(True)
        for inputs, targets in calibration_batches:
            _vmap_squares(reference, weights, inputs, targets, F.cross_entropy)

    grid = monitor._grid()

    def masking() -> list[float]:
        accuracies = []
        for rate in grid:
            copy_ = copy.deepcopy(model)
            torch_prune.global_unstructured(
                [(e.module, e.attribute) for e in prunable(copy_).values()], torch_prune.L1Unstructured, amount=rate
            )
            with torch.no_grad():
                accuracies.append(float(sum((copy_(c).argmax(1).cpu() == t).sum() for c, t in zip(probe_chunks, y.split(batch_size)))))
        return accuracies

    def ours() -> list[float]:
        working = PruningSweep(model, importance(model, "magnitude", []))
        accuracies = []
        for rate in grid:
            pruned = working.at(rate)
            with torch.no_grad():
                accuracies.append(float(sum((pruned(c).argmax(1).cpu() == t).sum() for c, t in zip(probe_chunks, y.split(batch_size)))))
        return accuracies

    assert masking() == ours(), "ModelPruning-style masking and our sweep disagree"
    pairs = {
        f"sweep ({len(METHODS)} methods x {rates} rates) / its floor": (sweep, floor, 1.2),
        "magnitude sweep: ours / ModelPruning-style masking": (ours, masking, None),
        "taylor importance / one forward+backward of the calibration set": (importances("taylor"), forward_backward, 1.10),
        "obd importance (empirical Fisher) / one forward+backward of the calibration set": (importances("obd"), forward_backward, 1.20),
        "obd importance: closed form / every per-sample gradient by torch.func.vmap": (importances("obd"), obd_by_vmap, None),
    }
    ratios = interleaved({name: (a, b) for name, (a, b, _) in pairs.items()}, repeats, device)
    return [Row("pruning", name, ratios[name], target) for name, (_, _, target) in pairs.items()]


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, repeats=5)
    parser.add_argument("--probe", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv layer")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine(device)}; probe {args.probe}, calibration 256, {args.repeats} interleaved repeats\n")
    print(table(rows(device, 3 if args.quick else args.repeats, probe_size=args.probe, batch_size=args.batch_size,
                     width=args.width)))


if __name__ == "__main__":
    main()
