"""One attack on a whole probe: craft, score on the evaluated model, reduce to the logged metrics.

:func:`attack_probe` runs an attack of :data:`~compass_lightning.attacks.ATTACKS` over an
:class:`~compass_lightning.engine.evaluation.Evaluation` — batched, sharded under DDP, in the
task's perturbation space — and returns per-sample rows; :func:`attack_metrics` reduces them with
the pure functions of :mod:`~compass_lightning.attacks.success`. The robustness monitor and the
pruning analysis both call these two, so an attack is scored the same way everywhere.

Example:
    >>> import torch
    >>> from compass_lightning.engine.evaluation import Evaluation
    >>> from compass_lightning.engine.probe import ProbeSet
    >>> from compass_lightning.tasks import Classification
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> probe = ProbeSet(torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1]))
    >>> evaluation = Evaluation(model, probe, Classification(), batch_size=4)
    >>> rows, _ = attack_probe(evaluation, "fgsm", {}, 0.1, torch.Generator().manual_seed(0))
    >>> sorted(rows), bool(rows["linf"].max() <= 0.1 + 1e-6)
    (['correct', 'l2', 'linf', 'predicted'], True)
    >>> clean = evaluation.task.correct(evaluation.outputs(probe.inputs), probe.targets).cpu()
    >>> sorted(attack_metrics(clean, rows))
    ['asr', 'mean_l2', 'mean_linf', 'robust_accuracy']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compass_lightning.attacks._core import ATTACKS
from compass_lightning.attacks.success import attack_success_rate, robust_accuracy
from compass_lightning.engine.evaluation import Evaluation, attack_key
from compass_lightning.engine.samples import Samples

#: ``(clean, adversarial, prediction)`` of the first samples of this process' shard, for pictures.
Kept = tuple[Tensor, Tensor, Tensor]
BROKEN_BY = "broken_by/"


def attack_probe(
    evaluation: Evaluation,
    name: str,
    params: Mapping[str, Any],
    eps: float,
    generator: torch.Generator,
    *,
    crafter: nn.Module | None = None,
    keep: int = 0,
) -> tuple[dict[str, Tensor], Kept | None]:
    """Craft the attack ``name`` with ``params`` at ``eps`` on ``crafter`` (a surrogate model taking
    the same inputs; ``None``: the evaluated model, white-box) and score it on the evaluated model,
    both through the task's perturbation space.

    Returns per-sample rows of the whole probe, in probe order, on the CPU: ``predicted`` (the
    task's prediction on the adversarial input), ``correct`` (whether it still counts as correct),
    ``linf`` and ``l2`` (perturbation norms in perturbation-space units); and the first ``keep``
    ``(clean, adversarial, prediction)`` triples of this process' shard. White-box adversarial
    examples are kept in ``evaluation.shared`` (by :func:`~compass_lightning.engine.evaluation.attack_key`)
    when ``evaluation.share`` is set, for the analyses that reuse them.
    """
    task, probe = evaluation.task, evaluation.probe
    attack = ATTACKS[name]
    share = evaluation.share and crafter is None
    kept: list[Kept] = []

    def run(inputs: Samples, targets: Tensor) -> dict[str, Tensor]:
        target = task.space_model(evaluation.model, inputs)
        crafting = target if crafter is None else task.space_model(crafter, inputs)
        x = task.to_space(inputs, evaluation.model)
        craft = attack.details or attack.function
        crafted = craft(crafting, x, targets, eps=eps, bounds=task.input_range, generator=generator, **params)
        x_adv, details = crafted if attack.details else (crafted, {})
        with torch.no_grad():
            outputs = target(x_adv)
        predicted = task.predictions(outputs)
        if not kept and keep:
            kept.append((x[:keep].cpu(), x_adv[:keep].cpu(), predicted[:keep].cpu()))
        delta = (x_adv - x).flatten(1)
        rows = {
            "predicted": predicted,
            "correct": task.correct(outputs, targets).to(delta.dtype),  # a float: collectives gather any dtype
            "linf": delta.abs().amax(dim=1),
            "l2": delta.norm(dim=1),
        }
        rows.update({key: value.to(delta.dtype) for key, value in details.items()})  # e.g. which attack broke it
        if share:
            rows["x_adv"] = x_adv.detach()
        rows.update(task.project(x_adv.detach(), inputs, targets, evaluation.model))  # e.g. the tokens really changed
        return rows

    rows = {key: value.cpu() for key, value in evaluation.per_sample(run, probe.inputs, probe.targets).items()}
    for key in rows:
        if key in ("correct", "projected_correct") or key.startswith(BROKEN_BY):
            rows[key] = rows[key].bool()
    if share:
        evaluation.shared.put(attack_key(name, eps, params), rows.pop("x_adv").to(probe.inputs.dtype))
    return rows, (kept[0] if kept else None)


def attack_metrics(clean_correct: Tensor, rows: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The logged metrics of one attack from :func:`attack_probe`'s rows and whether each sample was
    correct before it: ``asr``, ``robust_accuracy``, ``mean_linf``, ``mean_l2``; for a task whose
    adversarial points are not real inputs (text) also ``token_change_rate`` and ``projected_asr``,
    the ASR of the nearest real inputs; for the AutoAttack cascade ``broken_by/<attack>`` (the
    fraction of the probe that attack broke first) and ``passes`` (forward and backward passes per
    sample)."""
    metrics = {
        "asr": attack_success_rate(clean_correct, rows["correct"]),
        "robust_accuracy": robust_accuracy(rows["correct"]),
        "mean_linf": rows["linf"].mean(),
        "mean_l2": rows["l2"].mean(),
    }
    if "token_change_rate" in rows:
        metrics["token_change_rate"] = rows["token_change_rate"].mean()
    if "projected_correct" in rows:
        metrics["projected_asr"] = attack_success_rate(clean_correct, rows["projected_correct"])
    for key, values in rows.items():  # a cascade's: the fraction of the probe each stage broke, its passes per sample
        if key.startswith(BROKEN_BY) or key == "passes":
            metrics[key] = values.float().mean()
    return metrics
