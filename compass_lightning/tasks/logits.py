"""What every adapter of a classifier returning logits ``(N, C)`` shares, whatever its inputs:
reading keyed batches and their class targets, the classification metrics, cross-entropy, arg-max
predictions, and the refusal of targets a classifier cannot have.

A single-logit binary classifier (logits ``(N, 1)`` or ``(N,)``, trained with a sigmoid and BCE) is
read as the two-class classifier of logits ``(-z/2, z/2)`` (:func:`two_class`): their softmax is
``(1 - sigmoid(z), sigmoid(z))``, their cross-entropy is BCE-with-logits, their arg-max is
``z > 0`` and their margin is ``z``, so every analysis written for ``(N, C)`` logits is the binary
one. Targets ``0``/``1`` of shape ``(N,)`` or ``(N, 1)``, as floats or integers, are read as class
indices (:meth:`LogitsAdapter.read_targets`).

:class:`~compass_lightning.tasks.Classification` (images) and
:class:`~compass_lightning.tasks.TextClassification` (token ids) derive from :class:`LogitsAdapter`.

Example:
    >>> import torch
    >>> adapter = LogitsAdapter(input_key="x", target_key="y")
    >>> adapter.correct(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])).tolist()
    [True, False]
    >>> two_class(torch.tensor([[2.0], [-1.0]]))        # one logit: a binary classifier
    tensor([[-1.0000,  1.0000],
            [ 0.5000, -0.5000]])
    >>> adapter.read_targets(torch.tensor([[1.0], [0.0]]))   # BCE targets: class indices
    tensor([1, 0])
    >>> adapter.check_targets(torch.tensor([0.3, 1.7]), torch.zeros(2, 2))
    'the targets are not class indices (values such as 0.3): a regression model is not a classifier, so its outputs cannot be analysed as classes'
    >>> adapter.inputs({"image": torch.zeros(1)})
    Traceback (most recent call last):
    ...
    TypeError: cannot read the inputs at key 'x' from the batch, which is a dict with keys ['image']; set LogitsAdapter(input_key=...) to where they are
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor

from compass_lightning.engine.checks import check_bool
from compass_lightning.metrics import METRIC_NAMES, classification_metrics

Key = Union[int, str]


def describe(value: Any) -> str:
    """A short description of what a batch (or one of its items) is, for error messages."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def two_class(logits: Tensor) -> Tensor:
    """Logits ``(N, C)`` as they are for ``C >= 2``; a single logit ``z`` (``(N, 1)`` or ``(N,)``) as the
    two-class logits ``(-z/2, z/2)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))`` and whose
    cross-entropy is ``binary_cross_entropy_with_logits(z, y)`` exactly."""
    if logits.ndim == 1:
        logits = logits[:, None]
    return torch.cat([-logits / 2, logits / 2], dim=1) if logits.shape[1] == 1 else logits


class LogitsAdapter:
    """The members of a classification adapter that depend only on the logits and on where a batch
    keeps its inputs and integer class targets.

    Args:
        input_key: where the inputs are in a batch: an index into a tuple/list batch or a key of a
            dict batch.
        target_key: where the class targets are, the same way: integer classes ``(N,)``, or ``0``/``1``
            floats of shape ``(N,)`` or ``(N, 1)`` for a single-logit binary classifier.
        one_hot: the targets are one-hot rows ``(N, C)`` (or class scores), read as each row's arg-max;
            without it such targets are refused at fit start.
    """

    metric_names = METRIC_NAMES

    def __init__(self, input_key: Key = 0, target_key: Key = 1, *, one_hot: bool = False) -> None:
        for name, key in (("input_key", input_key), ("target_key", target_key)):
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise TypeError(f"{name} must be an int (tuple batches) or a str (dict batches), got {key!r}")
        if input_key == target_key:
            raise ValueError(f"input_key and target_key are both {input_key!r}: the inputs and the targets must be "
                             "different items of the batch")
        self.input_key = input_key
        self.target_key = target_key
        self.one_hot = check_bool("one_hot", one_hot)

    # -- batches -----------------------------------------------------------------------------

    def _get(self, batch: Any, key: Key, what: str) -> Tensor:
        try:
            value = batch[key]
        except (KeyError, IndexError, TypeError) as error:
            raise TypeError(
                f"cannot read the {what} at key {key!r} from the batch, which is {describe(batch)}; "
                f"set {type(self).__name__}({what[:-1] if what.endswith('s') else what}_key=...) to where they are"
            ) from error
        if not isinstance(value, Tensor):
            raise TypeError(f"the {what} at key {key!r} of the batch must be a tensor, got {describe(value)}")
        return value

    def inputs(self, batch: Any) -> Tensor:
        """The model inputs of a batch (in data space)."""
        return self._get(batch, self.input_key, "inputs")

    def targets(self, batch: Any) -> Tensor:
        """The class targets of a batch (:meth:`read_targets`)."""
        return self.read_targets(self._get(batch, self.target_key, "targets"))

    def read_targets(self, targets: Tensor) -> Tensor:
        """``targets`` as class indices ``(N,)``: one-hot rows as their arg-max (with ``one_hot``),
        ``(N, 1)`` as ``(N,)``, whole-numbered floats and booleans as integers. Anything else is
        returned as it is, for :meth:`check_targets` to refuse."""
        if self.one_hot and targets.ndim == 2:
            return targets.argmax(dim=1)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.dtype == torch.bool or (targets.is_floating_point() and torch.equal(targets, targets.round())):
            targets = targets.long()
        return targets

    def check_targets(self, targets: Tensor, outputs: Tensor) -> str | None:
        """Why a probe's targets (after :meth:`read_targets`) cannot be scored against the model's
        outputs ``outputs`` (of a few samples) as classes, or ``None``: rows of scores (one-hot or
        multi-label), non-integer values (a regression), classes the outputs do not score."""
        if targets.ndim == 2:
            return (f"the targets are rows of {targets.shape[1]} values (one-hot or multi-label), not class indices (N,); "
                    f"pass {type(self).__name__}(one_hot=True) to read one-hot rows as their arg-max (multi-label "
                    "classification is not supported)")
        if targets.ndim != 1:
            return f"the targets have shape {tuple(targets.shape)}; a classifier's targets are class indices (N,)"
        if targets.is_floating_point():
            value = targets[targets != targets.round()][0].item()
            return (f"the targets are not class indices (values such as {value:.3g}): a regression model is not a "
                    "classifier, so its outputs cannot be analysed as classes")
        classes = self.classes(outputs)
        low, high = targets.min().item(), targets.max().item()
        if low < 0 or high >= classes:
            kind = " (two logits, or a single one read as a binary classifier with a sigmoid)" if classes == 2 else ""
            return (f"the targets run from {low} to {high}, but the model scores {classes} classes{kind}; a "
                    "classifier's outputs must have one column per class (two, or one logit, for a binary one)")
        return None

    def split(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of a batch."""
        return self.inputs(batch), self.targets(batch)

    # -- what counts ---------------------------------------------------------------------------

    # Each takes the model's logits as they come (the pruning episodes call the model itself): a
    # single logit is read as two classes here too (two_class leaves (N, C >= 2) as it is).

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of ``logits`` against ``targets`` (BCE-with-logits for a single logit)."""
        return torch.nn.functional.cross_entropy(two_class(logits), targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """:func:`~compass_lightning.metrics.classification_metrics` over the classes of ``logits``."""
        logits = two_class(logits)
        return classification_metrics(logits, targets, logits.shape[1])

    def classes(self, logits: Tensor) -> int:
        """The number of classes: the width of the logits (two for a single logit)."""
        return 2 if logits.ndim == 1 or logits.shape[1] == 1 else logits.shape[1]

    def predictions(self, logits: Tensor) -> Tensor:
        """The predicted class of each sample (``z > 0`` for a single logit)."""
        return two_class(logits).argmax(dim=1)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Whether the predicted class of each sample is its target."""
        return self.predictions(logits) == targets.to(logits.device)
