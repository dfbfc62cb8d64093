"""Data mutants (AI-Compass module 2): the probe set changed in controlled ways.

Every mutant is a batched function of the whole probe ``(x, y)`` in pixel space plus a seeded
``torch.Generator``, so the same seed gives the same mutant every epoch and epochs compare.
Image operations use torchvision's ``transforms.v2.functional`` where it has them; ``random_crop``
is one batched ``grid_sample`` instead, because torchvision crops a whole batch at one position
and a per-sample loop would be slow.

========================  =========================================================  ==============
name                      what it does                                               parameters
========================  =========================================================  ==============
``label_error``           ``round(p·N)`` labels set to a random *other* class        ``p=0.1``
``data_missing``          ``round(p·H·W)`` pixels of every image set to 0 (black)    ``p=0.2``
``data_shuffle``          samples permuted together with their labels; the metrics
                          must not change (if they do, predictions depend on the
                          batch a sample is in)
``noise``                 additive Gaussian noise, then clipped                     ``sigma=0.1``
``contrast``              contrast scaled about each image's grey mean              ``factor=0.5``
``brightness``            pixel values scaled                                       ``factor=1.3``
``random_crop``           a crop of 60–100 % of the area, resized back              ``scale=(0.6, 1.0)``
========================  =========================================================  ==============

Parameters are in units of the unit pixel range: :func:`mutate` maps ``bounds`` to ``[0, 1]``
before the operation and back after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from compass_lightning.engine.checks import check_interval, non_negative, probability
from compass_lightning.engine.registry import Check, Operation, Registry
from compass_lightning.engine.rng import draw

@dataclass(frozen=True)
class Mutant(Operation):
    """A registered mutation operator: its function, default parameters and their checks.

    Example:
        >>> MUTATIONS["noise"].resolve({"sigma": 0.2}), MUTATIONS["noise"].defaults
        ({'sigma': 0.2}, {'sigma': 0.1})
    """

    kind: str = "mutation"
    permutes: bool = False  # reorders samples (with labels) and changes nothing else


MUTATIONS: Registry[Mutant] = Registry("mutation")



def _mutant(name: str, *, permutes: bool = False, **checks: Check) -> Callable:
    def add(function: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
        mutant = Mutant.from_function(name, function, checks, ("num_classes", "generator"), permutes=permutes)
        MUTATIONS.register(name)(mutant)
        return function

    return add


def shuffle_permutation(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The permutation ``data_shuffle`` applies to ``n`` samples: ``randperm(n)`` from ``generator``.

    ``mutate("data_shuffle", x, y, generator=g)`` returns ``x[p], y[p]`` for
    ``p = shuffle_permutation(len(x), g')`` where ``g'`` is seeded like ``g``, so a caller can align
    the shuffled results with the original samples.
    """
    device = generator.device if generator is not None else None
    return torch.randperm(n, generator=generator, device=device)


def batch_dependence(clean_logits: Tensor, shuffled_logits: Tensor, permutation: Tensor) -> Tensor:
    """The largest change of a predicted probability when the samples are fed in another order:
    row ``i`` of ``shuffled_logits`` is the model's output for sample ``permutation[i]``, and 0 means
    every prediction is independent of which samples share its batch.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> permutation = torch.tensor([2, 0, 1])
        >>> batch_dependence(logits, logits[permutation], permutation).item()
        0.0
    """
    aligned = torch.empty_like(shuffled_logits)
    aligned[permutation.to(shuffled_logits.device)] = shuffled_logits
    return (aligned.softmax(dim=1) - clean_logits.softmax(dim=1)).abs().max()


def _images_only(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"mutation {name!r} needs image batches of shape (N, C, H, W), got {tuple(x.shape)}")


@_mutant("label_error", p=probability)
def _label_error(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, p: float = 0.1):
    if num_classes < 2:
        raise ValueError(f"label_error needs at least 2 classes, got num_classes={num_classes}")
    count = round(p * len(y))
    device = generator.device if generator is not None else torch.device("cpu")
    index = shuffle_permutation(len(y), generator)[:count].to(y.device)
    offset = torch.randint(1, num_classes, (count,), generator=generator, device=device).to(y.device)
    mutated = y.clone()
    mutated[index] = (y[index] + offset) % num_classes  # offset in [1, C-1]: never the same class
    return x, mutated


@_mutant("data_missing", p=probability)
def _data_missing(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, p: float = 0.2):
    # A pixel is every channel at one position; (N, D) inputs have one "pixel" per feature.
    spatial = x.shape[2:] if x.ndim >= 3 else x.shape[1:]
    count = math.prod(spatial)
    scores = draw(torch.rand, (len(x), count), generator, x)
    mask = torch.zeros(len(x), count, dtype=torch.bool, device=x.device)
    mask.scatter_(1, scores.topk(round(p * count), dim=1).indices, True)
    mask = mask.view(len(x), *((1,) if x.ndim >= 3 else ()), *spatial)
    return x.masked_fill(mask, 0.0), y


@_mutant("data_shuffle", permutes=True)
def _data_shuffle(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None):
    permutation = shuffle_permutation(len(x), generator)
    return x[permutation.to(x.device)], y[permutation.to(y.device)]


@_mutant("noise", sigma=non_negative)
def _noise(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, sigma: float = 0.1):
    return (x + sigma * draw(torch.randn, tuple(x.shape), generator, x)).clamp(0.0, 1.0), y


@_mutant("contrast", factor=non_negative)
def _contrast(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, factor: float = 0.5):
    _images_only("contrast", x)
    return TF.adjust_contrast(x, factor), y


@_mutant("brightness", factor=non_negative)
def _brightness(x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, factor: float = 1.3):
    _images_only("brightness", x)
    return TF.adjust_brightness(x, factor), y


@_mutant("random_crop", scale=partial(check_interval, low=0.0, high=1.0, low_open=True, strict=False))
def _random_crop(
    x: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, scale: tuple[float, float] = (0.6, 1.0)
):
    _images_only("random_crop", x)
    low, high = scale
    area = low + (high - low) * draw(torch.rand, (len(x),), generator, x)
    side = area.sqrt()  # the fraction of each side kept: the crop keeps the image's aspect ratio
    centre = (1.0 - side).unsqueeze(1) * (2.0 * draw(torch.rand, (len(x), 2), generator, x) - 1.0)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False), y


def mutate(
    name: str,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    **params: Any,
) -> tuple[Tensor, Tensor]:
    """Apply the mutant ``name`` to a batch in pixel space.

    Args:
        name: a key of :data:`MUTATIONS`.
        x: inputs in pixel space, ``(N, C, H, W)`` (``label_error``, ``data_missing``, ``noise`` and
            ``data_shuffle`` also take ``(N, D)``).
        y: integer targets ``(N,)``.
        num_classes: the number of classes (for ``label_error``).
        generator: the source of randomness; a CPU generator gives the same mutant on any device.
        bounds: the pixel range of ``x``; parameters refer to the unit range mapped onto it.
        **params: the mutant's parameters (see the module docstring); unknown ones are an error.

    Returns:
        ``(x', y')``. A mutant that leaves the inputs alone returns ``x`` itself.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(10, 1, 4, 4), torch.arange(10)
        >>> _, noisy_y = mutate("label_error", x, y, num_classes=10, generator=g, p=0.3)
        >>> int((noisy_y != y).sum())
        3
    """
    mutant = MUTATIONS.lookup(name, "mutation")
    params = mutant.resolve(params)
    low, high = bounds
    scaled = (low, high) != (0.0, 1.0)
    unit = (x - low) / (high - low) if scaled else x
    mutated, targets = mutant.function(unit, y, num_classes=num_classes, generator=generator, **params)
    if mutated is unit:
        return x, targets
    return (mutated * (high - low) + low if scaled else mutated), targets
