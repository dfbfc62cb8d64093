"""A ResNet-18 on CIFAR-shaped data while the Compass watches it: a template for your own data module.

The data is generated, not downloaded: 10 classes of 3x32x32 images, each class a coloured
grating with its own orientation, frequency and colour, shifted and rotated a little at random,
under pixel noise and random occluding blobs — learnable, but not trivially, so accuracy,
robustness and pruning numbers mean something. Replace ``SyntheticCifarDataModule`` with your own
``LightningDataModule`` (normalised inputs, ``(image, label)`` batches) and give the Compass your
normalisation statistics through ``Classification(mean=..., std=...)``.

    python examples/cifar_like.py                # 8 epochs on 10,000 images (a GPU helps)
    python examples/cifar_like.py --fast         # a quick check: 1 epoch on 512 images, small probes
    tensorboard --logdir runs                    # then open http://localhost:6006
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compass_lightning as cl

MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]


def synthetic_cifar(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images in [0, 1] of shape (3, 32, 32) and their labels (10 classes), from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    labels = labels[torch.randperm(count, generator=generator)]
    # orientation tells classes apart only in pairs, frequency and colour only in halves: the model
    # must combine the cues, each of them blurred by per-image jitter
    angle = (labels % 5) * (math.pi / 5) + 0.2 * torch.randn(count, generator=generator)
    frequency = 0.3 + 0.25 * (labels // 5) + 0.05 * torch.randn(count, generator=generator)
    phase = 2 * math.pi * torch.rand(count, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along = xs * torch.cos(angle)[:, None, None] + ys * torch.sin(angle)[:, None, None]
    grating = torch.sin(frequency[:, None, None] * along + phase[:, None, None])  # (N, 32, 32)
    tint = (labels % 2).float()[:, None] + 0.3 * torch.randn(count, 1, generator=generator)
    hue = torch.cat([tint, 1 - tint, 0.5 * torch.ones_like(tint)], dim=1).clamp(0, 1)
    images = 0.5 + 0.35 * grating[:, None] * (0.4 + hue[:, :, None, None])
    blobs = torch.rand(count, 1, 4, 4, generator=generator) < 0.2  # occluders the model must look past
    images = torch.where(nn.functional.interpolate(blobs.float(), size=32) > 0, torch.rand(count, 3, 1, 1, generator=generator), images)
    images = images + 0.15 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), labels


class SyntheticCifarDataModule(pl.LightningDataModule):
    """Generated CIFAR-shaped data, normalised with :data:`MEAN`/:data:`STD` (a stand-in for CIFAR-10)."""

    def __init__(self, train_size: int = 10_000, val_size: int = 2_000, batch_size: int = 128) -> None:
        super().__init__()
        self.train_size, self.val_size, self.batch_size = train_size, val_size, batch_size

    def setup(self, stage: str | None = None) -> None:
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        train = synthetic_cifar(self.train_size, seed=1)
        val = synthetic_cifar(self.val_size, seed=2)
        self.train_set = TensorDataset((train[0] - mean) / std, train[1])
        self.val_set = TensorDataset((val[0] - mean) / std, val[1])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def resnet18_32(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 for 32x32 inputs: a 3x3 stem without max-pooling (random weights)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ResNetClassifier(pl.LightningModule):
    """A plain classification LightningModule around :func:`resnet18_32`."""

    def __init__(self, lr: float = 0.05, epochs: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = resnet18_32()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        logits = self(x)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):  # noqa: ANN201
        optimiser = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=self.hparams.lr,
                                                       total_steps=self.trainer.estimated_stepping_batches)
        return [optimiser], [{"scheduler": schedule, "interval": "step"}]


def compass(fast: bool = False) -> cl.Compass:
    """The Compass at its defaults (smaller probes and cheaper modules with ``fast``)."""
    task = cl.Classification(mean=MEAN, std=STD)
    if not fast:
        return cl.Compass(task=task)
    return cl.Compass(
        task=task,
        probe_size=32,
        mutation={"mutations": ["noise", "contrast"]},
        robustness={"attacks": ["fgsm"]},
        interpretability={"methods": ["saliency"], "steps": 8, "every_n_epochs": 1, "probe_size": 8},
        neurons={"profile_size": 64, "criteria": ["nc", "tknc"], "draws": 1},
        pruning={"methods": ["magnitude"], "sweep": [0.2, 0.4], "joint": False, "calibration_size": 32},
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--fast", action="store_true", help="1 epoch on 512 images with small probes")
    parser.add_argument("--logdir", default="runs")
    args = parser.parse_args(argv)
    epochs = 1 if args.fast else args.epochs
    pl.seed_everything(0, workers=True)
    # fast: batches of 32, so that one epoch of 512 images takes 16 steps and learns something
    data = SyntheticCifarDataModule(train_size=512, val_size=256, batch_size=32) if args.fast else SyntheticCifarDataModule()
    logger = TensorBoardLogger(args.logdir, name="cifar_like")
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[compass(args.fast), ModelCheckpoint(monitor="compass/robustness/fgsm/asr" if args.fast else "compass/robustness/pgd/asr", mode="min")],
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    started = time.perf_counter()
    trainer.fit(ResNetClassifier(epochs=epochs), datamodule=data)
    log_dir = Path(logger.log_dir)
    print(f"\nTrained {epochs} epochs in {time.perf_counter() - started:.1f} s.")
    print(f"Accuracy on the probe: {float(trainer.callback_metrics['compass/basic/accuracy']):.3f}")
    print(f"TensorBoard logs:    {log_dir.resolve()}")
    print(f"Report:              compass-lightning report {log_dir}")
    return log_dir


if __name__ == "__main__":
    main()
