"""Shared test helpers: small models, the digits example, and reading logs back."""

from __future__ import annotations

import fnmatch
import math
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from digits import DigitsClassifier, DigitsDataModule, digits_task  # noqa: E402

__all__ = ["EVERY_MODULE", "DigitsClassifier", "DigitsDataModule", "assert_monitor_ran", "digits_task"]

#: Tags that are undefined by definition at some evaluations, so NaN there says nothing about a
#: failure: the neuron top-10 stability at the first evaluation (no previous top-10), and transfer
#: from the snapshot surrogate before a snapshot exists (the first evaluation).
#: One tag of every module of the Compass that a successful evaluation defines.
EVERY_MODULE = ("compass/basic/accuracy", "compass/mutation/*/accuracy", "compass/robustness/*/asr",
                "compass/interpretability/*/insertion", "compass/neurons/coverage/nc", "compass/pruning/*/max_safe_rate",
                "compass/score/*")
UNDEFINED_AT_TIMES = ("compass/neurons/sensitivity/top10_stability", "compass/robustness/transfer/snapshot/*")


def assert_monitor_ran(source: object, *required: str, undefined: tuple[str, ...] = UNDEFINED_AT_TIMES) -> list[dict]:
    """Fail unless the monitor really ran, so a test of something else (non-interference, DDP,
    resume, examples, the CLI) cannot pass because every analysis failed and was logged as NaN.

    ``source`` is a monitor (its ``history``), a log directory (its ``compass_history.jsonl``), a
    list of history records or of metric dicts, or one metric dict. Every evaluation must have
    ``compass/errors == 0`` and every ``compass/`` tag finite except the ``undefined`` patterns;
    each ``required`` pattern (fnmatch) must match a finite tag of some evaluation. Returns the
    metric dicts checked.
    """
    from compass_lightning.callbacks.base import CompassCallback
    from compass_lightning.reporting.history import read_history

    if isinstance(source, CompassCallback):
        source = source.history
    elif isinstance(source, (str, Path)):
        source = read_history(source)
    records = [source] if isinstance(source, Mapping) else list(source)
    assert records, "the monitor recorded no evaluation"
    evaluations = [dict(r["metrics"]) if "metrics" in r else dict(r) for r in records]
    for index, metrics in enumerate(evaluations):
        values = {tag: float(v) if v is not None else math.nan for tag, v in metrics.items()}
        assert values.get("compass/errors") == 0, f"evaluation {index}: compass/errors = {values.get('compass/errors')}"
        undefined_now = [t for t, v in values.items() if not math.isfinite(v) and t.startswith("compass/")
                         and not any(fnmatch.fnmatchcase(t, p) for p in undefined)]
        assert not undefined_now, f"evaluation {index}: {len(undefined_now)} tags are NaN, e.g. {undefined_now[:5]}"
    for pattern in required:
        assert any(
            fnmatch.fnmatchcase(t, pattern) and v is not None and math.isfinite(float(v))
            for metrics in evaluations for t, v in metrics.items()
        ), f"no evaluation logged a finite {pattern!r}"
    return evaluations


class AwkwardNet(nn.Module):
    """Everything an analysis can disturb: BatchNorm, Dropout, an in-place ReLU, a frozen layer,
    a submodule left in train mode inside an eval model, and pre-populated parameter gradients."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(6, 6)
        self.head = nn.Linear(6, classes)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(self.drop(self.frozen(h)))


def awkward_net() -> AwkwardNet:
    torch.manual_seed(0)
    net = AwkwardNet()
    net.eval()
    net.drop.train()  # left in train mode by the user inside an eval model
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    return net


def snapshot(module: nn.Module) -> dict:
    """Every flag, buffer, parameter, gradient and requires_grad of a module, copied."""
    return {
        "training": {name: m.training for name, m in module.named_modules()},
        "buffers": {name: b.clone() for name, b in module.named_buffers()},
        "parameters": {name: p.detach().clone() for name, p in module.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()},
        "grad_ids": {name: id(p.grad) for name, p in module.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in module.named_parameters()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_ids"] == before["grad_ids"]
    for kind in ("buffers", "parameters", "grads"):
        assert before[kind].keys() == after[kind].keys()
        for name, value in before[kind].items():
            other = after[kind][name]
            assert (value is None) == (other is None), f"{kind} {name}"
            if value is not None:
                assert torch.equal(value, other), f"{kind} {name} changed"


def make_trainer(tmp_path: Path, callbacks: list, *, epochs: int = 2, logger: object = "tensorboard", **kwargs) -> pl.Trainer:
    """A quiet CPU trainer for the digits example."""
    if logger == "tensorboard":
        logger = pl.loggers.TensorBoardLogger(tmp_path, name="run")
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks))
    kwargs.setdefault("enable_progress_bar", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        enable_model_summary=False,
        log_every_n_steps=1,
        deterministic=True,
        **kwargs,
    )


def read_events(log_dir: str | Path):
    """A loaded TensorBoard EventAccumulator for the event file(s) in ``log_dir``."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    return accumulator


@pytest.fixture
def digits() -> DigitsDataModule:
    data = DigitsDataModule()
    data.setup()
    return data


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield


def train_digits(epochs: int = 4, seed: int = 0, width: int = 16) -> DigitsClassifier:
    """A DigitsClassifier trained with a plain loop (faster than a Trainer), returned in eval mode."""
    torch.manual_seed(seed)
    data = DigitsDataModule()
    data.setup()
    model = DigitsClassifier(width=width)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.train_set.tensors
    for _ in range(epochs):
        for index in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimiser.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def trained_digits():
    """(model in eval mode, validation pixels in [0, 1], labels, task) of a digits model trained 4 epochs."""
    data = DigitsDataModule()
    data.setup()
    x, y = data.val_set.tensors
    task = digits_task()
    return train_digits(), task.to_pixels(x), y, task


class StateBracket:
    """Two callbacks to place around a monitor: ``before`` makes the model awkward (pre-populated
    parameter gradients, a BatchNorm left in train mode, a frozen layer) and snapshots it right
    before the monitor's hook; ``after`` checks right after it that nothing changed."""

    def __init__(self, hooks: tuple[str, ...] = ("on_validation_epoch_end", "on_test_epoch_end")) -> None:
        self.checked = 0
        bracket = self

        class Before(pl.Callback):
            def prepare(self, trainer, pl_module):
                torch.manual_seed(123)
                for index, p in enumerate(pl_module.parameters()):
                    p.requires_grad_(index != 0)  # the first layer frozen
                    p.grad = torch.randn_like(p)
                for module in pl_module.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        module.train()
                        break
                bracket.state = snapshot(pl_module)
                bracket.rng = torch.random.get_rng_state()

        class After(pl.Callback):
            def check(self, trainer, pl_module):
                assert_same_state(bracket.state, snapshot(pl_module))
                assert torch.equal(bracket.rng, torch.random.get_rng_state())
                bracket.checked += 1

        for hook in hooks:
            setattr(Before, hook, Before.prepare)
            setattr(After, hook, After.check)

        self.before, self.after = Before(), After()

    def around(self, monitor: pl.Callback) -> list[pl.Callback]:
        return [self.before, monitor, self.after]
