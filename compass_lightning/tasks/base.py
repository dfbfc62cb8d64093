"""The task-adapter interface: the one place that knows the modality.

The callbacks, :class:`~compass_lightning.engine.evaluation.Evaluation` and the probe never test
shapes or modalities: they ask the adapter. An adapter says how to read a batch, where
perturbations live (the *perturbation space*: pixels for images) and back, how to call the model
and what one sample's output is, the loss an attack ascends, whether a sample counts as correct,
which mutants and attacks apply (a refusal names the reason, at fit start), and how a sample is
drawn for a person (an image in ``[0, 1]``).

:class:`~compass_lightning.tasks.Classification` is the image implementation. A new modality is a
new class with these members; no callback changes for it (``tests/test_tasks.py`` runs a tabular
adapter through two monitors).

Example:
    >>> from compass_lightning.tasks import Classification
    >>> isinstance(Classification(), Task)
    True
    >>> isinstance(object(), Task)
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

#: The kinds of analysis a task may refuse, the first argument of :meth:`Task.refusal`.
KINDS = ("mutation", "attack", "transfer", "attribution", "neurons", "pruning")
#: The attack budgets of images in [0, 1] (the field's usual ones), by norm.
IMAGE_BUDGETS = {"linf": 8 / 255, "l2": 0.5}


@runtime_checkable
class Task(Protocol):
    """What every task adapter provides (a structural type: subclassing it is optional).

    Attributes:
        input_range: the bounds of the perturbation space; attacks clip to them.
        metric_names: the names of the basic metrics :meth:`metrics` returns (``compass/basic/<name>``),
            ``"accuracy"`` among them (the fraction of samples that count as correct).
        mutations: the registry of the mutants that apply (the image mutants of
            :data:`~compass_lightning.mutation.MUTATIONS` for images).
        default_mutations: the mutants ``MutationMetrics`` runs when given none.
        adversarial_metrics: the tags :meth:`project`'s rows add to every attack (none for images).
        budgets: the default attack budgets in the units of the perturbation space, by norm
            (``"linf"``, ``"l2"``): what the monitors attack with when ``eps``/``eps_l2`` are not
            given (:data:`IMAGE_BUDGETS` for images).
    """

    input_range: tuple[float, float]
    metric_names: tuple[str, ...]
    mutations: Any
    default_mutations: tuple[str, ...]
    adversarial_metrics: tuple[str, ...]
    budgets: Mapping[str, float]

    def split(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of a batch, inputs in data space (what the model takes)."""

    def to_space(self, x: Any, model: nn.Module) -> Tensor:
        """Data-space inputs → the perturbation space attacks and attributions work in (pixels: undo
        a normalisation; token ids: the model's embeddings)."""

    def project(self, x_adv: Tensor, x: Any, targets: Tensor, model: nn.Module) -> dict[str, Tensor]:
        """Per-sample rows about adversarial points ``x_adv`` of the data-space samples ``x`` that the
        space alone does not show: ``token_change_rate`` (a fraction per sample) and
        ``projected_correct`` (whether the real input nearest to ``x_adv`` still counts as correct),
        as a text attack needs; ``{}`` where every point is a real input (pixels)."""

    def baseline(self, x: Tensor, value: float) -> Tensor | float:
        """The point attribution baselines start from for perturbation-space inputs ``x``: ``value``
        everywhere for images; what in ``x`` is not perturbable kept (the token ids of text)."""

    def mutate(self, name: str, x: Any, targets: Tensor, *, classes: int, generator: Any,
               **params: Any) -> tuple[Any, Tensor]:
        """The mutant ``name`` (of :attr:`mutations`) applied to data-space inputs and their targets,
        the result in data space (the inputs themselves when the mutant leaves them alone)."""

    def outputs(self, model: Any, x: Tensor) -> Tensor:
        """The model's per-sample outputs for data-space inputs ``x`` (one row per sample),
        checked, with a message saying what was expected."""

    def space_model(self, model: nn.Module, x: Any) -> nn.Module:
        """``model`` taking perturbation-space inputs of the data-space samples ``x`` (what attacks and
        attributions differentiate; a text model also needs their token ids and masks)."""

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The mean loss of ``outputs`` against ``targets`` (pruning importances, attacks)."""

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Whether each sample counts as correct: a ``(N,)`` bool tensor."""

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The basic metrics (:attr:`metric_names`) of ``outputs`` against ``targets``, 0-d tensors."""

    def classes(self, outputs: Tensor) -> int:
        """How many classes the outputs score (what a label mutant draws wrong labels from)."""

    def overview(self, outputs: Tensor, targets: Tensor, title: str) -> Tensor | None:
        """A picture of the clean outputs against the targets (a confusion matrix for a classifier),
        ``(3, H, W)`` in ``[0, 1]``, or ``None``."""

    def predictions(self, outputs: Tensor) -> Tensor:
        """What the model predicts for each sample (shown on the example grids)."""

    def refusal(self, kind: str, name: str) -> str | None:
        """Why the analysis ``name`` of ``kind`` (one of :data:`KINDS`) does not apply to this
        task, or ``None`` when it does."""

    def read_targets(self, targets: Any) -> Any:
        """A probe's targets in the form the analyses score (class indices ``(N,)`` for a
        classifier, whatever form the data pipeline hands them in)."""

    def check_targets(self, targets: Any, outputs: Tensor) -> str | None:
        """Why a probe's targets (after :meth:`read_targets`) cannot be scored against the model's
        per-sample ``outputs`` of a few samples (a regression, one-hot rows, classes the model does
        not score) — at fit start — or ``None`` when they can."""

    def check_inputs(self, x: Any) -> str | None:
        """Why the data-space samples ``x`` (a probe, at fit start) cannot be analysed as this task
        reads them — images outside the pixel range, or not floats — or ``None`` when they can."""

    def positions(self, x: Any) -> Tensor | None:
        """For sequence inputs, which positions of each data-space sample are real tokens rather than
        padding (``(N, L)`` booleans: neuron means cover those only), or ``None``."""

    def perturbable(self, x: Any) -> Tensor | None:
        """Which positions of each data-space sample the analyses may change (``(N, L)`` booleans for
        text: the tokens that are neither padding nor special; deletion and insertion count those
        only), or ``None`` for all of them."""

    def display(self, x: Tensor) -> Tensor | None:
        """Perturbation-space samples ``(N, ...)`` as images ``(N, C, H, W)`` in ``[0, 1]``, or
        ``None`` when they are not drawn as images."""

    def show(self, x: Any) -> Tensor | None:
        """Data-space samples as images ``(N, C, H, W)`` in ``[0, 1]``, or ``None``."""

    def attribution_figure(self, x: Any, attributions: dict[str, Tensor], predicted: Tensor, targets: Tensor,
                           title: str) -> Tensor | None:
        """A picture ``(3, H, W)`` of the attributions of each method for the data-space samples ``x``
        (heatmap overlays for images, coloured tokens for text), or ``None``."""

    def attribution_text(self, x: Any, attributions: dict[str, Tensor], predicted: Tensor,
                         targets: Tensor) -> list[dict[str, Any]] | None:
        """The rows of the attribution figure as text for the HTML report — ``[{"label": str,
        "tokens": [str], "scores": [float]}]`` — where samples are token sequences, else ``None``."""

    def adversarial_figure(self, x: Tensor, adversarial: dict[str, tuple[Tensor, Tensor]], targets: Tensor,
                           predicted: Tensor, title: str, model: nn.Module) -> Tensor | None:
        """A picture ``(3, H, W)`` of a few clean perturbation-space samples ``x`` (predicted as
        ``predicted``) and, per attack, their adversarial versions with the predictions on them
        (``{attack: (x_adv, predicted)}``); ``None`` when samples are not drawn."""
