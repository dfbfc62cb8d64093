"""The context every analysis runs in, so that a monitor never changes the run it watches.

Inside :func:`analysis_mode`:

1. every random number generator (torch CPU and CUDA, numpy, python) is forked and seeded from the
   analysis' own seed, so analyses are reproducible and the training stream is untouched;
2. the model is in eval mode and its parameters do not require gradients, so no forward updates
   BatchNorm statistics and nothing can accumulate into parameter ``.grad`` tensors; on exit the
   per-submodule ``training`` flags, ``requires_grad`` and ``.grad`` tensors are put back exactly;
3. gradients with respect to inputs work, even when the caller is under ``torch.no_grad()`` (fit's
   validation loop) or ``torch.inference_mode()`` (``trainer.validate``/``test``);
4. analyses run in float32 whatever the training precision: autocast is off (mixed precision), and
   a model whose floating-point parameters or buffers are of another dtype (``precision="bf16-true"``,
   ``"16-true"``, ``"64-true"``) is cast to float32 for the block, its own tensors put back on exit
   (the same storage, bit for bit: a float64 weight is not rounded through float32), so the probe,
   which is float32, meets float32 weights, and gradients are not taken in bfloat16; the default
   dtype is float32 inside the block, so the tensors an analysis creates are too;
5. compiled code runs eagerly (``torch.compiler.set_stance("force_eager")``): a model trained under
   ``torch.compile`` is analysed through its original modules, whose forward hooks then fire (a
   compiled graph skips them) and whose gradients are the eager ones.

Example (invariant 4):
    >>> import torch
    >>> model = torch.nn.Linear(2, 1).double()
    >>> storage, weight = model.weight.data_ptr(), model.weight.detach().clone()
    >>> with analysis_mode(model):
    ...     model(torch.ones(1, 2)).dtype
    torch.float32
    >>> model.weight.data_ptr() == storage, torch.equal(model.weight, weight), model.weight.dtype
    (True, True, torch.float64)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn


def _cuda_devices() -> list[int]:
    # Only forking initialised devices: touching CUDA here would initialise it in CPU-only runs.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


@contextlib.contextmanager
def _forked_rngs(seed: int) -> Iterator[None]:
    devices = _cuda_devices()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


@contextlib.contextmanager
def _autocast_off() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def _as_float32(module: nn.Module) -> Callable[[], None]:
    """Cast ``module``'s floating-point parameters and buffers to float32 in place; returns what puts
    its own tensors back (each parameter's ``.data``, each buffer). Nothing is cast (or copied) when
    they are float32 already, the usual case."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == torch.float32 or not t.is_floating_point() for t in tensors):
        return lambda: None
    data = [(p, p.data) for p in module.parameters()]
    buffers = [(m, name, b) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    module.float()  # a parameter keeps its object (its .data is replaced); buffers are reassigned

    def restore() -> None:
        for p, original in data:
            p.data = original
        for m, name, original in buffers:
            m._buffers[name] = original

    return restore


@contextlib.contextmanager
def _default_float32() -> Iterator[None]:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


@contextlib.contextmanager
def analysis_mode(module: nn.Module, seed: int = 0) -> Iterator[nn.Module]:
    """Run an analysis on ``module`` without leaving a trace on it or on the training run.

    Args:
        module: the model to analyse (a ``LightningModule`` or any ``nn.Module``).
        seed: seed of every random number generator inside the block.

    Yields:
        ``module`` itself, in eval mode with parameters that do not require gradients.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout()).train()
        >>> x = torch.ones(1, 3)
        >>> with torch.no_grad(), analysis_mode(model, seed=0):
        ...     x = x.requires_grad_()
        ...     grad, = torch.autograd.grad(model(x).sum(), x)
        >>> model.training, model[0].weight.grad is None, grad.shape
        (True, True, torch.Size([1, 3]))
    """
    modes = [(m, m.training) for m in module.modules()]
    parameters = list(module.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    grads = [p.grad for p in parameters]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_forked_rngs(seed))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(_autocast_off())
        stack.enter_context(_default_float32())
        if hasattr(torch.compiler, "set_stance"):  # torch >= 2.6; before it, compiled models are not hooked
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        restore_dtypes = _as_float32(module)
        try:
            module.eval()
            for p in parameters:
                p.requires_grad_(False)
            yield module
        finally:
            restore_dtypes()  # before the gradients, which must match their parameters' dtype
            for m, training in modes:
                m.training = training
            for p, flag, grad in zip(parameters, requires_grad, grads):
                p.requires_grad_(flag)
                p.grad = grad
