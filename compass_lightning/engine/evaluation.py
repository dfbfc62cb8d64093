"""One evaluation: what the analyses work with (model, probe, task) and what they produce.

This module knows nothing of Lightning: the callbacks build an :class:`Evaluation` with the
trainer's collectives (``all_gather``, ``any_rank``) and read its ``scalars`` and ``images`` back.

* :meth:`Evaluation.per_sample` runs a function over this process' shard of probe-aligned tensors
  in chunks of ``batch_size`` on the model's device and returns the results of the whole probe in
  probe order on every process. The function returns one row per sample: a tensor, a dict of
  tensors (gathered key by key), or a list with one object per sample (ragged outputs such as
  detections).
* :class:`SharedResults` holds what one analysis makes for the others — the clean outputs, the
  adversarial examples of the robustness module — with one sharing rule in every subset.

Example:
    >>> import torch
    >>> from compass_lightning.engine.probe import ProbeSet
    >>> from compass_lightning.tasks import Classification
    >>> probe = ProbeSet(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 0]))
    >>> ev = Evaluation(torch.nn.Linear(4, 2), probe, Classification(), batch_size=2)
    >>> rows = ev.per_sample(lambda x: {"sum": x.sum(1), "first": x[:, :1]}, probe.inputs)
    >>> rows["sum"].shape, rows["first"].shape
    (torch.Size([5]), torch.Size([5, 1]))
    >>> ev.outputs(probe.inputs) is ev.subset(3).shared.get("outputs", 5)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from compass_lightning.engine.probe import ProbeSet
from compass_lightning.engine.samples import Samples
from compass_lightning.tasks.base import Task

PerSample = Union[Tensor, Mapping[str, Tensor], list]

#: The key of the clean outputs of the probe in :class:`SharedResults`.
CLEAN = "outputs"


class SharedResults:
    """What one analysis of an evaluation makes for the others (clean outputs, adversarial examples),
    one object for the evaluation and every :meth:`Evaluation.subset` of it.

    An entry holds the rows of the first ``len(rows)`` probe samples, in probe order; a subset of
    ``size`` samples reuses it when it covers them (``size <= len(rows)``) and computes its own
    otherwise, so a module with a smaller probe than another never hands it partial results.

    Example:
        >>> shared = SharedResults()
        >>> shared.put("fgsm", torch.arange(6.0).view(3, 2))
        >>> shared.get("fgsm", 2).tolist(), shared.get("fgsm", 4), shared.get("pgd", 1)
        ([[0.0, 1.0], [2.0, 3.0]], None, None)
    """

    def __init__(self) -> None:
        self._rows: dict[str, Tensor] = {}

    def put(self, key: str, rows: Tensor) -> None:
        """Keep ``rows`` (one per probe sample, from the first) under ``key``, unless a larger entry exists."""
        if key not in self._rows or len(rows) > len(self._rows[key]):
            self._rows[key] = rows

    def get(self, key: str, size: int) -> Tensor | None:
        """The rows of the first ``size`` probe samples under ``key``, or ``None`` if none cover them."""
        rows = self._rows.get(key)
        if rows is None or len(rows) < size:
            return None
        return rows if len(rows) == size else rows[:size]


def attack_key(name: str, eps: float, params: Mapping[str, Any]) -> str:
    """The :class:`SharedResults` key of an attack's adversarial examples at ``eps`` with ``params``."""
    return f"{name}@{float(eps)!r}:{sorted(params.items())!r}"


def all_gather_objects(local: list) -> list[list]:
    """Every process' ``local`` list, by rank (``torch.distributed``'s object collective)."""
    shards: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shards, local)
    return shards


def _gather_objects(local: list, probe: ProbeSet, gather: Callable[[list], list[list]]) -> list:
    """Every rank's per-sample objects in probe order."""
    if probe.world_size == 1:
        return local
    shards = gather(local)
    # sample i of rank r is probe sample i * world_size + r
    return [shards[i % probe.world_size][i // probe.world_size] for i in range(len(probe))]


class Evaluation:
    """What one evaluation works with (model, probe, task) and what it produces (scalars, images).

    Args:
        model: the model under analysis (inside the guard).
        probe: the probe set; its inputs are in data space.
        task: the task adapter (see :class:`~compass_lightning.tasks.base.Task`).
        batch_size: how many probe samples go through the model at once.
        auto_batch: whether ``batch_size`` is the rule's choice (the user set none), so analyses
            that push many rows per sample may measure a better chunk
            (:func:`~compass_lightning.engine.batching.gradient_rows`).
        all_gather: stacks a tensor from every process (``trainer.strategy.all_gather``).
        any_rank: whether a flag is set on any process (a collective; only called under DDP).
        gather_objects: every process' list of per-sample objects, by rank (default:
            :func:`all_gather_objects`); for ragged per-sample results under DDP.
        want_images: whether images will be looked at (global zero with a logger), so costly
            figures are only drawn then.
        epoch: the training epoch the evaluated model has finished (the one its history names).
        share: keep what analyses make for each other in :attr:`shared` (the Compass).

    Example:
        >>> import torch
        >>> from compass_lightning.tasks import Classification
        >>> probe = ProbeSet(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 0]))
        >>> ev = Evaluation(torch.nn.Linear(4, 2), probe, Classification(), batch_size=2)
        >>> ev.outputs(probe.inputs).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        probe: ProbeSet,
        task: Task,
        *,
        batch_size: int,
        auto_batch: bool = False,
        all_gather: Callable[[Tensor], Tensor] | None = None,
        any_rank: Callable[[bool], bool] | None = None,
        gather_objects: Callable[[list], list[list]] = all_gather_objects,
        want_images: bool = False,
        epoch: int = 0,
        share: bool = False,
    ) -> None:
        self.model = model
        self.probe = probe
        self.task = task
        self.batch_size = batch_size
        self.auto_batch = auto_batch
        self.all_gather = all_gather
        self.any_rank = any_rank
        self.gather_objects = gather_objects
        self.want_images = want_images
        self.epoch = epoch
        self.share = share
        self.scalars: dict[str, Tensor | float] = {}
        self.images: dict[str, Tensor] = {}
        #: Pictures made of text, for the HTML report: ``{tag: [{"label", "tokens", "scores"}, ...]}``.
        self.texts: dict[str, list[dict[str, Any]]] = {}
        #: The clean outputs of the probe, and with ``share`` the adversarial examples (pixel space,
        #: probe order) by :func:`attack_key`: the same object in every subset.
        self.shared = SharedResults()

    def subset(self, size: int | None) -> Evaluation:
        """This evaluation on the first ``size`` probe samples (all for ``None``), sharing its
        scalars, images and :class:`SharedResults`."""
        if size is None or size >= len(self.probe):
            return self
        child = Evaluation(self.model, self.probe.first(size), self.task, batch_size=self.batch_size, auto_batch=self.auto_batch,
                           all_gather=self.all_gather, any_rank=self.any_rank, gather_objects=self.gather_objects, want_images=self.want_images,
                           epoch=self.epoch, share=self.share)
        child.scalars, child.images, child.texts, child.shared = self.scalars, self.images, self.texts, self.shared
        return child

    def for_model(self, model: nn.Module) -> Evaluation:
        """A fresh evaluation of ``model`` (e.g. a pruned copy) on the same probe, without images and
        with its own :class:`SharedResults` (nothing of the other model is reused)."""
        return Evaluation(
            model, self.probe, self.task, batch_size=self.batch_size, auto_batch=self.auto_batch, all_gather=self.all_gather,
            any_rank=self.any_rank, gather_objects=self.gather_objects, epoch=self.epoch,
        )

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a model without any)."""
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def per_sample(self, function: Callable[..., PerSample], *aligned: Samples) -> Any:
        """``function`` applied to this process' shard of probe-aligned tensors, in chunks of
        ``batch_size`` on the model's device, gathered from every process in probe order.

        ``aligned`` are probe-aligned samples of any form of :mod:`~compass_lightning.engine.samples`
        (tensors, tuples, dicts, ragged lists). ``function`` gets one chunk of each and returns one row per sample: a
        tensor (the result is their concatenation), a dict of tensors (a dict of concatenations,
        key by key), or a list of per-sample objects (one list). Every process returns the rows of
        the whole probe. If ``function`` fails on any process, it raises on every process.
        """
        failure: Exception | None = None
        parts: list[PerSample] = []
        try:
            shards = [self.probe.chunks(self.probe.shard(t), self.batch_size, self.device) for t in aligned]
            parts = [function(*chunks) for chunks in zip(*shards)]
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other ranks know
            failure = error
        if self.probe.world_size > 1 and self.any_rank is not None:
            # Every rank must agree before the gather, or the ranks that succeeded would wait forever.
            if self.any_rank(failure is not None):
                raise failure or RuntimeError("the same analysis failed on another process")
        elif failure is not None:
            raise failure
        if parts and isinstance(parts[0], Mapping):
            return {key: self.probe.gather(torch.cat([p[key] for p in parts]), self.all_gather) for key in parts[0]}
        if parts and isinstance(parts[0], list):
            return _gather_objects([row for p in parts for row in p], self.probe, self.gather_objects)
        return self.probe.gather(torch.cat(parts), self.all_gather)

    def outputs(self, inputs: Samples, model: nn.Module | None = None) -> Tensor:
        """The task's outputs (logits, for classification) of the model — or of ``model``, e.g. a
        pruned copy — for ``inputs`` aligned with the probe (data space), in probe order.

        The clean outputs of the probe are computed once and kept in :attr:`shared`; a model that
        returns NaN or infinite outputs for them is an error, as every analysis would be meaningless.
        """
        clean = (model is None or model is self.model) and inputs is self.probe.inputs
        if clean:
            kept = self.shared.get(CLEAN, len(self.probe))
            if kept is not None:
                return kept
        model = self.model if model is None else model

        def forward(chunk: Samples) -> Tensor:
            with torch.no_grad():
                return self.task.outputs(model, chunk)

        outputs = self.per_sample(forward, inputs)
        if clean:
            bad = int((~torch.isfinite(outputs)).flatten(1).any(dim=1).sum())
            if bad:  # every analysis of such a model would be meaningless: one clear failure instead
                raise FloatingPointError(
                    f"the model returned NaN or infinite outputs for {bad} of {len(outputs)} probe samples"
                )
            self.shared.put(CLEAN, outputs)
        return outputs
