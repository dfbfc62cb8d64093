"""Adversarial training watched by the AutoAttack cascade, and a gradient-masked model it sees through.

Three digits models (scikit-learn's ``load_digits``, pixels in ``[0, 1]``) are trained the same way
and monitored by the same ``AttackSuccessRate(attacks=["fgsm", "pgd", "autoattack"])`` at
ε = 0.2 (L∞; the 8x8 digits need a larger budget than 8/255 for attacks to matter, as MNIST does):

* ``standard``: plain training, the baseline;
* ``pgd_trained``: PGD adversarial training (Madry et al. 2018: each batch replaced by PGD-7
  examples at the same ε, crafted on the model in eval mode);
* ``masked``: plain training of the same network behind a quantising input layer (5 grey levels,
  ``round``). Its input gradient is zero almost everywhere ("shattered gradients", Athalye et al.
  2018), so FGSM and PGD see a flat loss and report the model as robust; it is not: Square, which
  needs no gradient, breaks it, the cascade's robust accuracy shows it, and the gradient-masking
  checks ``zero_gradients`` and ``black_box`` fire (each with one warning).

    python examples/adversarial_training.py            # 10 epochs per model, about a minute on 2 cores
    python examples/adversarial_training.py --fast     # CI mode: 2 epochs, a 64-sample probe
    tensorboard --logdir runs/adversarial_training     # the three runs side by side

It prints, per model, the clean accuracy and the robust accuracy under each attack at the last
epoch, and which checks fired; ``robust_accuracy.png`` in the log directory draws the curves of
the three runs side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

import compass_lightning as cl
from compass_lightning.attacks import run_attack
from digits import DigitsClassifier, DigitsDataModule

matplotlib.use("Agg")  # files only: no display is needed (or present on a CI machine)
import matplotlib.pyplot as plt  # noqa: E402

EPS = 0.2
ATTACKS = ("fgsm", "pgd", "autoattack")
CHECKS = ("randomised", "probabilities", "zero_gradients", "black_box", "dynamic")


class PGDTrained(DigitsClassifier):
    """The digits CNN trained on PGD examples (``steps`` steps of ``eps / 4`` within ``eps``, L∞).

    The examples are crafted with the model in eval mode (BatchNorm's running statistics are not
    updated by the attack's forwards) by the library's own ``pgd``, which leaves the parameters'
    ``.grad`` alone, so the optimiser step sees only the loss on the adversarial batch.

    Example:
        >>> model = PGDTrained(eps=0.1, steps=2)
        >>> loss = model.training_step((torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])), 0)
        >>> bool(loss > 0) and model.training
        True
    """

    def __init__(self, eps: float = EPS, steps: int = 7, **kwargs) -> None:  # noqa: ANN003 - DigitsClassifier's
        super().__init__(normalise_inputs=True, **kwargs)
        self.eps, self.steps = eps, steps
        self.generator = torch.Generator().manual_seed(0)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.eval()
        x_adv = run_attack("pgd", self, x, y, eps=self.eps, steps=self.steps, alpha=self.eps / 4, generator=self.generator)
        self.train()
        return super().training_step((x_adv.detach(), y), batch_idx)


class Quantised(DigitsClassifier):
    """The digits CNN behind an input quantiser to ``levels`` grey levels: a deliberately
    gradient-masked model (the rounding's gradient is zero, so no gradient reaches the input).

    Example:
        >>> model = Quantised().eval()
        >>> x = torch.rand(2, 1, 8, 8, requires_grad=True)
        >>> model(x).sum().backward()
        >>> bool(x.grad.abs().max() == 0)
        True
    """

    def __init__(self, levels: int = 5, **kwargs) -> None:  # noqa: ANN003 - DigitsClassifier's
        super().__init__(normalise_inputs=True, **kwargs)
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.levels - 1
        return super().forward(torch.round(x.clamp(0, 1) * steps) / steps)


MODELS = {"standard": lambda: DigitsClassifier(normalise_inputs=True), "pgd_trained": PGDTrained, "masked": Quantised}


class Recorder(pl.Callback):
    """Every epoch's logged numbers (``trainer.callback_metrics`` after validation), as floats."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # in Lightning 2 the epoch's validation (and so every monitor) has run by now
        self.epochs.append({name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1})


def monitor(fast: bool) -> cl.AttackSuccessRate:
    """FGSM, PGD-10 and the AutoAttack cascade (lite) at ε = 0.2, with the gradient-masking checks."""
    return cl.AttackSuccessRate(attacks=list(ATTACKS), eps=EPS, checks=True, probe_size=64 if fast else 256)


def fit(name: str, epochs: int, log_dir: Path, fast: bool) -> list[dict[str, float]]:
    """Train the model called ``name`` for ``epochs`` epochs under the monitor; its per-epoch numbers."""
    pl.seed_everything(0, workers=True)
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(log_dir, name=name, version=""),
        callbacks=[monitor(fast), recorder],
        enable_checkpointing=False,
        deterministic=True,
        log_every_n_steps=5,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(MODELS[name](), datamodule=DigitsDataModule(normalise=False))
    return recorder.epochs


def summary(runs: dict[str, list[dict[str, float]]]) -> str:
    """The last epoch of each run as a Markdown table: clean and robust accuracies, and the checks that fired."""
    head = "| model | clean accuracy | " + " | ".join(f"{a} robust accuracy" for a in ATTACKS) + " | checks fired |"
    lines = [head, "|" + "---|" * (3 + len(ATTACKS))]
    for name, epochs in runs.items():
        last = epochs[-1]
        robust = [f"{last[f'compass/robustness/{a}/robust_accuracy']:.3f}" for a in ATTACKS]
        fired = [c for c in CHECKS if last.get(f"compass/robustness/checks/{c}") == 1.0] or ["none"]
        lines.append(f"| {name} | {last['val_acc']:.3f} | " + " | ".join(robust) + f" | {', '.join(fired)} |")
    return "\n".join(lines)


def figure(runs: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Clean and robust accuracy per epoch, one panel per run, the same colour per attack in each."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), sharey=True, layout="constrained")
    for axis, (name, epochs) in zip(axes, runs.items()):
        x = range(1, len(epochs) + 1)
        axis.plot(x, [e["val_acc"] for e in epochs], "k--", label="clean")
        for attack in ATTACKS:
            axis.plot(x, [e[f"compass/robustness/{attack}/robust_accuracy"] for e in epochs], marker="o", label=attack)
        axis.set(title=name, xlabel="epoch", ylim=(0, 1.02))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (L∞ ε = {EPS})")
    axes[-1].legend(loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per model (default 10)")
    parser.add_argument("--fast", action="store_true", help="CI mode: 2 epochs, a 64-sample probe")
    parser.add_argument("--logdir", default="runs", help="where TensorBoard logs go (default ./runs)")
    args = parser.parse_args(argv)
    log_dir = Path(args.logdir) / "adversarial_training"
    epochs = 2 if args.fast else args.epochs
    runs = {name: fit(name, epochs, log_dir, args.fast) for name in MODELS}
    print(f"\nAfter {epochs} epochs (L∞ ε = {EPS}, probe of {64 if args.fast else 256} validation images):\n")
    print(summary(runs))
    figure(runs, log_dir / "robust_accuracy.png")
    print(f"\nCurves:              {(log_dir / 'robust_accuracy.png').resolve()}")
    print(f"Open the dashboard:  tensorboard --logdir {log_dir.resolve()}   (then http://localhost:6006)")
    return log_dir


if __name__ == "__main__":
    main()
