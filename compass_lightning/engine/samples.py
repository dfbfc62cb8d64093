"""Batches of samples of any modality, aligned on their first axis: what a probe holds.

A task adapter's ``split(batch)`` returns inputs and targets in one of these forms, nested freely:

* a ``Tensor`` ``(N, ...)`` — images, token ids, feature vectors, class labels;
* a ``tuple`` of such — several aligned fields, e.g. ``(token_ids, attention_mask)``;
* a ``dict`` of such — named fields, e.g. ``{"input_ids": ..., "attention_mask": ...}``;
* a ``list`` with one object per sample — ragged samples, e.g. images of different sizes for a
  detector, or one target dict of boxes and labels per image.

The functions here index, split, join and move them without knowing which they are, so the probe
and the evaluation handle every modality alike. Written here because ``torch.utils._pytree`` is
private and treats a list as a container of fields, not as one sample per entry.

Example:
    >>> import torch
    >>> text = {"input_ids": torch.arange(12).view(4, 3), "attention_mask": torch.ones(4, 3)}
    >>> count(text), take(text, slice(1, 3))["input_ids"].tolist()
    (4, [[3, 4, 5], [6, 7, 8]])
    >>> images = [torch.zeros(3, 5, 7), torch.zeros(3, 6, 6), torch.zeros(3, 4, 4)]   # ragged
    >>> [count(part) for part in split(images, 2)], count(concat([images, images[:1]]))
    ([2, 1], 4)
    >>> take((torch.arange(4), images + [images[0]]), torch.tensor([3, 0]))[0].tolist()
    [3, 0]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

Samples = Union[Tensor, tuple, list, Mapping[str, Any]]
Index = Union[slice, Tensor]


def count(x: Samples) -> int:
    """The number of samples."""
    if isinstance(x, Tensor):
        return len(x)
    if isinstance(x, Mapping):
        return count(next(iter(x.values())))
    if isinstance(x, tuple):
        return count(x[0])
    if isinstance(x, list):
        return len(x)
    raise TypeError(f"samples must be a tensor, a tuple or dict of them, or a list of per-sample objects, got {type(x).__name__}")


def take(x: Samples, index: Index) -> Samples:
    """The samples at ``index`` (a slice, or a 1-d tensor of positions), in that order."""
    if isinstance(x, Tensor):
        return x[index]
    if isinstance(x, Mapping):
        return {key: take(value, index) for key, value in x.items()}
    if isinstance(x, tuple):
        return tuple(take(field, index) for field in x)
    if isinstance(index, slice):
        return x[index]
    return [x[i] for i in index.tolist()]


def concat(parts: Sequence[Samples]) -> Samples:
    """The samples of ``parts`` one after another (all of the same form)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    if isinstance(first, Mapping):
        return {key: concat([p[key] for p in parts]) for key in first}
    if isinstance(first, tuple):
        return tuple(concat([p[i] for p in parts]) for i in range(len(first)))
    return [sample for part in parts for sample in part]


def apply(x: Any, function: Any) -> Any:
    """``function`` applied to every tensor inside ``x`` (any nesting of tuples, lists and dicts)."""
    if isinstance(x, Tensor):
        return function(x)
    if isinstance(x, Mapping):
        return {key: apply(value, function) for key, value in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(apply(value, function) for value in x)
    return x


def to(x: Samples, device: torch.device | str | None) -> Samples:
    """``x`` with every tensor on ``device`` (``None``: unchanged)."""
    return x if device is None else apply(x, lambda t: t.to(device, non_blocking=True))


def split(x: Samples, size: int) -> Iterator[Samples]:
    """``x`` in consecutive parts of ``size`` samples (the last may be smaller)."""
    if isinstance(x, Tensor):
        yield from x.split(size)
        return
    total = count(x)
    for start in range(0, total, size):
        yield take(x, slice(start, start + size))


def device_of(x: Samples) -> torch.device:
    """The device of the first tensor in ``x`` (the CPU if it holds none)."""
    found: list[torch.device] = []
    apply(x, lambda t: found.append(t.device))
    return found[0] if found else torch.device("cpu")


def describe(x: Samples) -> str:
    """A short description of the form of one sample, for messages and ``repr``."""
    if isinstance(x, Tensor):
        return f"shape {tuple(x.shape[1:])}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{key}: {describe(value)}" for key, value in x.items()) + "}"
    if isinstance(x, tuple):
        return "(" + ", ".join(describe(field) for field in x) + ")"
    return f"{len(x)} ragged samples"
