"""DeepSensor neuron sensitivity, and a first-order proxy of its Shapley "excitable neurons".

Sensitivity (DESIGN.md, DeepSensor Eq. 1 with absolute values): for Gaussian noise ``Δ``,
``NS_n(x) = |φ_n(x + Δ) − φ_n(x)| / ‖Δ‖₂``, averaged over ``draws`` noise draws. Two fractions:

* :func:`paper_fraction`, DeepSensor's Def. 2 and Eq. 2: neuron ``n`` is sensitive on input ``x``
  when ``NS_n(x) > λ`` (0.5), unscaled; the fraction counts (input, neuron) pairs over the probe.
  It has the units of the activations per unit of input, so it rises when a layer's weights grow:
  what a model growing more sensitive looks like.
* :func:`sensitive_fraction`, the scale-free variant of the authors' code: the probe-mean scores
  min-max scaled per layer, a neuron sensitive above the threshold. It compares neurons within a
  layer, but scaling a layer leaves it unchanged and every non-constant layer has a neuron above
  0.5 — it cannot show a model growing more sensitive.

The noise is not clipped to the pixel range: the ratio is a property of the model around ``x``.

Excitability: the papers' Shapley value of a neuron for the loss change ``ΔL = L(x+Δ) − L(x)``
when the neuron is zeroed is approximated to first order by
``a_n(x+Δ)·∂L(x+Δ)/∂a_n − a_n(x)·∂L(x)/∂a_n`` (activation × gradient, summed over a channel's
positions) — an approximation, not the papers' exact (exponential) Shapley value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compass_lightning.neurons._layers import as_tensor, neuron_values, record, select_layers
from compass_lightning.engine.rng import draw


def _noise(x: Tensor, sigma: float, draws: int, generator: torch.Generator | None, normal: Tensor | None) -> Tensor:
    """``(draws, N, ...)`` Gaussian noise of std ``sigma``: from ``normal`` (``(N, draws, ...)``
    standard normal draws, e.g. made once for a whole probe so that results do not depend on how it
    is chunked or sharded) or drawn from ``generator``."""
    if normal is not None:
        return normal.to(x.device, x.dtype).transpose(0, 1) * sigma
    return draw(torch.randn, (draws, *x.shape), generator, x) * sigma


def neuron_sensitivity(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float = 0.05,
    draws: int = 4,
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    normal: Tensor | None = None,
    valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{layer: (N, neurons)}`` sensitivity of every neuron for every input, averaged over the
    noise draws; all draws go through the model in one forward pass. ``normal``: the standard
    normal draws to use, ``(N, draws, ...)``, instead of drawing from ``generator``; ``valid``:
    which input positions are tokens (``(N, L)``; neurons average over those only).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        >>> scores = neuron_sensitivity(net, torch.zeros(5, 2), draws=8)["0"]
        >>> bool((scores[:, 0] <= 5.0 + 1e-5).all()), scores[:, 1].abs().max().item()
        (True, 0.0)
    """
    chosen = select_layers(model, layers, example=x[:1])  # one input finds the read-outs
    noise = _noise(x, sigma, draws, generator, normal)
    batch = torch.cat([x, (x.unsqueeze(0) + noise).flatten(0, 1)])
    values = neuron_values(model, batch, chosen, None if valid is None else valid.repeat(draws + 1, 1)).values
    norms = noise.flatten(2).norm(dim=2).clamp_min(1e-12)  # (draws, N)
    out = {}
    for name, v in values.items():
        clean, noisy = v[: len(x)], v[len(x) :].view(draws, len(x), -1)
        out[name] = ((noisy - clean).abs() / norms.unsqueeze(2)).mean(dim=0)
    return out


def neuron_excitability(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    sigma: float = 0.05,
    draws: int = 1,
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    normal: Tensor | None = None,
    valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{layer: (N, neurons)}`` first-order excitability (see the module docstring), averaged over
    the noise draws: two forward and two backward passes' worth of work per draw, batched.
    ``normal`` and ``valid`` as in :func:`neuron_sensitivity`."""
    chosen = select_layers(model, layers, example=x[:1])
    noise = _noise(x, sigma, draws, generator, normal)
    # the input requires grad so that a graph exists even when every parameter is frozen (the guard)
    batch = torch.cat([x, (x.unsqueeze(0) + noise).flatten(0, 1)]).detach().requires_grad_(True)
    targets = y.repeat(draws + 1)
    with torch.enable_grad(), record(chosen) as seen:
        loss = F.cross_entropy(model(batch), targets, reduction="sum")  # per-sample gradients stay apart
        outputs = [as_tensor(seen.outputs[name]) for name in chosen]
        gradients = torch.autograd.grad(loss, outputs)
    repeated = None if valid is None else valid.repeat(draws + 1, 1)
    out = {}
    for (name, layer), a, g in zip(chosen.items(), outputs, gradients):
        # a neuron's contribution sums over its (valid) positions
        contribution = layer.neurons((a * g).detach(), repeated, total=True)
        clean, noisy = contribution[: len(x)], contribution[len(x) :].view(draws, len(x), -1)
        out[name] = (noisy - clean).mean(dim=0)
    return out


def _fractions(flags: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{"total": fraction of all flags set, layer: fraction of its flags set}``."""
    total = sum(f.sum() for f in flags.values()) / max(sum(f.numel() for f in flags.values()), 1)
    return {"total": torch.as_tensor(total, dtype=torch.float32), **{n: f.float().mean() for n, f in flags.items()}}


def paper_fraction(per_input: dict[str, Tensor], threshold: float = 0.5) -> dict[str, Tensor]:
    """``{"total": fraction, layer: fraction}`` of the (input, neuron) pairs whose unscaled score
    (``(N, neurons)`` per layer: one score per input, e.g. :func:`neuron_sensitivity`) exceeds
    ``threshold`` — DeepSensor's Def. 2 (λ = 0.5) and Eq. 2, over the inputs.

    Example:
        >>> paper_fraction({"a": torch.tensor([[0.1, 0.9], [0.6, 0.2]]), "b": torch.tensor([[2.0], [0.0]])})
        {'total': tensor(0.5000), 'a': tensor(0.5000), 'b': tensor(0.5000)}
    """
    return _fractions({name: s > threshold for name, s in per_input.items()})


def scale_per_layer(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each layer's scores min-max scaled to [0, 1] (a constant layer: all 0)."""
    out = {}
    for name, s in scores.items():
        low, high = s.min(), s.max()
        out[name] = (s - low) / (high - low) if high > low else torch.zeros_like(s)
    return out


def sensitive_fraction(scores: dict[str, Tensor], threshold: float = 0.5) -> dict[str, Tensor]:
    """``{"total": fraction, layer: fraction}`` of neurons whose per-layer scaled score (one score
    per neuron, e.g. the probe mean) exceeds ``threshold``: the scale-free variant (see the module
    docstring; :func:`paper_fraction` is DeepSensor's own)."""
    return _fractions({name: s > threshold for name, s in scale_per_layer(scores).items()})


def top_neurons(scores: dict[str, Tensor], k: int = 10) -> list[str]:
    """The ``k`` neurons with the highest per-layer scaled score, as ``"layer:index"`` (ties: the
    higher raw score first)."""
    scaled = scale_per_layer(scores)
    names = [f"{layer}:{i}" for layer, s in scores.items() for i in range(len(s))]
    key = torch.cat([scaled[layer] for layer in scores]) * 1e6 + torch.cat(list(scores.values())).clamp(-1e5, 1e5)
    return [names[i] for i in key.argsort(descending=True, stable=True)[:k].tolist()]


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two sets of neuron names (1.0 for two empty sets)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def sensitivity(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float = 0.05,
    draws: int = 4,
    threshold: float = 0.5,
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, object]:
    """DeepSensor sensitivity of the model on the inputs ``x``: ``{"scores": {layer: (neurons,)}
    mean sensitivity, "fraction": {"total": .., layer: ..} DeepSensor's sensitive fractions
    (:func:`paper_fraction`), "scaled_fraction": the scale-free ones (:func:`sensitive_fraction`),
    "top": the 10 most sensitive neurons}``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> result = sensitivity(net, torch.randn(16, 4))
        >>> sorted(result["fraction"]), sorted(result["scaled_fraction"]), len(result["top"])
        (['0', '2', 'total'], ['0', '2', 'total'], 10)
    """
    per_input = neuron_sensitivity(model, x, sigma=sigma, draws=draws, layers=layers, generator=generator)
    scores = {name: s.mean(dim=0) for name, s in per_input.items()}
    return {"scores": scores, "fraction": paper_fraction(per_input, threshold),
            "scaled_fraction": sensitive_fraction(scores, threshold), "top": top_neurons(scores)}
