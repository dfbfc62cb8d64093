"""The image-classification task adapter: how to read a batch, where perturbations live, and how to
get logits from a model (an implementation of :class:`~compass_lightning.tasks.base.Task`).

Perturbations (mutants, attacks) are described in *pixel space* — the values a person would name,
``[0, 1]`` by default. Data pipelines often normalise, so the model sees ``(pixels - mean) / std``.
The adapter converts both ways; an analysis de-normalises the probe, perturbs and clips in pixel
space, and normalises again before the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compass_lightning.engine.checks import check_interval
from compass_lightning.metrics import confusion_matrix
from compass_lightning.mutation import MUTATIONS, mutate
from compass_lightning.tasks.base import IMAGE_BUDGETS
from compass_lightning.tasks.logits import Key, LogitsAdapter, describe, two_class



def _as_channel_vector(name: str, value: float | Sequence[float] | None) -> Tensor | None:
    if value is None:
        return None
    vector = torch.as_tensor(value, dtype=torch.float32).flatten()
    if vector.numel() == 0 or not torch.isfinite(vector).all():
        raise ValueError(f"{name} must be a finite number or a non-empty sequence of them, got {value!r}")
    return vector


class Classification(LogitsAdapter):
    """Adapter for classifiers whose forward returns logits of shape ``(N, C)``, or a single logit
    ``(N, 1)``/``(N,)`` of a binary classifier (read as two classes: see
    :func:`~compass_lightning.tasks.logits.two_class`).

    Its perturbation space is pixel space (:meth:`to_pixels`/:meth:`from_pixels`; the
    :class:`~compass_lightning.tasks.base.Task` name is :meth:`to_space`), a sample is correct when
    the arg-max class is its target (:class:`~compass_lightning.tasks.logits.LogitsAdapter`), and
    every mutant and analysis applies but the token attack ``hotflip``.

    Args:
        input_key: where the inputs are in a batch: an index into a tuple/list batch or a key of a
            dict batch.
        target_key: where the class targets are, the same way (integer classes, or ``0``/``1`` of a
            binary classifier as floats).
        mean: per-channel mean the data pipeline subtracts (``None``: the data is already in pixel
            space).
        std: per-channel standard deviation the data pipeline divides by; give it with ``mean``.
        input_range: the bounds of pixel space; perturbations are clipped to it.
        one_hot: the targets are one-hot rows, read as their arg-max.

    Example:
        >>> import torch
        >>> task = Classification(mean=[0.5], std=[0.25])
        >>> x, y = task.split((torch.full((2, 1, 4, 4), 2.0), torch.tensor([0, 1])))
        >>> task.to_pixels(x).max().item()     # 2 * 0.25 + 0.5
        1.0
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> task.logits(model, x).shape
        torch.Size([2, 3])
        >>> task.correct(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])).tolist()
        [True, False]
    """

    def __init__(
        self,
        input_key: Key = 0,
        target_key: Key = 1,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        *,
        one_hot: bool = False,
    ) -> None:
        super().__init__(input_key, target_key, one_hot=one_hot)
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (both None: the data is already in pixel space)")
        self.mean = _as_channel_vector("mean", mean)
        self.std = _as_channel_vector("std", std)
        if self.std is not None and not (self.std > 0).all():
            raise ValueError(f"std must be positive, got {std!r}")
        if self.mean is not None and self.std is not None and self.mean.numel() != self.std.numel():
            if 1 not in (self.mean.numel(), self.std.numel()):
                raise ValueError(f"mean and std must have the same length, got {mean!r} and {std!r}")
        self.input_range = check_interval("input_range", input_range)
        self._cache: dict[tuple[torch.device, torch.dtype, int], tuple[Tensor, Tensor]] = {}
        self._said_no_pictures = False

    def __repr__(self) -> str:
        norm = "" if self.mean is None else f", mean={self.mean.tolist()}, std={self.std.tolist()}"
        return (
            f"Classification(input_key={self.input_key!r}, target_key={self.target_key!r}{norm}, "
            f"input_range={self.input_range})"
        )

    @property
    def normalised(self) -> bool:
        """Whether the data is normalised, i.e. data space differs from pixel space."""
        return self.mean is not None

    # -- spaces ------------------------------------------------------------------------------

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.device, x.dtype, x.ndim)
        if key not in self._cache:
            shape = (1, -1) + (1,) * (x.ndim - 2)  # channels are dim 1: (N, C, H, W) or (N, D)
            self._cache[key] = (
                self.mean.to(x.device, x.dtype).view(shape),
                self.std.to(x.device, x.dtype).view(shape),
            )
        return self._cache[key]

    def to_pixels(self, x: Tensor) -> Tensor:
        """Data space → pixel space (undo the normalisation)."""
        if not self.normalised:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def from_pixels(self, x: Tensor) -> Tensor:
        """Pixel space → data space (apply the normalisation)."""
        if not self.normalised:
            return x
        mean, std = self._stats(x)
        return (x - mean) / std

    # -- model -------------------------------------------------------------------------------

    def logits(self, model: Callable[[Tensor], Any], x: Tensor) -> Tensor:
        """``model(x)`` checked to be logits of shape ``(N, C)`` (a single logit as two classes:
        :func:`~compass_lightning.tasks.logits.two_class`); ``x`` is in data space."""
        out = model(x)
        if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != x.shape[0]:
            raise TypeError(
                f"Classification expects the model to return logits of shape (N, C) = ({x.shape[0]}, C) "
                f"for an input batch of shape {tuple(x.shape)}, but it returned {describe(out)}. "
                "Make forward() return the logits tensor (e.g. return out['logits'] or out[0]), "
                "or subclass Classification and override logits(model, x)."
            )
        return two_class(out)

    def pixel_model(self, model: nn.Module) -> PixelModel:
        """``model`` with the normalisation composed in front: pixel-space inputs to logits."""
        return PixelModel(model, self)

    # -- the Task interface ------------------------------------------------------------------

    #: The image mutants; MutationMetrics runs these by default.
    mutations = MUTATIONS
    default_mutations = ("label_error", "data_missing", "data_shuffle", "noise", "contrast", "brightness", "random_crop")

    def to_space(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        """Data space → perturbation space: :meth:`to_pixels` (the model does not matter)."""
        return self.to_pixels(x)

    adversarial_metrics: tuple[str, ...] = ()

    @property
    def budgets(self) -> dict[str, float]:
        """8/255 (L∞) and 0.5 (L2) of the pixel range: the usual budgets for images in [0, 1]."""
        low, high = self.input_range
        return {norm: value * (high - low) for norm, value in IMAGE_BUDGETS.items()}

    def project(self, x_adv: Tensor, x: Tensor, targets: Tensor, model: nn.Module) -> dict[str, Tensor]:
        """Nothing: an adversarial image is a real input."""
        return {}

    def baseline(self, x: Tensor, value: float) -> float:
        """A constant image (black for 0)."""
        return value

    def mutate(self, name: str, x: Tensor, targets: Tensor, *, classes: int, generator: torch.Generator | None,
               **params: Any) -> tuple[Tensor, Tensor]:
        """:func:`~compass_lightning.mutation.mutate` in pixel space, back in data space."""
        pixels = self.to_pixels(x)
        mutated, targets = mutate(name, pixels, targets, num_classes=classes, generator=generator,
                                  bounds=self.input_range, **params)
        return (x if mutated is pixels else self.from_pixels(mutated)), targets

    def outputs(self, model: Callable[[Tensor], Any], x: Tensor) -> Tensor:
        """The per-sample outputs: :meth:`logits`."""
        return self.logits(model, x)

    def space_model(self, model: nn.Module, x: Tensor | None = None) -> PixelModel:
        """The model on perturbation-space inputs: :meth:`pixel_model` (the samples do not matter)."""
        return self.pixel_model(model)

    def overview(self, logits: Tensor, targets: Tensor, title: str) -> Tensor:
        """The confusion matrix of the predictions."""
        from compass_lightning.reporting.figures import confusion_matrix_figure

        return confusion_matrix_figure(confusion_matrix(logits, targets, self.classes(logits)), title=title)

    def refusal(self, kind: str, name: str) -> str | None:
        """``None`` for every mutant, attack and analysis but the token attack ``hotflip``."""
        if kind == "attack" and name == "hotflip":
            return "it flips tokens: a text attack (use TextClassification)"
        return None

    def check_inputs(self, x: Any) -> str | None:
        """Refuses images that are not floats, and images whose pixel values (after undoing the
        normalisation) leave :attr:`input_range`: attacks would perturb them far beyond ε and the
        mutants would clip the data into the range (normalised data with no ``mean``/``std`` given)."""
        # one batch, or ragged images one per entry (once, at fit start: a loop is fine here)
        images = [x] if isinstance(x, Tensor) else [t[None] for t in x] if isinstance(x, list) else []
        if not all(isinstance(t, Tensor) for t in images) or not images:
            return None  # a structure a subclass reads its own way
        if not all(t.is_floating_point() for t in images):
            return (f"the images are {images[0].dtype}, but the analyses perturb them by fractions of a pixel: convert "
                    "them to floats in the data pipeline (e.g. transforms.v2.ToDtype(torch.float32, scale=True) for [0, 1]), "
                    "or give images in [0, 255] as floats with Classification(input_range=(0, 255))")
        pixels = [self.to_pixels(t) for t in images]
        low, high = self.input_range
        seen = (min(p.min().item() for p in pixels), max(p.max().item() for p in pixels))
        slack = 1e-3 * (high - low)  # a normalisation undone in float32 rounds off
        if seen[0] >= low - slack and seen[1] <= high + slack:
            return None
        cure = ("the data looks normalised: pass the statistics its pipeline uses, Classification(mean=[...], std=[...])"
                if not self.normalised else "the mean and std given do not undo the data pipeline's normalisation")
        return (f"the probe's pixel values lie in [{seen[0]:.3g}, {seen[1]:.3g}], outside input_range={self.input_range} "
                f"of {self!r}, so attacks would perturb them far beyond eps and mutants would clip them into the range; "
                f"{cure}, or set input_range to the pixel bounds of the data")

    def positions(self, x: Tensor) -> None:
        return None  # images: every position counts

    def perturbable(self, x: Tensor) -> None:
        return None  # every pixel

    def display(self, x: Tensor) -> Tensor | None:
        """Pixel-space images mapped from ``input_range`` to ``[0, 1]``; ``None`` for inputs that are
        not images ``(N, 1 or 3, H, W)`` (feature vectors, say), said once: the analyses run, only
        their pictures are left out."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            if not self._said_no_pictures:
                self._said_no_pictures = True
                warnings.warn(f"compass_lightning: inputs of shape {tuple(x.shape[1:])} per sample are not images "
                              "(1 or 3 channels, H, W), so their example pictures are not drawn; the analyses run",
                              UserWarning, stacklevel=2)
            return None
        low, high = self.input_range
        return ((x - low) / (high - low)).clamp(0, 1)

    def show(self, x: Tensor) -> Tensor | None:
        """Data-space images in ``[0, 1]``: :meth:`display` of :meth:`to_pixels`."""
        return self.display(self.to_pixels(x))

    def attribution_figure(self, x: Tensor, attributions: dict[str, Tensor], predicted: Tensor, targets: Tensor,
                           title: str) -> Tensor:
        """A grid: one row per image, the image then its heatmap overlay for each method."""
        from compass_lightning.reporting.figures import heatmap_overlay, labelled_image_grid

        images = self.show(x)
        if images is None:
            return None
        overlays = {name: heatmap_overlay(images, maps) for name, maps in attributions.items()}
        rows = {f"#{i}": torch.stack([images[i].expand(3, -1, -1), *(o[i] for o in overlays.values())])
                for i in range(len(images))}
        return labelled_image_grid(rows, columns=["input", *overlays], title=title)


    def attribution_text(self, x: Tensor, attributions: dict[str, Tensor], predicted: Tensor, targets: Tensor) -> None:
        return None  # images are pictures

    def adversarial_figure(self, x: Tensor, adversarial: dict[str, tuple[Tensor, Tensor]], targets: Tensor,
                           predicted: Tensor, title: str, model: nn.Module) -> Tensor:
        """:func:`~compass_lightning.reporting.figures.adversarial_grid` of the images."""
        from compass_lightning.reporting.figures import adversarial_grid

        if self.display(x[:1]) is None:
            return None
        return adversarial_grid(self.display, self.input_range, x, adversarial, targets, predicted, title)


class PixelModel(nn.Module):
    """A model that takes pixel-space inputs: normalises them, then returns ``task.logits``.

    Attacks and attributions perturb pixels and call this. The wrapped model is not registered as
    a submodule (``wrapped`` is a plain attribute), so the wrapper never changes the model's
    ``state_dict``, ``train()``/``eval()`` or parameter lists.

    Example:
        >>> import torch
        >>> net = torch.nn.Flatten()
        >>> pixels = PixelModel(net, Classification(mean=[0.5], std=[0.5]))
        >>> pixels(torch.ones(1, 1, 1, 2))
        tensor([[1., 1.]])
    """

    def __init__(self, model: nn.Module, task: Classification) -> None:
        super().__init__()
        self.__dict__["wrapped"] = model  # not a submodule: see the docstring
        self.task = task

    def forward(self, x: Tensor) -> Tensor:
        return self.task.logits(self.wrapped, self.task.from_pixels(x))
