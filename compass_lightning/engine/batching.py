"""How many samples an analysis puts through the model at once, when the user does not say.

One number does not suit every model and device. Measured on a 2-core CPU (forward+backward per
image): a CIFAR-shaped CNN and a ResNet-18 at 32x32 run 1.3-1.6x faster per image in batches of
16-64 than in batches of 256-512, because a batch whose activations outgrow the CPU caches
streams them from memory; the digits CNN (8x8 inputs) runs 1.25x faster at 512 than at 128,
because there the per-call overhead dominates. A GPU wants the largest batch that fits.

So the size is chosen from the model's activations, measured in one forward of one sample:

* on a CPU, the batch whose largest single activation is about :data:`CPU_ACTIVATION_BUDGET`
  (which fits the caches of current server CPUs);
* on a GPU, the batch whose activations (counted three times: kept for the backward, their
  gradients, and the working copies of an analysis) take :data:`GPU_MEMORY_SHARE` of the device's
  memory. The total memory, not the free memory, decides, so that every process of a DDP run
  picks the same size and the results do not depend on what else the device holds.

Both are rounded down to a power of two within :data:`BOUNDS`.

The rule misjudges some models: for a small CNN on 16x16 inputs it gives 256 rows, where integrated
gradients run 1.35x faster per row in forwards of 128 (the activations are small, but the
convolution's working buffers are not). Where many forward+backward rows go through the model —
the steps of integrated gradients, SmoothGrad's noise draws — :func:`gradient_rows` therefore
measures the rule's choice and two smaller sizes once (per model architecture, device and input shape,
cached for the process) and takes the fastest per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from compass_lightning.engine.samples import Samples, device_of, take

CPU_ACTIVATION_BUDGET = 8 * 2**20  # bytes of the largest activation of one forward
GPU_MEMORY_SHARE = 1 / 8
BOUNDS = {"cpu": (16, 1024), "cuda": (32, 4096)}


def activation_bytes(model: nn.Module, forward: Callable[[Samples], Tensor], example: Samples) -> tuple[int, int]:
    """The largest and the total size (bytes, fp32) of the outputs of ``model``'s leaf modules for
    one sample, measured in one forward ``forward(example[:1])`` without gradients.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> activation_bytes(net, net, torch.rand(5, 4))
        (32, 72)
    """
    sizes: list[int] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel() * 4)  # the forward sees one sample

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            forward(take(example, slice(0, 1)))
    finally:
        for handle in handles:
            handle.remove()
    return (max(sizes), sum(sizes)) if sizes else (4, 4)


def auto_batch_size(model: nn.Module, forward: Callable[[Samples], Tensor], example: Samples) -> int:
    """The batch size for analyses of ``model`` on the device of ``example`` (see the module docstring).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(10))
        >>> auto_batch_size(net, net, torch.rand(2, 3, 32, 32))  # a 256 KiB activation per sample
        32
    """
    largest, total = activation_bytes(model, forward, example)
    device = device_of(example)
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory * GPU_MEMORY_SHARE
        size, (low, high) = budget / (3 * total), BOUNDS["cuda"]
    else:
        size, (low, high) = CPU_ACTIVATION_BUDGET / largest, BOUNDS["cpu"]
    size = min(max(int(size), low), high)
    return 1 << (size.bit_length() - 1)


#: The sizes :func:`gradient_rows` chose, by (model class, parameter count, device, row shape,
#: dtype, the rule's size): copies of one model (pruned ones, say) share the measurement.
_CALIBRATED: dict[tuple, int] = {}


def candidate_sizes(size: int, device: torch.device) -> list[int]:
    """The sizes :func:`gradient_rows` tries around the rule's ``size``, largest first.

    Example:
        >>> candidate_sizes(256, torch.device("cpu")), candidate_sizes(16, torch.device("cpu"))
        ([256, 128, 64], [16])
    """
    # Smaller only: on a CPU a larger batch than the rule's never ran more than 5 % faster per row
    # on the benchmark models, and on a GPU the rule already takes the largest that fits
    low, high = BOUNDS["cuda" if device.type == "cuda" else "cpu"]
    return sorted({min(max(s, low), high) for s in (size, size // 2, size // 4)}, reverse=True)


def fastest(
    step: Callable[[int], object], sizes: Sequence[int], *, agree: Callable[[Tensor], Tensor] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """The size of ``sizes`` whose ``step(size)`` (work on ``size`` rows, synchronised) took the
    least time per row, after one warm-up call at the smallest; ``agree`` maps the per-row times to
    the times every process decides on (under DDP their sum over the processes, so every rank picks
    the same size).

    Example:
        >>> ticks = iter([0.0, 4.0, 4.0, 5.0, 5.0, 8.0])  # 4 s for 128 rows, 1 s for 64, 3 s for 32
        >>> fastest(lambda size: None, [128, 64, 32], clock=lambda: next(ticks))
        64
    """
    if len(sizes) == 1:
        return sizes[0]
    step(sizes[-1])
    per_row = []
    for size in sizes:
        start = clock()
        step(size)
        per_row.append((clock() - start) / size)
    times = torch.tensor(per_row, dtype=torch.float64)
    if agree is not None:
        times = agree(times)
    return sizes[int(times.argmin())]


def gradient_rows(
    model: nn.Module, x: Tensor, target: Tensor, size: int, *, agree: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """How many rows to put through ``model`` per forward+backward to its input, for analyses that
    push many rows of ``x``'s shape (see the module docstring): measured with the rows of ``x``
    (scores ``target``) at :func:`candidate_sizes` of ``size``, once per architecture, device and
    row shape.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> gradient_rows(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]), 64) in (128, 64, 32, 16)
        True
    """
    key = (type(model).__qualname__, sum(p.numel() for p in model.parameters()), x.device, tuple(x.shape[1:]), x.dtype, size)
    if key not in _CALIBRATED:
        def step(rows: int) -> None:
            index = torch.arange(rows, device=x.device) % len(x)
            inputs = x[index].detach().requires_grad_(True)
            out = model(inputs)
            score = out.gather(1, target[index].view(-1, 1)).sum() if out.dim() == 2 else out.sum()
            torch.autograd.grad(score, inputs)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)

        _CALIBRATED[key] = fastest(step, candidate_sizes(size, x.device), agree=agree)
    return _CALIBRATED[key]
