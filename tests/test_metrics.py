"""Basic metrics equal scikit-learn's on the same predictions."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from sklearn import metrics as sk

from compass_lightning.metrics import METRIC_NAMES, classification_metrics, confusion_matrix, to_floats


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Every metric from scikit-learn; rates from its per-class confusion matrices, macro over the
    classes present in targets or predictions (scikit-learn's label set)."""
    y, scores = targets.numpy(), logits.softmax(1).numpy()
    pred = scores.argmax(1)
    labels = np.union1d(y, pred)
    per_class = sk.multilabel_confusion_matrix(y, pred, labels=labels)  # [[tn, fp], [fn, tp]]
    tn, fp, fn, tp = (per_class[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    tpr, tnr, ppv, npv = ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp), ratio(tn, tn + fn)
    reference = {
        "accuracy": sk.accuracy_score(y, pred),
        # log_loss clips probabilities at machine epsilon, so the exact float64 value is the reference
        "loss": -np.mean(log_softmax(logits.double().numpy(), axis=1)[np.arange(len(y)), y]),
        "tpr": sk.recall_score(y, pred, average="macro", zero_division=0),
        "tnr": tnr.mean(),
        "ppv": sk.precision_score(y, pred, average="macro", zero_division=0),
        "npv": npv.mean(),
        "fpr": ratio(fp, fp + tn).mean(),
        "fnr": (1 - tpr).mean(),
        "fdr": (1 - ppv).mean(),
        "precision": sk.precision_score(y, pred, average="macro", zero_division=0),
        "recall": sk.recall_score(y, pred, average="macro", zero_division=0),
        "f1": sk.f1_score(y, pred, average="macro", zero_division=0),
    }
    # one-vs-rest AUC of every class present in y (it is undefined for the others)
    reference["roc_auc"] = np.mean([sk.roc_auc_score(y == c, scores[:, c]) for c in np.unique(y)])
    if len(np.unique(y)) == scores.shape[1]:
        assert reference["roc_auc"] == pytest.approx(sk.roc_auc_score(y, scores, multi_class="ovr"))
    return reference


def _case(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    targets = torch.arange(300) % 6
    logits = torch.randn(300, 6, generator=generator)
    logits[torch.arange(300), targets] += 1.5  # better than chance, far from perfect
    if name == "class never predicted":
        logits[:, 5] -= 100.0
    if name == "class never in targets":
        targets = torch.where(targets == 4, torch.tensor(0), targets)
    return logits, targets


@pytest.mark.parametrize("case", ["typical", "class never predicted", "class never in targets"])
def test_metrics_equal_scikit_learn(case):
    logits, targets = _case(case)
    ours = to_floats(classification_metrics(logits, targets))
    reference = _reference(logits, targets)
    assert set(ours) == set(METRIC_NAMES)
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    if case == "typical":  # no probability small enough to be clipped
        assert ours["loss"] == pytest.approx(sk.log_loss(targets.numpy(), logits.softmax(1).numpy()), abs=1e-6)


def test_perfect_and_random_scores_give_the_auc_anchors():
    targets = torch.arange(400) % 4
    perfect = torch.nn.functional.one_hot(targets, 4).float() * 10
    noise = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    assert classification_metrics(perfect, targets)["roc_auc"].item() == pytest.approx(1.0)
    assert classification_metrics(noise, targets)["roc_auc"].item() == pytest.approx(0.5, abs=0.05)


def test_confusion_matrix_rows_are_true_classes():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert confusion_matrix(logits, torch.tensor([0, 1, 1])).tolist() == [[1, 0], [1, 1]]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        classification_metrics(torch.zeros(5), torch.zeros(5))
