"""Layer-wise deviation under attack (the explainable-attacks paper, as DESIGN.md decides).

For every selected convolution, Grad-CAM of the clean input, of an adversarial input and of
Gaussian noise with the adversarial perturbation's mean and standard deviation (per sample,
clipped to the pixel bounds), each for the class the model predicts on that input, every map
resized to the input's resolution (bilinear) before maps are compared, as the paper's code does.
Per layer: the cosine similarity of the clean map with the adversarial map (``adversarial``) and
with the Gaussian one (``gaussian``), their ``gap`` (gaussian − adversarial: how much more the
attack moves the layer's attention than equally strong noise) — over every input — and
``compromise_probability``: the fraction of inputs whose adversarial example *fools* the model
(its prediction changes, the paper's success rule) and has an adversarial similarity below the
layer's median Gaussian similarity. An example that does not fool compromises nothing: the paper
analyses successful examples only. ``fooled`` (the fraction of inputs fooled) is logged beside
it, so the probability among fooling examples is their ratio; it stays defined (0) when the
attack fools nobody, where the ratio would not be.

The paper's strength sweep: the perturbation (and its matched noise) scaled by 0.25, 0.5, 1, 2
and 4, clipped to the bounds, each scaled example re-checked for fooling — its released loop
mixes the scales up (``research/explainable.md``: not reproduced). :func:`compromised_layers`
counts, per fooled example, the layers it compromises (the paper's Fig. 7).

Grad-CAM of every layer and every strength comes from one backward pass: the gradient of the
predicted logits with respect to all recorded layer outputs at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compass_lightning.attacks import run_attack
from compass_lightning.attribution.gradcam import gradcam_maps
from compass_lightning.neurons._layers import Layer, select_layers
from compass_lightning.engine.rng import draw

SUMMARY = ("adversarial", "gaussian", "gap", "compromise_probability")
#: The paper's perturbation strengths (§III-D); 1 is the attack's own example.
STRENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def conv_neuron_layers(model: nn.Module, names: Sequence[str] | None = None, *, example: Any = None,
                       forward: Callable[[Any], Any] | None = None, argument: str = "layers") -> dict[str, Layer]:
    """The selected layers whose outputs are feature maps (by default: every ``Conv2d``, read after
    its activation; of named layers, those that are not ``Linear``): :func:`select_layers`."""
    selected = select_layers(model, names, example=example, forward=forward, argument=argument)
    chosen = {n: layer for n, layer in selected.items() if layer.channels_first}
    if not chosen:
        raise ValueError(f"{argument}: layer deviation needs Conv2d layers, and the model has none")
    return chosen


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample cosine similarity of two batches of maps: 1 when both are all zero (the same map),
    0 when only one is (no shared attention), never NaN."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_zero = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    value = (a * b).sum(dim=1) / norms.clamp_min(1e-300)
    return torch.where(both_zero, torch.ones_like(value), value).float()


def matched_gaussian(
    x: Tensor, x_adv: Tensor, *, bounds: tuple[float, float], generator: torch.Generator | None, normal: Tensor | None = None
) -> Tensor:
    """``x`` plus Gaussian noise with each sample's adversarial perturbation mean and standard
    deviation, clipped to ``bounds`` (``normal``: the standard normal draws to use, shaped as ``x``)."""
    delta = (x_adv - x).flatten(1)
    mean, std = delta.mean(dim=1), delta.std(dim=1, unbiased=False)
    z = normal.to(x.device, x.dtype) if normal is not None else draw(torch.randn, tuple(x.shape), generator, x)
    noise = z * std.view(-1, *[1] * (x.ndim - 1)) + mean.view(-1, *[1] * (x.ndim - 1))
    return (x + noise).clamp(*bounds)


def deviation_similarities(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "fgsm",
    eps: float = 8 / 255,
    layers: dict[str, Layer] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    attack_params: dict[str, Any] | None = None,
    x_adv: Tensor | None = None,
    normal: Tensor | None = None,
    strengths: Sequence[float] = (1.0,),
) -> tuple[dict[float, dict[str, Any]], dict[str, Tensor]]:
    """Per strength ``{"fooled": (N,) bool, "layers": {layer: (adversarial, gaussian)}}`` — the
    similarities of every input ``(N,)`` to its clean map at the input's resolution — and the
    inputs and maps of strength 1 (``x_adv``, ``x_gauss``, predictions, the maps of each) for
    pictures. ``x_adv``: adversarial inputs already made by ``attack`` (then the attack is not run
    again); ``normal``: the standard normal draws of the Gaussian noise, shaped as ``x``; each
    strength ``k`` scales the perturbation and the noise: ``clip(x + k·δ)``."""
    layers = layers if layers is not None else conv_neuron_layers(model, example=x[:1])
    if x_adv is None:
        x_adv = run_attack(attack, model, x, y, eps=eps, bounds=bounds, generator=generator, **(attack_params or {}))
    x_adv = x_adv.detach()
    x_gauss = matched_gaussian(x, x_adv, bounds=bounds, generator=generator, normal=normal)
    strengths = list(dict.fromkeys([1.0, *strengths]))  # strength 1 first: the pictures' examples
    adv = [(x + k * (x_adv - x)).clamp(*bounds) for k in strengths]
    gauss = [(x + k * (x_gauss - x)).clamp(*bounds) for k in strengths]
    batch = torch.cat([x, *adv, *gauss])
    with torch.no_grad():
        predicted = model(batch).argmax(dim=1)
    maps = gradcam_maps(model, batch, predicted, {n: layer.site for n, layer in layers.items()})  # one backward for every input, strength and layer
    n, s = len(x), len(strengths)
    resized = {name: nn.functional.interpolate(m[:, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                               align_corners=False)[:, 0] for name, m in maps.items()}
    out = {}
    for i, k in enumerate(strengths):
        a, g = slice((1 + i) * n, (2 + i) * n), slice((1 + s + i) * n, (2 + s + i) * n)
        out[k] = {"fooled": (predicted[a] != predicted[:n]).cpu(),
                  "layers": {name: (cosine(m[:n], m[a]), cosine(m[:n], m[g])) for name, m in resized.items()}}
    pictures = {"x_adv": x_adv, "x_gauss": x_gauss, "predicted": torch.cat([predicted[: 2 * n], predicted[(1 + s) * n : (2 + s) * n]]),
                "maps": {name: torch.cat([m[: 2 * n], m[(1 + s) * n : (2 + s) * n]]) for name, m in maps.items()}}
    return out, pictures


def summarise_deviation(similarities: dict[str, tuple[Tensor, Tensor]], fooled: Tensor | None = None) -> dict[str, dict[str, Tensor]]:
    """``{layer: {adversarial, gaussian, gap, compromise_probability}}`` from per-input similarities;
    only the inputs ``fooled`` marks (all when ``None``) can count as compromised (the fraction is
    over every input).

    Example:
        >>> adv, gauss = torch.tensor([0.1, 0.5, 0.9, 0.95]), torch.tensor([0.6, 0.7, 0.8, 0.9])
        >>> s = summarise_deviation({"conv": (adv, gauss)})["conv"]
        >>> round(s["gap"].item(), 3), s["compromise_probability"].item()  # median gaussian 0.7: 2 of 4 below
        (0.137, 0.5)
        >>> fooled = torch.tensor([False, True, True, True])   # the first is below, but does not fool
        >>> summarise_deviation({"conv": (adv, gauss)}, fooled)["conv"]["compromise_probability"].item()
        0.25
    """
    out = {}
    for name, (adversarial, gaussian) in similarities.items():
        threshold = gaussian.quantile(0.5)
        counted = torch.ones_like(adversarial, dtype=torch.bool) if fooled is None else fooled.to(adversarial.device)
        out[name] = {
            "adversarial": adversarial.mean(),
            "gaussian": gaussian.mean(),
            "gap": gaussian.mean() - adversarial.mean(),
            "compromise_probability": ((adversarial < threshold) & counted).float().mean(),
        }
    return out


def compromised_layers(similarities: dict[str, tuple[Tensor, Tensor]], fooled: Tensor) -> Tensor:
    """``(fooled examples,)`` how many layers each fooling example compromises (its adversarial
    similarity below the layer's median Gaussian similarity): the paper's Fig. 7.

    Example:
        >>> adv = {"a": torch.tensor([0.1, 0.9, 0.2]), "b": torch.tensor([0.3, 0.9, 0.9])}
        >>> gauss = torch.tensor([0.5, 0.5, 0.5])
        >>> compromised_layers({k: (v, gauss) for k, v in adv.items()}, torch.tensor([True, True, False])).tolist()
        [2, 0]
    """
    counts = torch.zeros(int(fooled.sum()), dtype=torch.long)
    for adversarial, gaussian in similarities.values():
        below = adversarial < gaussian.quantile(0.5)
        counts += below[fooled.to(below.device)].long().cpu()
    return counts


def summarise_strengths(by_strength: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """The summaries of :func:`deviation_similarities`' rows (per strength ``{"fooled", "layers"}``):
    ``{"layers": {layer: summary} at strength 1, "fooled": fraction at 1, "counts": the compromised
    layers of each fooled example at 1, "strengths": {k: {"fooled": fraction, "compromise_probability":
    mean over the layers, "layers": {layer: compromise probability}}}}``."""
    summaries = {k: summarise_deviation(rows["layers"], rows["fooled"]) for k, rows in sorted(by_strength.items())}
    strengths = {}
    for k, summary in summaries.items():
        per_layer = {n: v["compromise_probability"] for n, v in summary.items()}
        strengths[k] = {"fooled": by_strength[k]["fooled"].float().mean(), "layers": per_layer,
                        "compromise_probability": torch.stack(list(per_layer.values())).mean()}
    reference = by_strength[1.0]
    return {"layers": summaries[1.0], "fooled": strengths[1.0]["fooled"],
            "counts": compromised_layers(reference["layers"], reference["fooled"]), "strengths": strengths}


def most_vulnerable(summary: dict[str, dict[str, Tensor]], count: int = 3) -> list[str]:
    """The ``count`` layers with the largest gap (the attack moves their attention most beyond noise)."""
    return sorted(summary, key=lambda name: -float(summary[name]["gap"]))[:count]


def layer_deviation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "fgsm",
    eps: float = 8 / 255,
    layers: Sequence[str] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    **attack_params: Any,
) -> dict[str, Any]:
    """Layer deviation of ``model`` (pixel inputs ``x`` in ``bounds``) under ``attack`` at ``eps``:
    ``{"layers": {layer: summary}, "most_vulnerable": [...], "fooled": fraction}`` (see the module docstring).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
        >>> result = layer_deviation(net, torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
        >>> sorted(result["layers"]["0"]), len(result["most_vulnerable"])
        (['adversarial', 'compromise_probability', 'gap', 'gaussian'], 2)
    """
    chosen = conv_neuron_layers(model, layers, example=x[:1])
    by_strength, _ = deviation_similarities(
        model, x, y, attack=attack, eps=eps, layers=chosen, bounds=bounds, generator=generator, attack_params=attack_params
    )
    summary = summarise_deviation(by_strength[1.0]["layers"], by_strength[1.0]["fooled"])
    return {"layers": summary, "most_vulnerable": most_vulnerable(summary), "fooled": by_strength[1.0]["fooled"].float().mean()}
