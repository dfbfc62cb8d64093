"""Attribution methods and their faithfulness (AI-Compass module 4).

Every method has the signature ``method(model, x, target, **params) -> attributions`` with the
shape of ``x``: ``model`` maps pixel-space inputs to logits, ``target`` holds each sample's class.
``saliency``, ``input_x_gradient``, ``integrated_gradients``, ``smoothgrad`` (and its
absolute-value variant ``smoothgrad_abs``) and ``deeplift`` are Captum's; ``gradcam`` (equal to
Captum's ``LayerGradCam`` where that reads the same place, see :mod:`compass_lightning.attribution.gradcam`),
``fast_ig``, ``guided_ig``, ``agi`` and ``big`` are written here (see
:mod:`compass_lightning.attribution.paths`). :func:`insertion_deletion` scores any attribution.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> attribute("integrated_gradients", model, x, torch.tensor([0, 2]), steps=16).shape
    torch.Size([2, 1, 4, 4])
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from compass_lightning.attribution._core import METHODS, Method, Model, model_checks
from compass_lightning.attribution.captum_methods import (
    deeplift,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
    smoothgrad_abs,
)
from compass_lightning.attribution.gradcam import gradcam, gradcam_maps
from compass_lightning.attribution.faithfulness import area_under_curve, insertion_deletion
from compass_lightning.attribution.paths import agi, agi_paths, big, boundary_baselines, fast_ig, guided_ig


def attribute(name: str, model: Model, x: Tensor, target: Tensor, **params: Any) -> Tensor:
    """Attributions of the method called ``name``, with ``params`` checked against its parameters."""
    method = METHODS.lookup(name, "method")
    return method.function(model, x, target, **method.resolve(params))


__all__ = [
    "METHODS",
    "Method",
    "agi",
    "agi_paths",
    "area_under_curve",
    "attribute",
    "big",
    "boundary_baselines",
    "deeplift",
    "fast_ig",
    "gradcam",
    "gradcam_maps",
    "guided_ig",
    "input_x_gradient",
    "insertion_deletion",
    "integrated_gradients",
    "model_checks",
    "saliency",
    "smoothgrad",
    "smoothgrad_abs",
]
