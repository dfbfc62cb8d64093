"""What every adapter of a classifier returning logits ``(N, C)`` shares, whatever its inputs:
reading keyed batches, the classification metrics, cross-entropy, arg-max predictions.

:class:`~compass_lightning.tasks.Classification` (images) and
:class:`~compass_lightning.tasks.TextClassification` (token ids) derive from :class:`LogitsAdapter`.

Example:
    >>> import torch
    >>> adapter = LogitsAdapter(input_key="x", target_key="y")
    >>> adapter.correct(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])).tolist()
    [True, False]
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


class LogitsAdapter:
    """The members of a classification adapter that depend only on the logits and on where a batch
    keeps its inputs and integer class targets.

    Args:
        input_key: where the inputs are in a batch: an index into a tuple/list batch or a key of a
            dict batch.
        target_key: where the integer class targets are, the same way.
    """

    metric_names = METRIC_NAMES

    def __init__(self, input_key: Key = 0, target_key: Key = 1) -> None:
        for name, key in (("input_key", input_key), ("target_key", target_key)):
            if not isinstance(key, (int, str)) or isinstance(key, bool):
                raise TypeError(f"{name} must be an int (tuple batches) or a str (dict batches), got {key!r}")
        self.input_key = input_key
        self.target_key = target_key

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
        """The integer class targets of a batch."""
        return self._get(batch, self.target_key, "targets")

    def split(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of a batch."""
        return self.inputs(batch), self.targets(batch)

    # -- what counts ---------------------------------------------------------------------------

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of ``logits`` against ``targets``."""
        return torch.nn.functional.cross_entropy(logits, targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """:func:`~compass_lightning.metrics.classification_metrics` over the classes of ``logits``."""
        return classification_metrics(logits, targets, self.classes(logits))

    def classes(self, logits: Tensor) -> int:
        """The number of classes: the width of the logits."""
        return logits.shape[1]

    def predictions(self, logits: Tensor) -> Tensor:
        """The predicted class of each sample."""
        return logits.argmax(dim=1)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Whether the predicted class of each sample is its target."""
        return self.predictions(logits) == targets.to(logits.device)
