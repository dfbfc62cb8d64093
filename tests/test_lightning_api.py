"""The Lightning internals the monitors read (``compass_lightning/callbacks/_lightning.py``), each on a
real Trainer: a Lightning release that renames one fails here, loudly, rather than silently
changing when a bad size is caught or which checkpoint schedules are accepted."""

from __future__ import annotations

import lightning.pytorch as pl
from conftest import DigitsClassifier, DigitsDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from compass_lightning.callbacks._lightning import (
    checkpoint_every_n_epochs,
    launches_with_multiprocessing,
    training_loaders,
    validation_loaders,
)


class AtFitStart(pl.Callback):
    """Reads the data sources where the monitors do: at fit start, before Lightning loads a loader."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.loaded = (trainer.train_dataloader, trainer.val_dataloaders)
        self.training, self.validation = training_loaders(trainer), validation_loaders(trainer)


def _fit(tmp_path, model: pl.LightningModule, **data) -> AtFitStart:
    seen = AtFitStart()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[seen])
    trainer.fit(model, **data)
    return seen


def test_the_data_sources_give_the_loaders_lightning_will_load_from_a_datamodule(tmp_path):
    seen = _fit(tmp_path, DigitsClassifier(), datamodule=DigitsDataModule(batch_size=16))
    assert seen.loaded == (None, None)  # not loaded yet at fit start: the reason the sources are read
    assert isinstance(seen.training, DataLoader) and seen.training.batch_size == 16
    assert isinstance(seen.validation, DataLoader)


def test_the_data_sources_give_loaders_passed_to_fit_and_none_without(tmp_path):
    data = DigitsDataModule()
    data.setup()
    loader = data.train_dataloader()
    seen = _fit(tmp_path, DigitsClassifier(), train_dataloaders=loader)
    assert seen.training is loader and seen.validation is None


def test_the_checkpoint_schedule_is_read_from_its_constructor_arguments():
    assert checkpoint_every_n_epochs(ModelCheckpoint()) == 1
    assert checkpoint_every_n_epochs(ModelCheckpoint(every_n_epochs=3)) == 3
    assert checkpoint_every_n_epochs(ModelCheckpoint(every_n_train_steps=10)) is None
    assert checkpoint_every_n_epochs(ModelCheckpoint(train_time_interval=__import__("datetime").timedelta(minutes=5))) is None


def test_a_multiprocessing_launcher_is_recognised(tmp_path):
    spawn = pl.Trainer(strategy="ddp_spawn", devices=2, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    plain = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    ddp = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert launches_with_multiprocessing(spawn)
    assert not launches_with_multiprocessing(plain) and not launches_with_multiprocessing(ddp)
