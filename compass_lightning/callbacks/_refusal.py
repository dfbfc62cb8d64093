"""Which of a monitor's chosen methods apply to its task: :func:`applicable`.

A method the user chose that does not apply is a ``ValueError`` at construction; one that came from
the defaults is left out with one warning, so that a monitor at its defaults runs on any task.

Example:
    >>> from compass_lightning.tasks import Classification
    >>> applicable(Classification(), "Monitor", "attack", ["fgsm", "pgd"], "attacks", explicit=True)
    ['fgsm', 'pgd']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from compass_lightning.reporting.reporter import CompassWarning

Selection = TypeVar("Selection", Mapping[str, Any], tuple, list)


def applicable(task: Any, monitor: str, kind: str, selection: Selection, argument: str, *, explicit: bool) -> Selection:
    """The entries of ``selection`` (names, or a mapping from names) whose ``kind`` (see
    :data:`~compass_lightning.tasks.base.KINDS`) applies to ``task``.

    One that does not is a ``ValueError`` naming ``argument`` and the task's reason when the user
    chose it (``explicit``), and is left out with one warning from ``monitor`` giving the reason
    when it came from the defaults.
    """
    refused = {name: reason for name in selection if (reason := task.refusal(kind, name))}
    if not refused:
        return selection
    name, reason = next(iter(refused.items()))
    if explicit:
        raise ValueError(f"{argument}: {name!r} does not apply to {task!r}: {reason}")
    rank_zero_warn(
        f"{monitor}: left out of the default {argument}, as they do not apply to {task!r}: "
        + "; ".join(f"{n!r} ({r})" for n, r in refused.items()),
        category=CompassWarning,
    )
    if isinstance(selection, Mapping):
        return {n: value for n, value in selection.items() if n not in refused}
    return type(selection)(n for n in selection if n not in refused)
