"""Counting the forward and backward sample-passes a model performs (for tests and benchmarks)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else []
    return next((v for v in values if isinstance(v, Tensor)), None)


class PassCounter:
    """Counts samples through ``module``'s forward, and through the backward of its output.

    A batch of 64 forwarded once counts 64 forward sample-passes; differentiating its output once
    counts 64 backward sample-passes. Use it as a context manager; the hook is removed on exit.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> with PassCounter(net) as passes:
        ...     x = torch.ones(4, 3, requires_grad=True)
        ...     _ = torch.autograd.grad(net(x).sum(), x)
        ...     _ = net(torch.ones(5, 3))
        >>> passes.forward, passes.backward
        (9, 4)
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.forward = 0
        self.backward = 0
        self._handle: Any = None

    def _count_backward(self, gradient: Tensor) -> None:
        self.backward += len(gradient) if gradient.ndim else 1

    def _hook(self, module: nn.Module, inputs: object, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None:
            return
        self.forward += len(tensor) if tensor.ndim else 1
        if tensor.requires_grad:
            tensor.register_hook(self._count_backward)

    def __enter__(self) -> PassCounter:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
