"""Train a small CNN on real 8x8 handwritten digits while compass_lightning watches it.

The data is scikit-learn's ``load_digits`` (1,797 images that ship inside the package: nothing is
downloaded). The data module normalises the pixels, as most pipelines do; the monitors are told
the mean and standard deviation, so mutants and perturbations happen in pixel space.

    python examples/digits.py                 # 10 epochs
    python examples/digits.py --fast          # CI mode: 2 quick epochs
    tensorboard --logdir runs                 # then open http://localhost:6006
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compass_lightning as cl
from compass_lightning.callbacks.pruning import DEFAULT_SWEEP
from compass_lightning.reporting.summary import run_report

# Pixel statistics of load_digits scaled to [0, 1] (computed once over the whole set).
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760


def digits_task() -> cl.Classification:
    """How the monitors read this data: (image, label) batches, normalised with the digits statistics."""
    return cl.Classification(mean=[DIGITS_MEAN], std=[DIGITS_STD])


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8x8 digits as normalised ``(N, 1, 8, 8)`` tensors, split 80/20 with a fixed seed.

    Args:
        batch_size: training and validation batch size.
        val_fraction: fraction of the 1,797 images held out for validation.
        seed: seed of the split.
        normalise: whether the images come normalised with the digits statistics (else as pixels in
            ``[0, 1]``, for a model that normalises them itself: ``DigitsClassifier(normalise_inputs=True)``).
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, normalise: bool = True) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.normalise = normalise

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).div(16.0).unsqueeze(1)
        if self.normalise:
            images = (images - DIGITS_MEAN) / DIGITS_STD
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        cut = int(len(labels) * (1 - self.val_fraction))
        self.train_set = TensorDataset(images[order[:cut]], labels[order[:cut]])
        self.val_set = TensorDataset(images[order[cut:]], labels[order[cut:]])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class DigitsClassifier(pl.LightningModule):
    """A small CNN with BatchNorm for 8x8 digits.

    Args:
        width: channels of the first convolution (the others scale with it).
        lr: Adam learning rate.
        normalise_inputs: normalise the images inside ``forward`` (for pixel data in ``[0, 1]``:
            ``DigitsDataModule(normalise=False)``).
    """

    def __init__(self, width: int = 16, lr: float = 3e-3, normalise_inputs: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.normalise_inputs = normalise_inputs
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - DIGITS_MEAN) / DIGITS_STD if self.normalise_inputs else x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    test_step = validation_step

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def compass(fast: bool = False) -> cl.Compass:
    """Every compass module in one callback (smaller probes and sweeps with ``fast``)."""
    return cl.Compass(
        task=digits_task(),
        probe_size=64 if fast else 256,
        robustness={
            "attacks": ["fgsm", "pgd", "deepfool"],
            "eps": [8 / 255, 2 / 255, 4 / 255, 16 / 255, 32 / 255],  # the first is the reference; all form a sweep
            "transfer_from": ["snapshot"],  # transfer from a frozen copy of this model, refreshed every 3 epochs
            "snapshot_every": 3,
        },
        interpretability={
            "methods": ["saliency", "integrated_gradients", "smoothgrad", "gradcam", "guided_ig"],
            "every_n_epochs": 1 if fast else 2,
            "probe_size": 16 if fast else 32,
        },
        neurons={"profile_size": 200 if fast else 1000},
        # after training: how much of the model is redundant, and what pruning does to robustness
        pruning={"methods": ["magnitude", "taylor", "obd"], "sweep": [0.1, 0.2, 0.3] if fast else list(DEFAULT_SWEEP)},
    )


def monitors(fast: bool = False) -> list[pl.Callback]:
    """The callbacks this example trains with (for the benchmarks)."""
    return [compass(fast)]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--fast", action="store_true", help="CI mode: 2 epochs")
    parser.add_argument("--logdir", default="runs", help="where TensorBoard logs go (default ./runs)")
    args = parser.parse_args(argv)
    epochs = 2 if args.fast else args.epochs

    pl.seed_everything(0, workers=True)
    logger = TensorBoardLogger(args.logdir, name="digits")
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[
            *monitors(args.fast),
            most_accurate := ModelCheckpoint(monitor="compass/basic/accuracy", mode="max", filename="accurate-{epoch}"),
            most_robust := ModelCheckpoint(monitor="compass/robustness/pgd/asr", mode="min", filename="robust-{epoch}"),
            latest := ModelCheckpoint(filename="latest-{epoch}"),  # the end of training, to compare with the two above
        ],
        deterministic=True,
        log_every_n_steps=5,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    log_dir = Path(logger.log_dir)
    print(f"\nTrained {epochs} epochs in {time.perf_counter() - started:.1f} s.")
    safe = {m: trainer.callback_metrics.get(f"compass/pruning/{m}/max_safe_rate") for m in ("magnitude", "taylor", "obd")}
    print("Largest pruning rate within 1 % accuracy: " + ", ".join(f"{m} {float(v):.2f}" for m, v in safe.items() if v is not None))
    print(f"Most accurate:       {Path(most_accurate.best_model_path).resolve()}   "
          f"(compass/basic/accuracy {most_accurate.best_model_score:.3f})")
    print(f"Most robust:         {Path(most_robust.best_model_path).resolve()}   "
          f"(compass/robustness/pgd/asr {most_robust.best_model_score:.3f})")
    print(f"Latest:              {Path(latest.best_model_path or latest.last_model_path).resolve()}")
    print(f"Pruning report:      {(log_dir / 'pruning_report.csv').resolve()}")
    print(f"TensorBoard logs:    {log_dir.resolve()}")
    print(f"Compass history:     {(log_dir / 'compass_history.jsonl').resolve()}")
    page, _ = run_report(log_dir)
    (log_dir / "compass_report.html").write_text(page, encoding="utf-8")
    print(f"HTML report:         {(log_dir / 'compass_report.html').resolve()}   (compass-lightning report {log_dir})")
    print(f"Open the dashboard:  tensorboard --logdir {Path(args.logdir).resolve()}   (then http://localhost:6006)")
    return log_dir


if __name__ == "__main__":
    main()
