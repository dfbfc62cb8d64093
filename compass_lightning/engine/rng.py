"""Seeded random draws that give the same numbers on every device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def draw(sampler: Callable[..., Tensor], shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``sampler(shape)`` (``torch.rand``, ``torch.randn``) from ``generator``, made on the generator's
    device and returned on the device and floating dtype of ``like``: a CPU generator then gives the
    same draws whatever device the data is on.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draw(torch.rand, (2,), g, torch.zeros(1, dtype=torch.float64)).dtype
        torch.float64
    """
    device = generator.device if generator is not None else like.device
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return sampler(shape, generator=generator, device=device, dtype=dtype).to(like.device)


def randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """One integer in ``[low, high)`` from ``generator`` (the global generator if ``None``)."""
    return int(torch.randint(low, high, (1,), generator=generator, device=generator.device if generator else None))
