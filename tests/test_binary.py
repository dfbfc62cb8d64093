"""Single-logit binary classifiers (sigmoid and BCE, logits ``(N, 1)``, float targets ``(N, 1)``)
in every module, and the targets a classifier cannot have, refused at fit start (issue 17 item 2).

References nobody here wrote: torch's ``binary_cross_entropy_with_logits`` for the loss and the
attack direction, scikit-learn for accuracy and ROC AUC of ``sigmoid(z)``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import EVERY_MODULE, DigitsClassifier, DigitsDataModule, assert_monitor_ran, digits_task, make_trainer
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import compass_lightning as cl
from compass_lightning.attacks import run_attack

SMALL = {
    "mutation": {"mutations": ["noise", "label_error"]},
    "robustness": {"attacks": ["fgsm", "pgd", "deepfool", "cw"], "eps": [0.3], "image_count": 2},
    "interpretability": {"methods": ["saliency", "deeplift", "gradcam"], "steps": 8, "every_n_epochs": 1, "probe_size": 8},
    "neurons": {"profile_size": 64, "image_count": 2},
    "pruning": {"methods": ["magnitude", "taylor"], "rates": [0.4], "sweep": [0.2], "joint_rates": [0.4],
                "attribution_steps": 8, "calibration_size": 32},
}


class BinaryDigits(DigitsClassifier):
    """Is the digit 5 or more? One logit, trained with BCE on float targets (N, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net[-1] = nn.Linear(self.net[-1].in_features, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x), y))


class Relabelled(DigitsDataModule):
    """The digits with their labels mapped by ``relabel`` (the images as they are)."""

    def __init__(self, relabel) -> None:  # noqa: ANN001
        super().__init__()
        self.relabel = relabel

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for name in ("train_set", "val_set"):
            x, y = getattr(self, name).tensors
            setattr(self, name, TensorDataset(x, self.relabel(y)))


def large(y):  # noqa: ANN001, ANN201 - BCE targets: floats of shape (N, 1)
    return (y >= 5).float()[:, None]


def test_a_single_logit_is_a_binary_classifier_whose_loss_is_bce_and_whose_attacks_ascend_it():
    torch.manual_seed(0)
    task, z, y = cl.Classification(), torch.randn(6, 1), torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
    targets = task.read_targets(y)
    assert targets.tolist() == [1, 0, 1, 1, 0, 0] and targets.dtype == torch.long
    assert task.loss(z, targets).item() == pytest.approx(F.binary_cross_entropy_with_logits(z, y).item(), abs=1e-6)
    assert task.predictions(z).tolist() == (z[:, 0] > 0).long().tolist()
    metrics = task.metrics(z, targets)
    assert metrics["accuracy"].item() == pytest.approx(accuracy_score(y[:, 0], z[:, 0] > 0))
    assert metrics["roc_auc"].item() == pytest.approx(roc_auc_score(y[:, 0], torch.sigmoid(z[:, 0])), abs=1e-6)
    # FGSM on a one-logit model steps along the sign of the BCE gradient
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    x = torch.rand(6, 1, 4, 4, requires_grad=True)
    (gradient,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(model(x), y), x)
    expected = (x + 0.05 * gradient.sign()).clamp(0, 1).detach()
    adversarial = run_attack("fgsm", task.pixel_model(model), x.detach(), targets, eps=0.05)
    assert torch.allclose(adversarial, expected, atol=1e-6)


def test_every_module_analyses_a_single_logit_binary_classifier(tmp_path):
    compass = cl.Compass(task=digits_task(), probe_size=32, budget=None, **SMALL)
    trainer = make_trainer(tmp_path, [compass], logger=False)
    trainer.fit(BinaryDigits(), datamodule=Relabelled(large))
    evaluations = assert_monitor_ran(compass, *EVERY_MODULE, "compass/interpretability/deeplift/insertion")
    last = [e for e in evaluations if "compass/basic/loss" in e][-1]  # the last validation epoch's
    # the probe's loss is the model's BCE, its accuracy and ROC AUC those of sigmoid(z) > 0.5 (scikit-learn)
    probe, model = compass.probe, trainer.lightning_module.eval()
    with torch.no_grad():
        z = model(probe.inputs)[:, 0]
    y = probe.targets.float()
    assert last["compass/basic/loss"] == pytest.approx(F.binary_cross_entropy_with_logits(z, y).item(), abs=1e-5)
    assert last["compass/basic/accuracy"] == pytest.approx(accuracy_score(y, z > 0))
    assert last["compass/basic/roc_auc"] == pytest.approx(roc_auc_score(y, torch.sigmoid(z)), abs=1e-5)
    # one softmax column could never be fooled (ASR 0, "perfectly robust"); one logit read as two can
    assert last["compass/robustness/fgsm/asr"] > 0 and last["compass/robustness/deepfool/asr"] > 0


@pytest.mark.parametrize(("relabel", "task", "message"), [
    (lambda y: y.float()[:, None] / 9 + 0.01, None, r"not class indices \(values such as .*regression"),
    (lambda y: F.one_hot((y >= 5).long(), 2).float(), None, r"rows of 2 values \(one-hot.*one_hot=True"),
    (lambda y: y, None, r"targets run from 0 to 9, but the model scores 2 classes"),
], ids=["regression", "one_hot", "ten_classes_one_logit"])
def test_targets_a_classifier_cannot_have_are_refused_before_the_first_training_step(tmp_path, relabel, task, message):
    model = BinaryDigits()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = cl.AttackSuccessRate(attacks=["fgsm"], probe_size=16, image_count=0, task=task or digits_task())
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, [monitor], logger=False).fit(model, datamodule=Relabelled(relabel))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_hot_targets_are_read_as_their_classes_when_the_task_says_so(tmp_path):
    class OneHotDigits(DigitsClassifier):
        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            return F.cross_entropy(self(batch[0]), batch[1])  # cross-entropy takes class probabilities

        def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            pass

    task = cl.Classification(mean=digits_task().mean.tolist(), std=digits_task().std.tolist(), one_hot=True)
    monitor = cl.AttackSuccessRate(attacks=["fgsm"], probe_size=16, image_count=0, task=task)
    make_trainer(tmp_path, [monitor], logger=False, epochs=1).fit(
        OneHotDigits(), datamodule=Relabelled(lambda y: F.one_hot(y, 10).float()))
    assert_monitor_ran(monitor, "compass/robustness/fgsm/asr")
    assert monitor.probe.targets.ndim == 1 and monitor.probe.targets.max().item() <= 9
