"""Text mutants (AI-Compass module 2 for text): the token-id probe changed in controlled ways.

Batched functions of the whole probe ``(ids, y)`` and a seeded ``torch.Generator``, as the image
mutants of :mod:`compass_lightning.mutation` (whose ``label_error`` and ``data_shuffle`` they
share). ``fixed`` marks padding and special tokens: no mutant changes or moves them.

=================  ==========================================================  =========
name               what it does                                                parameters
=================  ==========================================================  =========
``label_error``    ``round(p·N)`` labels set to a random *other* class          ``p=0.1``
``data_missing``   a fraction ``p`` of every row's tokens replaced by the fill  ``p=0.2``
                   token (``unk_id``, else ``mask_id``, else padding)
``data_shuffle``   samples permuted with their labels (batch dependence)
``token_replace``  a fraction ``p`` of every row's tokens replaced by random    ``p=0.1``
                   vocabulary ids (the text analogue of noise)
``token_swap``     a fraction ``p`` of every row's tokens swapped with the      ``p=0.1``
                   next token
=================  ==========================================================  =========

Fractions count a row's non-fixed tokens (rounded), so short sentences lose proportionally as much.

Example:
    >>> import torch
    >>> ids = torch.tensor([[5, 6, 7, 8, 0, 0]])                  # two padding positions
    >>> fixed = ids == 0
    >>> g = torch.Generator().manual_seed(0)
    >>> mutated, _ = mutate_tokens("token_swap", ids, torch.tensor([1]), num_classes=2, generator=g, fixed=fixed,
    ...                            fill_id=1, vocabulary_size=10, p=0.5)
    >>> sorted(mutated[0, :4].tolist()), mutated[0, 4:].tolist()   # the same tokens, padding untouched
    ([5, 6, 7, 8], [0, 0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from compass_lightning.engine.checks import probability
from compass_lightning.engine.registry import Check, Registry
from compass_lightning.engine.rng import draw
from compass_lightning.mutation import MUTATIONS, Mutant

TEXT_MUTATIONS: Registry[Mutant] = Registry("mutation")
RESERVED = ("num_classes", "generator", "fixed", "fill_id", "vocabulary_size")


def _text_mutant(name: str, *, permutes: bool = False, **checks: Check) -> Callable:
    def add(function: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
        TEXT_MUTATIONS.register(name)(Mutant.from_function(name, function, checks, RESERVED, permutes=permutes))
        return function

    return add


def _chosen(fixed: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """``round(p · free)`` random non-fixed positions of every row (``free``: its non-fixed count)."""
    scores = draw(torch.rand, tuple(fixed.shape), generator, fixed).masked_fill(fixed, -1.0)
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(fixed.shape[1], device=fixed.device).expand_as(order))
    wanted = torch.round(p * (~fixed).sum(dim=1, keepdim=True).float())
    return (rank < wanted) & ~fixed


@_text_mutant("label_error", p=probability)
def _label_error(ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, fixed: Tensor,
                 fill_id: int, vocabulary_size: int, p: float = 0.1):
    return MUTATIONS["label_error"].function(ids, y, num_classes=num_classes, generator=generator, p=p)


@_text_mutant("data_shuffle", permutes=True)
def _data_shuffle(ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, fixed: Tensor,
                  fill_id: int, vocabulary_size: int):
    return MUTATIONS["data_shuffle"].function(ids, y, num_classes=num_classes, generator=generator)


@_text_mutant("data_missing", p=probability)
def _data_missing(ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, fixed: Tensor,
                  fill_id: int, vocabulary_size: int, p: float = 0.2):
    return ids.masked_fill(_chosen(fixed, p, generator), fill_id), y


@_text_mutant("token_replace", p=probability)
def _token_replace(ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, fixed: Tensor,
                   fill_id: int, vocabulary_size: int, p: float = 0.1):
    chosen = _chosen(fixed, p, generator)
    device = generator.device if generator is not None else ids.device
    drawn = torch.randint(0, vocabulary_size, ids.shape, generator=generator, device=device).to(ids.device)
    # a drawn id that is padding or a special token (fixed elsewhere in the probe) keeps the original
    never = torch.unique(ids[fixed])
    drawn = torch.where(torch.isin(drawn, never), ids, drawn)
    return torch.where(chosen, drawn, ids), y


@_text_mutant("token_swap", p=probability)
def _token_swap(ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None, fixed: Tensor,
                fill_id: int, vocabulary_size: int, p: float = 0.1):
    # a chosen position swaps with its right neighbour when both are free and the neighbour is not
    # itself chosen (so swaps never overlap)
    free = ~fixed
    chosen = _chosen(fixed, p, generator)
    right_free = torch.zeros_like(free)
    right_free[:, :-1] = free[:, 1:] & ~chosen[:, 1:]
    left = chosen & right_free
    swapped = ids.clone()
    right = torch.zeros_like(left)
    right[:, 1:] = left[:, :-1]
    swapped[left] = ids[right]
    swapped[right] = ids[left]
    return swapped, y


def mutate_tokens(name: str, ids: Tensor, y: Tensor, *, num_classes: int, generator: torch.Generator | None,
                  fixed: Tensor, fill_id: int, vocabulary_size: int, **params: Any) -> tuple[Tensor, Tensor]:
    """Apply the text mutant ``name`` to token ids ``(N, L)`` (``fixed``: ``(N, L)`` bool, never changed).

    Returns ``(ids', y')``; a mutant that leaves the ids alone returns ``ids`` itself.
    """
    mutant = TEXT_MUTATIONS.lookup(name, "mutation")
    return mutant.function(ids, y, num_classes=num_classes, generator=generator, fixed=fixed, fill_id=fill_id,
                           vocabulary_size=vocabulary_size, **mutant.resolve(params))
