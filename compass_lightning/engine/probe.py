"""The probe set: a fixed, seeded subset of the validation data that every evaluation analyses.

The same samples every epoch make epochs comparable. The probe is materialised once, on the CPU,
outside inference mode (tensors made under ``torch.inference_mode`` can never be used for
gradients later). Under DDP every rank holds the whole probe — mutations that act on the whole set,
such as label noise, then give the same result on every rank — and analyses its strided shard
``rank::world_size``; :meth:`ProbeSet.gather` puts per-sample results back in probe order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from compass_lightning.engine.checks import check_int
from compass_lightning.engine.samples import Samples, apply, concat, count, describe, split, take, to
from compass_lightning.tasks.base import Task

AllGather = Callable[[Tensor], Tensor]


def _size_error(probe_size: int, available: int) -> ValueError:
    return ValueError(
        f"probe_size={probe_size} is larger than the data it is drawn from ({available} samples); "
        f"pass probe_size <= {available}, or probe_size=None to use up to the callback's default"
    )


def _first_loader(loaders: Any) -> Any:
    """The first dataloader of what Lightning holds: a loader, a sequence or a mapping of them."""
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence) and not isinstance(loaders, Dataset):
        loaders = loaders[0] if len(loaders) else None
    return loaders


class ProbeSet:
    """A fixed sample of ``(inputs, targets)`` held on the CPU, with its DDP shard.

    Build one with :meth:`from_tensors`, :meth:`from_dataset` or :meth:`from_dataloader`; callbacks
    build theirs from the trainer's validation dataloader.

    Args:
        inputs: the probe inputs in data space: a tensor ``(N, ...)``, or any form of
            :mod:`~compass_lightning.engine.samples` (tuples or dicts of tensors, ragged lists).
        targets: the probe targets, ``(N,)`` for classes, in the same forms.
        rank: this process' rank.
        world_size: the number of processes; each analyses ``inputs[rank::world_size]``.

    Example:
        >>> import torch
        >>> probe = ProbeSet.from_tensors(torch.randn(10, 3), torch.arange(10), probe_size=4, seed=0)
        >>> len(probe), probe.inputs.shape
        (4, torch.Size([4, 3]))
        >>> [len(chunk) for chunk in probe.chunks(probe.inputs, batch_size=3)]
        [3, 1]
    """

    def __init__(self, inputs: Samples, targets: Samples, *, rank: int = 0, world_size: int = 1) -> None:
        if count(inputs) != count(targets):
            raise ValueError(f"inputs and targets differ in length: {count(inputs)} vs {count(targets)}")
        if count(inputs) == 0:
            raise ValueError("a probe set needs at least one sample")
        self.inputs = inputs
        self.targets = targets
        self.rank = check_int("rank", rank, minimum=0)
        self.world_size = check_int("world_size", world_size, minimum=1)

    def __len__(self) -> int:
        return count(self.inputs)

    def __repr__(self) -> str:
        shard = f", rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        return f"ProbeSet({len(self)} samples of {describe(self.inputs)}{shard})"

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def _indices(available: int, probe_size: int | None, default_size: int, seed: int) -> Tensor:
        if probe_size is not None and probe_size > available:
            raise _size_error(probe_size, available)
        size = min(default_size, available) if probe_size is None else probe_size
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(available, generator=generator)[:size]

    @classmethod
    def _materialise(cls, inputs: Samples, targets: Samples, **shard: int) -> ProbeSet:
        # clone() under inference_mode(False): the probe must never be an inference tensor.
        with torch.inference_mode(False):
            own = lambda t: t.detach().cpu().clone()  # noqa: E731
            return cls(apply(inputs, own), apply(targets, own), **shard)

    @classmethod
    def from_tensors(
        cls,
        inputs: Samples,
        targets: Samples,
        *,
        probe_size: int | None = None,
        seed: int = 0,
        default_size: int = 256,
        rank: int = 0,
        world_size: int = 1,
    ) -> ProbeSet:
        """A seeded random subset of ``probe_size`` samples (``None``: up to ``default_size``)."""
        if count(inputs) != count(targets):
            raise ValueError(f"inputs and targets differ in length: {count(inputs)} vs {count(targets)}")
        index = cls._indices(count(inputs), probe_size, default_size, seed)
        return cls._materialise(take(inputs, index), take(targets, index), rank=rank, world_size=world_size)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        *,
        task: Task,
        probe_size: int | None = None,
        seed: int = 0,
        default_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> ProbeSet:
        """A seeded random subset of a map-style dataset, collated like the dataloader would."""
        index = cls._indices(len(dataset), probe_size, default_size, seed)  # type: ignore[arg-type]
        with torch.inference_mode(False):
            batch = (collate_fn or default_collate)([dataset[int(i)] for i in index])
            return cls._materialise(*task.split(batch), rank=rank, world_size=world_size)

    @classmethod
    def from_dataloader(
        cls,
        loader: Iterable[Any],
        *,
        task: Task,
        probe_size: int | None = None,
        seed: int = 0,
        default_size: int = 256,
        rank: int = 0,
        world_size: int = 1,
    ) -> ProbeSet:
        """From a dataloader's dataset and collate function.

        A map-style dataset gives a seeded random subset; an iterable dataset (no length, no random
        access) gives its first ``probe_size`` samples in the loader's order.
        """
        shard = {"rank": rank, "world_size": world_size}
        dataset = getattr(loader, "dataset", None)
        if isinstance(loader, DataLoader) and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            return cls.from_dataset(
                dataset,
                task=task,
                probe_size=probe_size,
                seed=seed,
                default_size=default_size,
                collate_fn=loader.collate_fn,
                **shard,
            )
        wanted = default_size if probe_size is None else probe_size
        inputs, targets, seen = [], [], 0
        with torch.inference_mode(False):
            for batch in loader:
                x, y = task.split(batch)
                inputs.append(x)
                targets.append(y)
                seen += count(x)
                if seen >= wanted:
                    break
        if probe_size is not None and seen < probe_size:
            raise _size_error(probe_size, seen)
        if seen == 0:
            raise ValueError("the dataloader the probe set is drawn from yielded no samples")
        first = slice(0, wanted)
        return cls._materialise(take(concat(inputs), first), take(concat(targets), first), **shard)

    # -- use -----------------------------------------------------------------------------------

    def shard(self, samples: Samples) -> Samples:
        """This rank's strided part of samples aligned with the probe (the first axis = probe samples)."""
        return take(samples, slice(self.rank, None, self.world_size)) if self.world_size > 1 else samples

    def first(self, size: int) -> ProbeSet:
        """The probe of its first ``size`` samples (itself if it has no more), on the same shard layout."""
        if size >= len(self):
            return self
        head = slice(0, size)
        return ProbeSet(take(self.inputs, head), take(self.targets, head), rank=self.rank, world_size=self.world_size)

    @staticmethod
    def chunks(samples: Samples, batch_size: int, device: torch.device | str | None = None) -> Iterator[Samples]:
        """``samples`` in chunks of ``batch_size``, each moved to ``device``."""
        for chunk in split(samples, batch_size):
            yield to(chunk, device)

    def gather(self, local: Tensor, all_gather: AllGather | None = None) -> Tensor:
        """Reassemble per-sample results of every rank's shard into probe order.

        ``local`` is this rank's result for :meth:`shard` of the probe; ``all_gather`` stacks a
        tensor from every rank (Lightning's ``trainer.strategy.all_gather``). Shards differ in length
        by at most one, so they are padded to the same length before the collective.
        """
        if self.world_size == 1:
            return local
        if all_gather is None:
            raise ValueError("gather needs all_gather when world_size > 1")
        longest = -(-len(self) // self.world_size)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: len(local)] = local
        stacked = all_gather(padded)  # (world_size, longest, ...)
        # Sample i of rank r is probe sample i * world_size + r, so interleaving restores the order
        # and leaves the padding at the end.
        return stacked.transpose(0, 1).reshape(-1, *local.shape[1:])[: len(self)]
