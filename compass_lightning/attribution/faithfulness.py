"""Insertion and deletion scores (RISE, Petsiuk et al. 2018), batched.

Features are ranked by the attribution summed over channels (one score per pixel). Deletion
replaces them, most important first, with the baseline (black by default); insertion starts from
the baseline (or a blurred copy of the input) and puts them back. Each curve is the softmax
probability of the target class (default: the class predicted on the clean input) at ``steps``
evenly spaced fractions of the pixels, from none to all, and its area is the trapezoid rule
normalised to [0, 1]. All steps of a chunk of samples go through the model in one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from compass_lightning.checks import check_choice, check_int

SUBSTRATES = ("zeros", "blur")


def _substrate(name: str, kind: str, x: Tensor) -> Tensor:
    if check_choice(name, kind, SUBSTRATES) == "zeros":
        return torch.zeros_like(x)
    # RISE's insertion substrate: a Gaussian blur, kernel 11 and sigma 5
    size = min(11, 2 * (min(x.shape[-2:]) // 2) - 1)
    return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[5.0, 5.0])


def area_under_curve(curve: Tensor) -> Tensor:
    """Trapezoid rule over evenly spaced points on [0, 1] (the last dimension)."""
    return (curve.sum(dim=-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)


def insertion_deletion(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    attributions: Tensor,
    *,
    target: Tensor | None = None,
    steps: int = 32,
    baseline: str = "zeros",
    insertion_start: str = "zeros",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Insertion and deletion AUC of every sample, and the curves.

    Args:
        model: maps inputs (pixel space) to logits.
        x: inputs ``(N, C, H, W)``.
        attributions: of the shape of ``x`` (or ``(N, H, W)``); larger means more important.
        target: the class whose probability is scored; default: the prediction on ``x``.
        steps: points per curve (>= 2), from 0 to all pixels.
        baseline: what deleted pixels become: ``"zeros"`` (black) or ``"blur"``.
        insertion_start: what insertion starts from: ``"zeros"`` or ``"blur"``.
        chunk_size: samples per forward pass (each brings ``2 * steps`` images); ``None``: all.

    Returns:
        ``(insertion_auc, deletion_auc, {"insertion": (N, steps), "deletion": (N, steps)})``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x = torch.rand(3, 1, 4, 4)
        >>> insertion, deletion, curves = insertion_deletion(model, x, torch.rand(3, 1, 4, 4), steps=5)
        >>> curves["deletion"].shape, bool(((insertion >= 0) & (insertion <= 1)).all())
        (torch.Size([3, 5]), True)
    """
    steps = check_int("steps", steps, minimum=2)
    x = x.detach()
    n, height, width = len(x), x.shape[-2], x.shape[-1]
    pixels = height * width
    scores = (attributions.sum(dim=1) if attributions.ndim == 4 else attributions).reshape(n, pixels)
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=x.device).expand(n, -1))
    counts = torch.round(torch.arange(steps, device=x.device, dtype=torch.float64) * pixels / (steps - 1)).long()
    removed = _substrate("baseline", baseline, x)
    inserted_from = _substrate("insertion_start", insertion_start, x)
    chunk = chunk_size or n
    curves = {"insertion": [], "deletion": []}
    with torch.no_grad():
        if target is None:
            target = torch.cat([model(part).argmax(dim=1) for part in x.split(chunk)])
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            b = len(x[part])
            mask = (rank[part, None, :] < counts[None, :, None]).view(b, steps, 1, height, width)
            image, gone, origin = x[part, None], removed[part, None], inserted_from[part, None]
            batch = torch.cat([torch.where(mask, gone, image), torch.where(mask, image, origin)]).flatten(0, 1)
            probabilities = model(batch).softmax(dim=1).view(2, b, steps, -1)
            chosen = target[part].view(1, b, 1, 1).expand(2, b, steps, 1)
            deletion, insertion = probabilities.gather(3, chosen).squeeze(3)
            curves["deletion"].append(deletion)
            curves["insertion"].append(insertion)
    curves = {key: torch.cat(value) for key, value in curves.items()}
    return area_under_curve(curves["insertion"]), area_under_curve(curves["deletion"]), curves
