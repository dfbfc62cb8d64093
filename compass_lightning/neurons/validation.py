"""Deep Validation (the thesis' chapter 3): how well a model's own hidden layers flag the inputs it gets wrong.

On correctly classified training inputs, one one-class model is fitted per hidden layer and per
class on the layer's neuron values (Algorithm 1). An input's discrepancy is the sum over layers of
minus the signed distance to the boundary of the one-class model of the class the model predicts
(``d = Σ_i −t_i^{y'}(f_i(x))``, Eqs. 3.2–3.3, Algorithm 2): positive means an outlier. Corner cases
are the thesis' metamorphic transforms (brightness ``x + β``, contrast ``α·x``, rotation, shear,
scale, translation, complement), each at the strength its grid search chooses: the first strength
at which about 60 % of the seeds are misclassified (:func:`choose_strength`). The score is the
ROC AUC of the discrepancy, successful corner cases (misclassified) against clean inputs, failed
ones left out (§3.4.4).

Where the thesis is silent (``research/thesis.md`` §1 and §5), this module decides:

* the features are the neuron values every analysis here reads (a conv channel's spatial mean, a
  linear unit): raw conv maps make the one-class SVMs' cost grow with the map size;
* the hidden layers are the default layers without the last (the logits), or the ``layers`` named;
* the one-class model is scikit-learn's ``OneClassSVM`` (RBF kernel, ``nu=0.1``, ``gamma="scale"``,
  the same for every class of a layer, as the thesis shares them), on features standardised per
  layer over the training inputs (the kernel width is otherwise set by whichever neuron is largest);
* a class with fewer than 2 correctly classified training inputs has no model; inputs predicted as
  it score 0 at that layer.

scikit-learn is an optional dependency: ``pip install compass-lightning[validation]``.

Example:
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(64, 4)
    >>> validator = fit_validator(net, x, net(x).argmax(1))  # every input "correct"
    >>> found = validator.discrepancy(net, torch.cat([x[:8], 10 * x[:8]]))
    >>> sorted(found.layers), bool(found.total[8:].mean() > found.total[:8].mean())  # far inputs are outliers
    (['0'], True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from compass_lightning.neurons._layers import neuron_values, select_layers


def one_class_svm() -> Any:
    """scikit-learn's ``OneClassSVM`` class, or an ``ImportError`` naming the extra that brings it."""
    try:
        from sklearn.svm import OneClassSVM
    except ImportError as error:  # an optional dependency: say which extra brings it
        raise ImportError("Deep Validation fits scikit-learn's OneClassSVM: pip install compass-lightning[validation]") from error
    return OneClassSVM


@dataclass(frozen=True)
class Discrepancy:
    """``total`` ``(N,)`` (the sum over layers), ``layers`` ``{layer: (N,)}`` and ``predicted`` ``(N,)``."""

    total: Tensor
    layers: dict[str, Tensor]
    predicted: Tensor


@dataclass
class Validator:
    """The fitted one-class models: ``models[layer][class]`` (scikit-learn estimators), and each
    layer's feature ``mean`` and ``std`` over the training inputs. Made by :func:`fit_validator`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        >>> x = torch.randn(40, 3)
        >>> validator = fit_validator(net, x, net(x).argmax(1))
        >>> validator.discrepancy(net, x[:5]).total.shape
        torch.Size([5])
    """

    layers: list[str]
    models: dict[str, dict[int, Any]]
    mean: dict[str, Tensor]
    std: dict[str, Tensor]
    requested: list[str] | None = None  # the ``layers`` asked for (``None``: the defaults, read after activations)

    def discrepancy(self, model: nn.Module, x: Tensor, batch_size: int | None = None) -> Discrepancy:
        """Every input's discrepancy, per layer and summed, for the class the model predicts."""
        chosen = hidden_layers(model, self.requested, x)
        features, predicted = _features(model, x, chosen, batch_size)
        per_layer = {}
        for name in self.layers:
            scaled = ((features[name] - self.mean[name]) / self.std[name]).double().numpy()
            scores = torch.zeros(len(x), dtype=torch.float64)
            for k, svm in self.models[name].items():
                rows = (predicted == k).nonzero().squeeze(1)
                if len(rows):
                    scores[rows] = -torch.from_numpy(svm.decision_function(scaled[rows.numpy()]))
            per_layer[name] = scores
        return Discrepancy(sum(per_layer.values()), per_layer, predicted)


def _features(model: nn.Module, x: Tensor, layers: dict, batch_size: int | None) -> tuple[dict[str, Tensor], Tensor]:
    """``({layer: (N, neurons)}, predictions)`` on the CPU, ``batch_size`` inputs per forward."""
    step = batch_size or len(x)
    parts = [neuron_values(model, x[i : i + step], layers, extents=False) for i in range(0, len(x), step)]
    values = {name: torch.cat([p.values[name] for p in parts]).cpu() for name in layers}
    return values, torch.cat([p.logits.argmax(1) for p in parts]).cpu()


def hidden_layers(model: nn.Module, layers: Sequence[str] | None = None, example: Tensor | None = None) -> dict:
    """The layers validated: those named, or every default layer but the last (the logits); with
    ``example`` (inputs; the first is traced) placed where every analysis reads them, else only named."""
    chosen = select_layers(model, layers, example=None if example is None else example[:1])
    return dict(list(chosen.items())[:-1]) if layers is None and len(chosen) > 1 else chosen


def fit_validator(
    model: nn.Module, x: Tensor, y: Tensor, *, layers: Sequence[str] | None = None, nu: float = 0.1,
    gamma: str | float = "scale", batch_size: int | None = None,
) -> Validator:
    """Fit the one-class models on the training inputs ``x`` the model classifies as ``y`` (the
    others are left out, Algorithm 1); ``layers``: the hidden layers (default: every default layer
    but the last, the logits); ``nu``, ``gamma``: ``OneClassSVM``'s."""
    svm_class = one_class_svm()
    model_layers = hidden_layers(model, layers, x)  # the thesis validates the hidden layers
    features, predicted = _features(model, x, model_layers, batch_size)
    correct = predicted == y.cpu()
    validator = Validator(list(model_layers), {}, {}, {}, None if layers is None else list(layers))
    for name, values in features.items():
        kept = values[correct]
        validator.mean[name] = kept.mean(0)
        validator.std[name] = kept.std(0).clamp_min(1e-6) if len(kept) > 1 else torch.ones(values.shape[1])
        scaled = ((kept - validator.mean[name]) / validator.std[name]).double().numpy()
        classes = y.cpu()[correct]
        validator.models[name] = {int(k): svm_class(nu=nu, gamma=gamma).fit(scaled[(classes == k).numpy()])
                                  for k in classes.unique() if int((classes == k).sum()) >= 2}
    return validator


def detection_auc(clean: Tensor, corner: Tensor) -> float:
    """ROC AUC of discrepancies: ``corner`` (successful corner cases, positives) against ``clean``
    (negatives), by torchmetrics; NaN when either side is empty.

    Example:
        >>> detection_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
        1.0
    """
    if not len(clean) or not len(corner):
        return math.nan
    scores = torch.cat([clean, corner]).double()
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(corner))]).long()
    return float(binary_auroc(scores, labels))


#: The thesis' transforms (Table 3.1): ``name: (transform(x, strength), its grid (Table 3.4))``;
#: images in ``[0, 1]``, ``(N, C, H, W)``. Shear is given in degrees to torchvision (``atan`` of
#: the thesis' shear factor); translation in pixels; scale below 1 shrinks.
TRANSFORMS: Mapping[str, tuple[Callable[[Tensor, float], Tensor], Sequence[float]]] = {
    "brightness": (lambda x, b: (x + b).clamp(0, 1), [round(0.004 * i, 3) for i in range(1, 238)]),
    "contrast": (lambda x, a: (a * x).clamp(0, 1), [round(0.1 * i, 1) for i in range(11, 51)]),  # from identity up: α = 0 is a blank image
    "rotation": (lambda x, t: TF.affine(x, angle=float(t), translate=[0, 0], scale=1.0, shear=[0.0, 0.0]), list(range(1, 71))),
    "shear": (lambda x, s: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0,
                                     shear=[math.degrees(math.atan(s)), math.degrees(math.atan(s))]), [0.1, 0.2, 0.3, 0.4, 0.5]),
    "scale": (lambda x, s: TF.affine(x, angle=0.0, translate=[0, 0], scale=float(s), shear=[0.0, 0.0]), [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
    "translation": (lambda x, t: TF.affine(x, angle=0.0, translate=[int(t), int(t)], scale=1.0, shear=[0.0, 0.0]), list(range(1, 19))),
    "complement": (lambda x, _: 1 - x, [1.0]),
}


def choose_strength(
    model: nn.Module, x: Tensor, y: Tensor, name: str, *, target: float = 0.6, floor: float = 0.3,
) -> tuple[float | None, float]:
    """The thesis' grid search for the transform ``name``: ``(strength, success rate)`` of the first
    strength of its grid at which at least ``target`` of the seeds ``x`` are misclassified (else the
    grid's most successful one), or ``(None, rate)`` when no strength reaches ``floor`` (the
    transform is dropped). All strengths in one batched forward per strength.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.rand(8, 1, 2, 2)
        >>> strength, rate = choose_strength(net, x, net(x).argmax(1), "complement", floor=0.0)
        >>> strength, 0.0 <= rate <= 1.0
        (1.0, True)
    """
    transform, grid = TRANSFORMS[name]
    best: tuple[float | None, float] = (None, -1.0)
    with torch.no_grad():
        for strength in grid:
            rate = float((model(transform(x, strength)).argmax(1) != y).float().mean())
            if rate >= target:
                return float(strength), rate
            if rate > best[1]:
                best = (float(strength), rate)
    return best if best[1] >= floor else (None, max(best[1], 0.0))
