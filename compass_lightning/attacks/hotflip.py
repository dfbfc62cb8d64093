"""HotFlip (Ebrahimi et al. 2018, AI-Compass [55]): a discrete, token-level attack on text models.

At each of ``k`` steps every sample flips the one token whose replacement most increases the loss
by the first-order estimate ``(e_new - e_old) · ∇_e L`` (the gradient at the embedding of that
position), over every free position not flipped yet and every vocabulary token except padding and
special tokens. A sample stops flipping once the model misclassifies it, so the attack changes at
most ``k`` tokens per input and its success can only grow with ``k``. Greedy (the paper's beam of
width 1), batched over the samples: one forward and backward per step, and a ``(N, L, V)`` score
per step, made in chunks of positions for large vocabularies.

The result is a real input: a point of :class:`~compass_lightning.tasks.TextClassification`'s
space whose ids and embeddings are those of the flipped tokens. ``eps`` does not bound it (the
budget is ``k`` tokens); it is accepted so that every attack has one signature.

Written here because TextAttack's HotFlip runs one sentence at a time on its own model wrappers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from compass_lightning.attacks._core import Model, register
from compass_lightning.engine.checks import at_least_one
from compass_lightning.tasks.text import TextSpaceModel, point_ids


def _first_order_scores(gradient: Tensor, current: Tensor, weight: Tensor, chunk: int = 4096) -> Tensor:
    """``(N, L, V)`` estimated loss increase of replacing each position's token by each vocabulary entry."""
    flat_gradient, flat_current = gradient.reshape(-1, gradient.shape[-1]), current.reshape(-1, current.shape[-1])
    parts = [g @ weight.T - (g * c).sum(dim=1, keepdim=True) for g, c in zip(flat_gradient.split(chunk), flat_current.split(chunk))]
    return torch.cat(parts).view(*gradient.shape[:2], -1)


@register("hotflip", k=at_least_one)
def hotflip(model: Model, x: Tensor, y: Tensor, *, eps: float = 0.0, bounds=None, generator=None, k: int = 1) -> Tensor:  # noqa: ANN001
    """At most ``k`` greedy first-order token flips per sample (see the module docstring); ``model``
    must be a text model on :class:`~compass_lightning.tasks.TextClassification`'s space."""
    if not isinstance(model, TextSpaceModel):
        raise TypeError("hotflip flips tokens: it needs a text model (compass_lightning.TextClassification's space_model)")
    task = model.task
    embedding, reference, scale = task.embedding_frame(model.wrapped)
    weight = embedding.weight.detach().to(x.dtype)
    z = x.detach().clone()
    ids = point_ids(z)[0]
    flippable = ~task.fixed(ids)
    allowed = task.substitutes(len(weight), x.device)
    rows = torch.arange(len(z), device=z.device)
    for _ in range(k):
        z.requires_grad_(True)
        logits = model(z)
        # d loss / d embedding = d loss / d z · dz / d embedding = gradient / scale
        (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), z)
        z = z.detach()
        active = logits.detach().argmax(dim=1) == y  # a sample already fooled stops flipping
        scores = _first_order_scores(gradient[:, 2:, 0].transpose(1, 2) / scale, weight[ids], weight)
        scores = scores.masked_fill(~allowed, -torch.inf).masked_fill(~flippable[..., None], -torch.inf)
        scores.scatter_(2, ids[..., None], -torch.inf)  # a flip changes the token
        best, choice = scores.flatten(1).max(dim=1)
        flip = active & torch.isfinite(best)
        if not flip.any():
            break
        position, token = choice // len(weight), choice % len(weight)
        n, i, v = rows[flip], position[flip], token[flip]
        ids[n, i] = v
        flippable[n, i] = False  # each position flips at most once
        z[n, 0, 0, i] = (v + 1).to(z.dtype) * z[n, 1, 0, i]  # the id channels' ratio: the new token
        z[n, 2:, 0, i] = ((weight[v] - reference.to(z.dtype)) / scale).to(z.dtype)
    return z
