"""Basic classification metrics (AI-Compass module 1, its Table 3), macro-averaged with torchmetrics.

``fpr``, ``fnr`` and ``fdr`` are the complements of ``tnr``, ``tpr`` and ``ppv`` per class, so their
macro averages are ``1 -`` the macro averages of those; like torchmetrics and scikit-learn, a class
that is never predicted has ``ppv = 0`` (so ``fdr = 1``), and a class absent from both targets and
predictions is left out of the average. ``roc_auc`` is one-vs-rest, averaged over the classes whose
AUC is defined (present in the targets, and not the only class there).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional import classification as tmc

METRIC_NAMES = (
    "accuracy",
    "loss",
    "tpr",
    "tnr",
    "ppv",
    "npv",
    "fpr",
    "fnr",
    "fdr",
    "roc_auc",
    "precision",
    "recall",
    "f1",
)


def classification_metrics(logits: Tensor, targets: Tensor, num_classes: int | None = None) -> dict[str, Tensor]:
    """Every metric of :data:`METRIC_NAMES` for one set of predictions, as 0-dim tensors.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        targets: ``(N,)`` integer classes.
        num_classes: ``C``; taken from ``logits`` when ``None``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> m = classification_metrics(logits, torch.tensor([0, 1, 1]))
        >>> round(m["accuracy"].item(), 4), round(m["recall"].item(), 4), round(m["fnr"].item(), 4)
        (0.6667, 0.75, 0.25)
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    logits = logits.detach().float()
    targets = targets.detach().long().to(logits.device)
    num_classes = num_classes or logits.shape[1]
    predictions = logits.argmax(dim=1)
    probabilities = logits.softmax(dim=1)
    macro = {"num_classes": num_classes, "average": "macro", "validate_args": False}
    tpr = tmc.multiclass_recall(predictions, targets, **macro)
    tnr = tmc.multiclass_specificity(predictions, targets, **macro)
    ppv = tmc.multiclass_precision(predictions, targets, **macro)
    return {
        "accuracy": tmc.multiclass_accuracy(predictions, targets, num_classes=num_classes, average="micro"),
        "loss": F.cross_entropy(logits, targets),
        "tpr": tpr,
        "tnr": tnr,
        "ppv": ppv,
        "npv": tmc.multiclass_negative_predictive_value(predictions, targets, **macro),
        "fpr": 1 - tnr,
        "fnr": 1 - tpr,
        "fdr": 1 - ppv,
        "roc_auc": _macro_auroc(probabilities, targets, num_classes),
        "precision": ppv,
        "recall": tpr,
        "f1": tmc.multiclass_f1_score(predictions, targets, **macro),
    }


def _macro_auroc(probabilities: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """One-vs-rest ROC AUC averaged over the classes where it is defined.

    torchmetrics scores a class without positive samples as 0 and averages it in, which would pull
    the macro average down whenever a small probe set lacks a class; such classes (and classes
    without negatives) are left out instead, as their AUC is undefined. NaN if none is defined.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive samples in targets")
        warnings.filterwarnings("ignore", message="No negative samples in targets")
        per_class = tmc.multiclass_auroc(probabilities, targets, num_classes=num_classes, average="none")
    positives = torch.bincount(targets, minlength=num_classes)
    defined = (positives > 0) & (positives < len(targets))
    return per_class[defined].mean() if defined.any() else per_class.new_tensor(float("nan"))


def confusion_matrix(logits: Tensor, targets: Tensor, num_classes: int | None = None) -> Tensor:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    num_classes = num_classes or logits.shape[1]
    return tmc.multiclass_confusion_matrix(
        logits.detach().argmax(dim=1), targets.detach().long().to(logits.device), num_classes, validate_args=False
    )


def to_floats(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Python floats of a dict of 0-dim tensors, with a single device synchronisation."""
    tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
    converted: dict[str, float] = {}
    if tensors:
        device = next(iter(tensors.values())).device
        stacked = torch.stack([v.detach().float().reshape(()).to(device) for v in tensors.values()])
        converted = dict(zip(tensors, stacked.tolist()))
    return {k: converted[k] if k in converted else float(v) for k, v in values.items()}
