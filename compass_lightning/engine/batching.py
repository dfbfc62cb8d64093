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
"""

from __future__ import annotations

from collections.abc import Callable

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
