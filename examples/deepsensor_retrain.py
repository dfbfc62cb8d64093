"""DeepSensor's last step: retrain on the test errors its swarm generates, and compare with baselines.

DeepSensor (``research/deepsensor.md`` §3, robustness) generates test inputs that maximise the
sensitive neurons, then retrains the model on 500 benign inputs plus 500 generated ones for 20
epochs (batch 32) and reports the drop of the attack success rate (ΔASR). Here, on the digits model
(scikit-learn's ``load_digits``, pixels in ``[0, 1]``, nothing downloaded):

1. train the digits CNN for 10 epochs (Lightning, no monitors);
2. ``generate_tests`` on 500 correctly classified training images (16 particles, 10 generations,
   ‖δ‖₂ ≤ 1): the misclassified tests, each with its seed's correct label;
3. fine-tune four copies for 20 epochs on the 500 seeds plus, as many of each as there are generated
   errors (at most 500): (a) DeepSensor's errors; (b) the seeds plus uniform noise of the same L2 norm;
   (c) FGSM examples with the same L2 norm (ε = norm / 8, the 64 pixels' L∞ equivalent); and (d) the
   500 seeds alone, the control;
4. report clean accuracy on the 360 validation images and the white-box ASR of FGSM and PGD-10
   (L∞ ε = 0.1) on them, before and after, as DeepSensor's ΔASR table: ``ΔASR = ASR before − after``.

The trained model itself is never changed (each retraining works on a copy).

    python examples/deepsensor_retrain.py           # about a minute on 2 cores
    python examples/deepsensor_retrain.py --fast    # CI mode: fewer seeds and epochs
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from compass_lightning.attacks import run_attack
from compass_lightning.neurons import generate_tests
from digits import DigitsClassifier, DigitsDataModule

EPS = 0.1
BOUND = 1.0  # ‖δ‖₂ of the generated tests: the papers' MNIST setting


def accuracy_and_asr(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Clean accuracy, and the ASR (the fraction of correctly classified inputs the attack fools) of
    FGSM and PGD-10 at L∞ ε = 0.1."""
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    out = {"accuracy": correct.float().mean().item()}
    for attack in ("fgsm", "pgd"):
        x_adv = run_attack(attack, model, x[correct], y[correct], eps=EPS, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out[f"{attack}_asr"] = (model(x_adv).argmax(1) != y[correct]).float().mean().item()
    return out


def fine_tune(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` trained on ``(x, y)`` for ``epochs`` epochs (Adam 1e-3, batch 32, as the papers' 20 × 32)."""
    torch.manual_seed(seed)
    copy_ = copy.deepcopy(model).train()
    optimiser = torch.optim.Adam(copy_.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(x)).split(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(copy_(x[index]), y[index]).backward()
            optimiser.step()
    return copy_.eval()


def extra_inputs(model: nn.Module, seeds: Tensor, labels: Tensor, tests: Tensor, errors: Tensor, limit: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per retraining set, the extra inputs and their (correct) labels: DeepSensor's errors, and as
    many noise and FGSM inputs of the same L2 norm built on the same seeds."""
    seed_index, generation = errors.nonzero(as_tuple=True)
    keep = torch.randperm(len(seed_index), generator=torch.Generator().manual_seed(0))[:limit]
    seed_index, generation = seed_index[keep], generation[keep]
    generated = tests[seed_index, generation]
    base, y = seeds[seed_index], labels[seed_index]
    norms = (generated - base).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    noise = torch.rand(base.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noisy = (base + noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * norms).clamp(0, 1)
    model.eval()
    per_pixel = float(norms.mean()) / base[0].numel() ** 0.5  # the L∞ step whose L2 norm matches on average
    fgsm = run_attack("fgsm", model, base, y, eps=per_pixel, generator=torch.Generator().manual_seed(0))
    return {"deepsensor": (generated, y), "noise": (noisy, y), "fgsm": (fgsm.detach(), y)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="CI mode: 100 seeds, 3 training and 5 retraining epochs")
    parser.add_argument("--logdir", default="runs", help="where Lightning's files go (default ./runs)")
    args = parser.parse_args(argv)
    seeds_count, epochs, retrain_epochs = (100, 3, 5) if args.fast else (500, 10, 20)

    pl.seed_everything(0, workers=True)
    data = DigitsDataModule(normalise=False)
    model = DigitsClassifier(normalise_inputs=True)
    trainer = pl.Trainer(max_epochs=epochs, default_root_dir=Path(args.logdir) / "deepsensor_retrain", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    trainer.fit(model, datamodule=data)
    model.eval()
    x_train, y_train = data.train_set.tensors
    x_val, y_val = data.val_set.tensors
    with torch.no_grad():
        correct = (model(x_train).argmax(1) == y_train).nonzero().squeeze(1)[:seeds_count]
    seeds, labels = x_train[correct], y_train[correct]
    found = generate_tests(model, seeds, labels, particles=16, generations=10, bound=BOUND, seed=0)
    print(f"\nDeepSensor on {len(seeds)} seeds: {int(found.errors_found.sum())} test errors "
          f"({float(found.error_rate):.0%} of the seeds), {int(found.categories.sum())} error categories, "
          f"fitness {float(found.fitness[:, 0].mean()):.3f} -> {float(found.fitness[:, -1].mean()):.3f}")

    before = [p.detach().clone() for p in model.parameters()]
    extras = extra_inputs(model, seeds, labels, found.tests, found.errors, limit=len(seeds))
    results = {"trained model": accuracy_and_asr(model, x_val, y_val)}
    for name, (x_extra, y_extra) in {**extras, "seeds only": (seeds[:0], labels[:0])}.items():
        tuned = fine_tune(model, torch.cat([seeds, x_extra]), torch.cat([labels, y_extra]), retrain_epochs)
        results[f"retrained: {name}"] = accuracy_and_asr(tuned, x_val, y_val)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every retraining used a copy

    reference = results["trained model"]
    extra = len(extras["deepsensor"][0])
    print(f"\nRetrained {retrain_epochs} epochs on the {len(seeds)} seeds + {extra} extra inputs "
          f"(validation: {len(y_val)} images; attacks L∞ ε = {EPS}):\n")
    print("| model | clean accuracy | FGSM ASR | PGD-10 ASR | ΔASR FGSM | ΔASR PGD-10 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        delta = [reference[f"{a}_asr"] - r[f"{a}_asr"] for a in ("fgsm", "pgd")]
        print(f"| {name} | {r['accuracy']:.3f} | {r['fgsm_asr']:.3f} | {r['pgd_asr']:.3f} | {delta[0]:+.3f} | {delta[1]:+.3f} |")
    return results


if __name__ == "__main__":
    main()
