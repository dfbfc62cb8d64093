"""Insertion and deletion scores (RISE, Petsiuk et al. 2018), batched.

Features are ranked by the attribution summed over channels (one score per pixel). Deletion
replaces them, most important first, with the baseline (black by default); insertion starts from
the baseline (or a blurred copy of the input) and puts them back. Each curve is the softmax
probability of the target class (default: the class predicted on the clean input) at ``steps``
evenly spaced fractions of the pixels, from none to all, and its area is the trapezoid rule
normalised to [0, 1]. The ``2 * steps`` masked images of every sample are made a forward batch at a
time, so the model always sees ``batch_size`` images (the size that suits the device) whatever the
number of steps, and memory is bounded by one batch.

``valid`` restricts both to the positions that may change — for text, the tokens that are neither
padding nor special: the others are never deleted or inserted, and the fractions are of each
sample's own valid positions (a sentence of 5 tokens in a batch padded to 12 has 5 deletion steps,
not 12). The substrates may be given as tensors (for text: every token's embedding at the mask
token's, its id kept).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from compass_lightning.engine.checks import check_choice, check_int

SUBSTRATES = ("zeros", "blur")


def _substrate(name: str, kind: str | Tensor, x: Tensor) -> Tensor:
    if isinstance(kind, Tensor):
        if kind.shape != x.shape:
            raise ValueError(f"{name}: a substrate tensor must have the inputs' shape {tuple(x.shape)}, got {tuple(kind.shape)}")
        return kind.detach()
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
    baseline: str | Tensor = "zeros",
    insertion_start: str | Tensor = "zeros",
    batch_size: int | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Insertion and deletion AUC of every sample, and the curves.

    Args:
        model: maps inputs (pixel space) to logits.
        x: inputs ``(N, C, H, W)``.
        attributions: of the shape of ``x`` (or ``(N, H, W)``); larger means more important.
        target: the class whose probability is scored; default: the prediction on ``x``.
        steps: points per curve (>= 2), from 0 to all pixels.
        baseline: what deleted pixels become: ``"zeros"`` (black), ``"blur"`` or a tensor of ``x``'s shape.
        insertion_start: what insertion starts from: ``"zeros"``, ``"blur"`` or a tensor of ``x``'s shape.
        batch_size: masked images per forward pass (``N * 2 * steps`` are scored in all); ``None``: all at once.
        valid: ``(N, H, W)`` or ``(N, H * W)``, the positions that may change (see the module
            docstring); ``None``: all.

    Returns:
        ``(insertion_auc, deletion_auc, {"insertion": (N, steps), "deletion": (N, steps)})``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x = torch.rand(3, 1, 4, 4)
        >>> insertion, deletion, curves = insertion_deletion(model, x, torch.rand(3, 1, 4, 4), steps=5, batch_size=4)
        >>> curves["deletion"].shape, bool(((insertion >= 0) & (insertion <= 1)).all())
        (torch.Size([3, 5]), True)
    """
    steps = check_int("steps", steps, minimum=2)
    x = x.detach()
    n, height, width = len(x), x.shape[-2], x.shape[-1]
    pixels = height * width
    total = n * 2 * steps
    batch_size = total if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    scores = (attributions.sum(dim=1) if attributions.ndim == 4 else attributions).reshape(n, pixels)
    sizes = torch.full((n,), pixels, device=x.device)
    if valid is not None:
        valid = valid.reshape(n, pixels).to(x.device, torch.bool)
        scores = scores.masked_fill(~valid, -float("inf"))  # ranked last, and never reached: see counts
        sizes = valid.sum(dim=1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=x.device).expand(n, -1))
    # (N, steps): how many of each sample's (valid) positions are changed at each step
    counts = torch.round(torch.arange(steps, device=x.device, dtype=torch.float64) * sizes[:, None] / (steps - 1)).long()
    removed = _substrate("baseline", baseline, x)
    inserted_from = _substrate("insertion_start", insertion_start, x)
    probabilities = []
    with torch.no_grad():
        if target is None:
            target = torch.cat([model(part).argmax(dim=1) for part in x.split(batch_size)])
        # Image j of the flat sequence is sample j // (2 steps), deletion (first half) or insertion, step j % steps.
        for index in torch.arange(total, device=x.device).split(batch_size):
            sample, deleting, step = index // (2 * steps), (index // steps) % 2 == 0, index % steps
            mask = (rank[sample] < counts[sample, step, None]).view(-1, 1, height, width)
            deleting = deleting.view(-1, 1, 1, 1)
            # deletion: the first pixels become the baseline; insertion: the first pixels are the input's
            chosen = torch.where(deleting, removed[sample], x[sample])
            other = torch.where(deleting, x[sample], inserted_from[sample])
            logits = model(torch.where(mask, chosen, other))
            probabilities.append(logits.softmax(dim=1).gather(1, target[sample, None]).squeeze(1))
    deletion, insertion = torch.cat(probabilities).view(n, 2, steps).unbind(1)
    curves = {"insertion": insertion, "deletion": deletion}
    return area_under_curve(insertion), area_under_curve(deletion), curves
