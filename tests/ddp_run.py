"""Helper for test_ddp.py: validate the digits model with MutationMetrics on 1 or 2 CPU processes.

    python tests/ddp_run.py DEVICES LOGDIR
"""

import logging
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import DigitsClassifier, DigitsDataModule, digits_task  # noqa: E402

import compass_lightning as cl  # noqa: E402

if __name__ == "__main__":
    devices, logdir = int(sys.argv[1]), sys.argv[2]
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0)
    model = DigitsClassifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=pl.loggers.CSVLogger(logdir, name="run"),
        callbacks=[cl.MutationMetrics(task=digits_task(), probe_size=101, batch_size=16)],  # 101: uneven shards
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.set_num_threads(1)
    trainer.validate(model, datamodule=DigitsDataModule(), verbose=False)
