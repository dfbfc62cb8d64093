"""DeepGauge neuron coverage: which neurons, sections and corners of their ranges the data exercises.

Definitions (DESIGN.md; Ma et al., DeepGauge, 2018; NC as in DeepXplore's code):

====  ==========================================================================================
nc    a neuron is covered when, for some input, its value after min-max scaling of that input's
      layer output exceeds ``threshold`` (0.2): the scaling's minimum and maximum are over the
      whole output (every position and channel of a feature map), then a channel's mean is taken,
      as DeepXplore's code does (``extents``; for a linear layer: over its units)
kmnc  each neuron's training range ``[low, high]`` is cut into ``sections`` (10) equal sections;
      a section is covered when some input's value falls in it (outside the range: none)
nbc   ``(upper + lower corners covered) / (2 · neurons)``: values above ``high`` / below ``low``
snac  ``upper corners covered / neurons``
tknc  the neurons that are among their layer's ``top_k`` (1) for some input
bknc  the neurons that are among their layer's bottom ``top_k`` (1), the smallest values, for some
      input: TKNC's mirror. DeepSensor reports BKNC beside TKNC (top-1) without defining it, and
      DeepGauge has no criterion of that name; this is the reading its name and DeepHunter's use give
      (``research/deepsensor.md`` §2): the neurons a test drives to their layer's least active
====  ==========================================================================================

Written here because no maintained PyTorch library computes these batched on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from compass_lightning.neurons._layers import Layer, neuron_values, select_layers

CRITERIA = ("nc", "kmnc", "nbc", "snac", "tknc", "bknc")
Ranges = dict[str, tuple[Tensor, Tensor]]


def profile_ranges(model: nn.Module, batches: Iterable[Tensor], *, layers: Sequence[str] | None = None,
                   forward: Callable[[Tensor], Tensor] | None = None,
                   positions: Callable[[Tensor], Tensor | None] | None = None) -> Ranges:
    """``{layer: (low, high)}``, each neuron's minimum and maximum over ``batches`` (model inputs).

    ``forward``: how an input batch goes through ``model`` (default: ``model`` itself, e.g. a task's
    ``outputs`` that adds an attention mask); ``positions``: which positions of a batch are tokens
    (:func:`~compass_lightning.neurons.neuron_values`' ``valid``).

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0], [-1.0]])), net[0].bias.zero_()
        >>> profile_ranges(net, [torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]])])["0"]
        (tensor([ 0., -2.]), tensor([2., 0.]))
    """
    chosen: dict[str, Layer] = {}
    low: dict[str, Tensor] = {}
    high: dict[str, Tensor] = {}
    for x in batches:
        chosen = chosen or select_layers(model, layers, example=x[:1], forward=forward)  # one input finds the read-outs
        values = neuron_values(forward or model, x, chosen, positions(x) if positions else None, extents=False).values
        for name, v in values.items():
            low[name] = torch.minimum(low[name], v.amin(0)) if name in low else v.amin(0)
            high[name] = torch.maximum(high[name], v.amax(0)) if name in high else v.amax(0)
    if not low:
        raise ValueError("profile_ranges needs at least one batch")
    return {name: (low[name], high[name]) for name in chosen}


class Coverage:
    """What a set of inputs has covered so far, per layer; :meth:`update` with neuron values.

    Args:
        ranges: the training ranges of :func:`profile_ranges` (needed by kmnc, nbc and snac).
        criteria: which of :data:`CRITERIA` to compute.
        threshold: NC's threshold on the per-input min-max scaled values.
        sections: KMNC's sections per neuron.
        top_k: TKNC's (and BKNC's) neurons per layer and input.

    Example:
        >>> cover = Coverage({"fc": (torch.zeros(2), torch.ones(2))}, sections=2)
        >>> cover.update({"fc": torch.tensor([[0.2, 0.9], [1.5, 0.1]])})
        >>> {k: round(v["total"].item(), 2) for k, v in cover.result().items()}
        {'nc': 1.0, 'kmnc': 0.75, 'nbc': 0.25, 'snac': 0.5, 'tknc': 1.0, 'bknc': 1.0}
    """

    def __init__(
        self,
        ranges: Ranges | None = None,
        *,
        criteria: Sequence[str] = CRITERIA,
        threshold: float = 0.2,
        sections: int = 10,
        top_k: int = 1,
    ) -> None:
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown or not criteria:
            raise ValueError(f"criteria: unknown criterion {unknown[0] if unknown else None!r}; choose from: {', '.join(CRITERIA)}")
        if ranges is None and {"kmnc", "nbc", "snac"} & set(criteria):
            raise ValueError("kmnc, nbc and snac need ranges= from profile_ranges() on training data")
        self.ranges = ranges or {}
        self.criteria = tuple(criteria)
        self.threshold, self.sections, self.top_k = threshold, sections, top_k
        self._covered: dict[str, dict[str, Tensor]] = {}

    def _state(self, name: str, values: Tensor) -> dict[str, Tensor]:
        if name not in self._covered:
            n = values.shape[1]
            flags = lambda *shape: torch.zeros(*shape, dtype=torch.bool, device=values.device)  # noqa: E731
            self._covered[name] = {"nc": flags(n), "kmnc": flags(n, self.sections), "upper": flags(n),
                                   "lower": flags(n), "tknc": flags(n), "bknc": flags(n)}
        return self._covered[name]

    def update(self, values: dict[str, Tensor], extents: dict[str, Tensor] | None = None) -> None:
        """Add the ``(N, neurons)`` values of a batch of inputs, per layer; ``extents``: each input's
        ``(N, 2)`` minimum and maximum over the layer's whole output (:func:`neuron_values`), which
        NC scales by (default: over the neuron values, the same for a linear layer)."""
        for name, v in values.items():
            state = self._state(name, v)
            if "nc" in self.criteria:
                if extents is not None and name in extents:
                    low, high = (extents[name][:, i : i + 1].to(v.device, v.dtype) for i in (0, 1))
                else:
                    low, high = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
                scaled = (v - low) / (high - low).where(high > low, torch.ones_like(high))
                state["nc"] |= (scaled > self.threshold).any(0)
            if name in self.ranges:
                low, high = (t.to(v.device) for t in self.ranges[name])
                state["upper"] |= (v > high).any(0)
                state["lower"] |= (v < low).any(0)
                inside = (v >= low) & (v <= high)
                width = (high - low).clamp_min(torch.finfo(v.dtype).tiny)
                section = ((v - low) / width * self.sections).floor().long().clamp(0, self.sections - 1)
                hit = torch.zeros_like(state["kmnc"], dtype=torch.long)
                hit.scatter_add_(1, section.T, inside.T.long())  # neurons × sections hit counts
                state["kmnc"] |= hit > 0
            for criterion, largest in (("tknc", True), ("bknc", False)):
                if criterion in self.criteria:
                    k = min(self.top_k, v.shape[1])
                    state[criterion][v.topk(k, dim=1, largest=largest).indices.flatten().unique()] = True

    def result(self) -> dict[str, dict[str, Tensor]]:
        """``{criterion: {"total": value, layer: value, ...}}`` as 0-dim float tensors."""
        out: dict[str, dict[str, Tensor]] = {}
        for criterion in self.criteria:
            per_layer: dict[str, tuple[Tensor, int]] = {}
            for name, state in self._covered.items():
                n = state["nc"].numel()
                if criterion == "kmnc":
                    per_layer[name] = (state["kmnc"].sum(), n * self.sections)
                elif criterion == "nbc":
                    per_layer[name] = (state["upper"].sum() + state["lower"].sum(), 2 * n)
                elif criterion == "snac":
                    per_layer[name] = (state["upper"].sum(), n)
                else:
                    per_layer[name] = (state[criterion].sum(), n)
            covered = sum(c for c, _ in per_layer.values())
            total = sum(n for _, n in per_layer.values())
            out[criterion] = {"total": torch.as_tensor(covered, dtype=torch.float32) / max(total, 1)}
            out[criterion].update({name: c.float() / n for name, (c, n) in per_layer.items()})
        return out


def coverage(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    ranges: Ranges | None = None,
    criteria: Sequence[str] = CRITERIA,
    layers: Sequence[str] | None = None,
    threshold: float = 0.2,
    sections: int = 10,
    top_k: int = 1,
) -> dict[str, dict[str, Tensor]]:
    """Coverage of the inputs in ``batches`` by every criterion, total and per layer, in one forward
    pass per batch (see :class:`Coverage` for the arguments).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(64, 3)
        >>> result = coverage(net, [x], ranges=profile_ranges(net, [x]))
        >>> result["nbc"]["total"].item(), sorted(result["nc"])
        (0.0, ['0', '2', 'total'])
    """
    chosen: dict[str, Layer] = {}
    cover = Coverage(ranges, criteria=criteria, threshold=threshold, sections=sections, top_k=top_k)
    for x in batches:
        chosen = chosen or select_layers(model, layers, example=x[:1])  # one input finds the read-outs
        seen = neuron_values(model, x, chosen, extents="nc" in cover.criteria)
        cover.update(seen.values, seen.extents)
    return cover.result()
