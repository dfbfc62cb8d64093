"""One attribution method on a whole probe: attribute, then score with insertion and deletion.

:func:`score_probe` runs a method of :data:`~compass_lightning.attribution.METHODS` (or the
uniformly random chance baseline, :data:`RANDOM`) over an
:class:`~compass_lightning.engine.evaluation.Evaluation` — batched, sharded under DDP, in the
task's perturbation space, for the class the model predicts on each clean sample (the true class
for methods that explain it, ``Method.explains``) — and returns
per-sample insertion/deletion AUCs and curves. The interpretability monitor and the pruning
analysis both call it.

Example:
    >>> import torch
    >>> from compass_lightning.engine.evaluation import Evaluation
    >>> from compass_lightning.engine.probe import ProbeSet
    >>> from compass_lightning.tasks import Classification
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> probe = ProbeSet(torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1]))
    >>> evaluation = Evaluation(model, probe, Classification(), batch_size=4)
    >>> rows, _ = score_probe(evaluation, "saliency", {}, torch.Generator().manual_seed(0), steps=8)
    >>> rows["insertion"].shape, rows["insertion_curve"].shape
    (torch.Size([5]), torch.Size([5, 8]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compass_lightning.attribution._core import METHODS
from compass_lightning.attribution.faithfulness import insertion_deletion
from compass_lightning.engine.batching import gradient_rows
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.engine.samples import Samples, take, to
from compass_lightning.tasks.base import Task

RANDOM = "random"  # the chance baseline: uniformly random attributions


def attribute(
    name: str, params: Mapping[str, Any], model: nn.Module, x: Tensor, target: Tensor, generator: torch.Generator,
    batch_size: int,
) -> Tensor:
    """The attributions of method ``name`` (or :data:`RANDOM`) for ``target`` on ``model``, with
    Captum's internal batch left unset taking ``batch_size``."""
    if name == RANDOM:
        return torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    params = dict(params)
    if "internal_batch_size" in params and params["internal_batch_size"] is None:
        # Captum would otherwise put every sample x step (or noise draw) through one forward:
        # steps times the memory of a batch, and slower per image on a CPU
        params["internal_batch_size"] = batch_size
    return METHODS[name].function(model, x, target, **params)


def substrate(task: Task, x: Tensor, kind: str) -> str | Tensor:
    """What deleted features become: the task's zero baseline where it is a tensor (for text, the
    mask token's embedding with the ids kept, so padding and special tokens stay as they are),
    else ``kind`` itself (``"zeros"``: black pixels, ``"blur"``)."""
    if kind == "zeros":
        base = task.baseline(x, 0.0)
        if isinstance(base, Tensor):
            return base
    return kind


def score_probe(
    evaluation: Evaluation,
    name: str,
    params: Mapping[str, Any],
    generator: torch.Generator,
    *,
    steps: int,
    baseline: str = "zeros",
    insertion_start: str = "zeros",
    keep: int = 0,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Insertion and deletion of method ``name`` with ``params`` on every probe sample, for the class
    the evaluated model predicts on it — or its true class, attributions and curves both, for a method
    whose ``explains`` is ``"label"`` (see :func:`~compass_lightning.attribution.insertion_deletion`).

    Returns per-sample rows of the whole probe, in probe order, on the CPU — ``insertion``,
    ``deletion`` (AUCs) and ``insertion_curve``, ``deletion_curve`` (``(N, steps)``) — and the
    attributions of the first ``keep`` samples of this process' shard (for heatmaps).
    """
    task, probe = evaluation.task, evaluation.probe
    predicted = task.predictions(evaluation.outputs(probe.inputs)).cpu()
    kept: list[Tensor] = []
    explained = probe.targets if name != RANDOM and METHODS[name].explains == "label" else predicted
    rows = _rows(evaluation, name, params, explained)

    def run(inputs: Samples, target: Tensor) -> dict[str, Tensor]:
        model = task.space_model(evaluation.model, inputs)
        x = task.to_space(inputs, evaluation.model)
        given = params if "baseline" not in params else {**params, "baseline": task.baseline(x, params["baseline"])}
        attributions = attribute(name, given, model, x, target, generator, rows)
        if keep and not kept:
            kept.append(attributions[:keep].detach().cpu())
        insertion, deletion, curve = insertion_deletion(
            model, x, attributions, target=target, steps=steps, baseline=substrate(task, x, baseline),
            insertion_start=substrate(task, x, insertion_start), batch_size=evaluation.batch_size,
            valid=task.perturbable(inputs),
        )
        return {"insertion": insertion, "deletion": deletion, "insertion_curve": curve["insertion"],
                "deletion_curve": curve["deletion"]}

    result = evaluation.per_sample(run, probe.inputs, explained)
    return {key: value.cpu() for key, value in result.items()}, (kept[0] if kept else None)


def _rows(evaluation: Evaluation, name: str, params: Mapping[str, Any], explained: Tensor) -> int:
    """The rows per forward of a method that batches many per sample (Captum's internal batch), left
    to us: the evaluation's batch size, or where the rule chose it, the fastest measured around it —
    on the first samples of the whole probe, the same on every process, which agree on the sum of
    their times (a collective: every process calls this at the same point)."""
    size = evaluation.batch_size
    if name == RANDOM or not evaluation.auto_batch or params.get("internal_batch_size", 0) is not None:
        return size
    task, inputs = evaluation.task, to(take(evaluation.probe.inputs, slice(0, size)), evaluation.device)
    model, x = task.space_model(evaluation.model, inputs), task.to_space(inputs, evaluation.model)
    gather = evaluation.all_gather

    def agree(times: Tensor) -> Tensor:  # every process' times, summed: one decision for all
        return gather(times.to(evaluation.device)).reshape(-1, len(times)).sum(0).cpu()

    return gradient_rows(model, x, explained[:size].to(evaluation.device), size, agree=None if gather is None else agree)
