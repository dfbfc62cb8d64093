"""Helper for test_ddp.py: validate the digits model with MutationMetrics or the Compass (every module,
deterministic settings) on 1 or 2 CPU processes; ``text``: the Compass on the TextCNN of
``text_models.py``; ``fail_on_rank_1``: MutationMetrics whose model call fails on the second process only. Each process prints ``rank R errors E`` at the end, and
``rank R warning ...`` for each compass warning.

    python tests/ddp_run.py DEVICES LOGDIR [mutation|compass|text|fail_on_rank_1]
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
from digits import DIGITS_MEAN, DIGITS_STD  # noqa: E402
from text_models import TASK, TextCNN  # noqa: E402

#: every module, with its attacks and attributions deterministic so that runs compare exactly
DETERMINISTIC = {
    "robustness": {"attacks": ["fgsm", "ifgsm"], "image_count": 2},
    "interpretability": {"methods": ["saliency", "integrated_gradients"], "random_baseline": False, "steps": 8,
                         "probe_size": 24, "image_count": 2},
    "neurons": {"profile_size": 64, "image_count": 2},
    "pruning": {"methods": ["magnitude", "taylor"], "rates": [0.4], "sweep": [0.2], "joint_rates": [0.4],
                "attacks": ["fgsm"], "attribution_methods": ["saliency"], "calibration_size": 48},
}


class FailsOnRankOne(cl.Classification):
    """The digits task, except that the monitor's model calls raise on the process of rank 1."""

    def logits(self, model, inputs):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        return super().logits(model, inputs)


if __name__ == "__main__":
    devices, logdir = int(sys.argv[1]), sys.argv[2]
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    which = sys.argv[3] if len(sys.argv) > 3 else "mutation"
    pl.seed_everything(0)
    model = DigitsClassifier()
    if which == "mutation":
        monitor = cl.MutationMetrics(task=digits_task(), probe_size=101, batch_size=16)  # 101: uneven shards
    elif which == "fail_on_rank_1":
        monitor = cl.MutationMetrics(task=FailsOnRankOne(mean=[DIGITS_MEAN], std=[DIGITS_STD]), probe_size=101,
                                     batch_size=16, mutations=["noise"])
    elif which == "text":
        model = TextCNN()
        monitor = cl.Compass(task=TASK, probe_size=61, batch_size=16, mutation={"mutations": ["token_replace", "data_missing"]},
                             **DETERMINISTIC)
    else:
        monitor = cl.Compass(task=digits_task(), probe_size=61, batch_size=16, **DETERMINISTIC)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        # the Compass logs hundreds of scalars, which ddp_spawn cannot send back (see test_ddp.py)
        strategy=("ddp_spawn" if which == "mutation" else "ddp") if devices > 1 else "auto",
        logger=pl.loggers.CSVLogger(logdir, name="run"),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cl.CompassWarning)
        trainer.validate(model, datamodule=None if which == "text" else DigitsDataModule(), verbose=False)
    # one write per line: print() writes the text and its newline apart, and two processes sharing
    # stdout can then interleave them ("rank 0 errors 1rank 1 errors 1")
    lines = [f"rank {trainer.global_rank} errors {monitor.error_count}"]
    lines += [f"rank {trainer.global_rank} warning {w.message}" for w in caught if issubclass(w.category, cl.CompassWarning)]
    for line in lines:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
