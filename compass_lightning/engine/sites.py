"""Where a layer is read: after its activation, found from the order of calls in one forward pass.

Every analysis that looks at a layer — neuron coverage and sensitivity, the layer deviation's and
the ``gradcam`` attribution's Grad-CAM, the NAA and ATA transfer attacks — reads it at the same
place, :func:`read_sites`: **the output of the layer's activation**, for any model. The place is
found by tracing one forward pass of an example (forward hooks on every module; a module counts as
a computation of its own when no other module is called inside it) and following each
convolution or linear layer's call:

- normalisation, dropout and identity modules that take the layer's output (or what they made of
  it) are passed (a ``Conv2d`` → ``BatchNorm2d`` → ``ReLU`` is read after the ``ReLU``);
- modules that read only tensors that existed before the layer ran are a parallel branch and are
  passed too (a residual block's shortcut, called between its last convolution and the ``relu``
  after the sum);
- the first activation module then called is the read-out — also after a functional step that
  keeps the layer's output shape (the residual sum), and at the right call when the module is
  reused (torchvision's ``BasicBlock`` calls one ``relu`` twice);
- anything else first (another layer, pooling — a module, or a function that changes the shape,
  as a max over time —, a functional activation the hooks cannot see), or no activation at all
  (the logits): the layer is read at its own output, after its normalisation if it has one.

Where several layers reach the same activation call (the ``relu`` after a residual sum, from the
block's last convolution and from its shortcut convolution), it reads out the one whose input was
made last — the main path works on what the block made, the shortcut on the block's input — and
the others are read after their own normalisation. A layer called more than once is followed from
its last call. Layers named by the user are read as they are: at their last call.

Hand-written: torch's hooks see modules, not data flow, and ``torch.fx`` cannot trace models with
data-dependent control flow (Hugging Face models, detectors); the rules above need only the call
order and which tensors each call took and returned.

Example:
    >>> import torch
    >>> class Block(nn.Module):  # a residual block with one ReLU used twice, as torchvision's
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv1, self.bn1 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
    ...         self.conv2, self.bn2, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()
    ...     def forward(self, x):
    ...         out = self.relu(self.bn1(self.conv1(x)))
    ...         return self.relu(self.bn2(self.conv2(out)) + x)
    >>> block = Block().eval()
    >>> sites = read_sites(block, torch.rand(1, 2, 4, 4), ["conv1", "conv2"])
    >>> [(s.name, s.call, s.calls) for s in sites.values()]
    [('relu', 0, 2), ('relu', 1, 2)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from compass_lightning.engine.layers import Site, layer_name, unwrap

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)
NORMALISATIONS = (_NormBase, nn.GroupNorm, nn.LayerNorm)
#: modules a layer's output passes through on its way to the activation
PASSED = (*NORMALISATIONS, nn.Dropout, nn.Identity)
FOLLOWED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_activation(module: nn.Module) -> bool:
    """An activation module: torch's, or one named ``*Activation`` (Hugging Face's ``GELUActivation``)."""
    return isinstance(module, ACTIVATIONS) or type(module).__name__.endswith("Activation")


class Call(NamedTuple):
    """One call of a module that calls no other module: its name, which of its calls it is, the
    ids of the tensors it took and returned, and the shape of its first input and output."""

    name: str
    module: nn.Module
    index: int
    inputs: frozenset[int]
    outputs: frozenset[int]
    shapes: tuple[tuple[int, ...] | None, tuple[int, ...] | None]


def _tensors(value: Any) -> Iterable[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def trace(model: nn.Module, example: Any, forward: Callable[[Any], Any] | None = None) -> tuple[list[Call], dict[str, int]]:
    """The calls of one forward pass of ``example`` (through ``forward``, default ``model``) that
    call no other module, in order, and how many times each module of ``model`` was called; the
    pass runs in eval mode without gradients, and the hooks and each module's mode are restored."""
    modules = dict(unwrap(model).named_modules())
    calls: list[Call] = []
    counts = dict.fromkeys(modules, 0)
    kept: list[Tensor] = []  # alive until the end, so that no id is reused
    entered, starts = 0, []

    def enter(module: nn.Module, args: Any, kwargs: Any) -> None:
        nonlocal entered
        entered += 1
        starts.append(entered)

    def leave(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            start = starts.pop()
            if entered == start:  # no module was called inside this one
                ins, outs = list(_tensors((args, kwargs))), list(_tensors(output))
                kept.extend(ins + outs)
                shapes = tuple(tuple(t[0].shape) if t else None for t in (ins, outs))
                calls.append(Call(name, module, counts[name], frozenset(map(id, ins)), frozenset(map(id, outs)), shapes))
            counts[name] += 1

        return hook

    handles, training = [], {name: module.training for name, module in modules.items()}
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(module.register_forward_hook(leave(name), with_kwargs=True))
        unwrap(model).eval()  # no batch statistics updated, no dropout drawn: the trace changes nothing
        with torch.no_grad():
            (forward or model)(example)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in modules.items():
            module.train(training[name])
    return calls, counts


def _follow(calls: list[Call], position: int) -> tuple[Call | None, Call]:
    """From the layer's call at ``position``: the activation call that reads it out (or ``None``),
    and the last call of its own chain (itself or its normalisation)."""
    layer = calls[position]
    before = set().union(*(c.inputs | c.outputs for c in calls[:position]), layer.inputs)
    chain, end = set(layer.outputs), layer
    for call in calls[position + 1 :]:
        if call.inputs and call.inputs <= before:  # a parallel branch: it does not need the layer
            before |= call.outputs
        elif is_activation(call.module) and (call.inputs & chain or call.shapes[0] == layer.shapes[1]):
            return call, end  # on the layer's output, or after an element-wise step (the residual sum)
        elif isinstance(call.module, PASSED) and call.inputs & chain:
            chain |= call.outputs
            end = call
        else:
            break
    return None, end


def read_sites(model: nn.Module, example: Any, names: Sequence[str], *, follow: Sequence[str] | None = None,
               forward: Callable[[Any], Any] | None = None) -> dict[str, Site]:
    """``{name: Site}``: where each layer of ``names`` is read (see the module docstring) — after
    its activation for the layers of ``follow`` (default: all of ``names``) that are convolutions or
    linear layers, else at its own last call. A layer the example's forward pass never calls (a
    module whose parent uses its weights directly, as ``nn.MultiheadAttention`` its ``out_proj``) is
    left out: it has no output to read."""
    modules = dict(unwrap(model).named_modules())
    calls, counts = trace(model, example, forward)
    last = {call.name: i for i, call in enumerate(calls)}
    follow = set(names if follow is None else follow)

    def site(call: Call) -> Site:
        return Site(call.module, call.index, counts[call.name], call.name)

    def own(name: str) -> Site:
        return Site(modules[name], max(counts[name], 1) - 1, max(counts[name], 1), name)

    out: dict[str, Site] = {}
    claims: dict[tuple[str, int], list[tuple[tuple[int, int], str, Call]]] = {}
    for name in [n for n in names if counts[n]]:  # a module never called has no output to read
        if name not in follow or not isinstance(modules[name], FOLLOWED) or name not in last:
            out[name] = own(name)
            continue
        activation, end = _follow(calls, last[name])
        out[name] = site(end)
        if activation is not None:
            claims.setdefault((activation.name, activation.index), []).append((_rank(calls, last[name]), name, activation))
    for claimants in claims.values():
        _, name, activation = max(claimants, key=lambda claim: claim[0])
        out[name] = site(activation)
    return {name: out[name] for name in names if name in out}


class NotCalledError(ValueError):
    """Layers an analysis needs that a forward pass of the model never calls as modules."""


def never_called(names: Iterable[str], sites: dict[str, Site], argument: str) -> NotCalledError | None:
    """The error for layers of ``names`` that a forward pass never called (absent from ``sites``,
    :func:`read_sites`' answer), naming ``argument``, or ``None``."""
    missing = [n for n in names if n not in sites]
    if not missing:
        return None
    return NotCalledError(f"{argument}: layer {missing[0]!r} is never called in a forward pass of the model (its parent uses "
                      "its weights directly, as nn.MultiheadAttention does with out_proj), so it has no output to "
                      f"analyse; choose from the layers that run: {sorted(sites)[:20]}")


def _rank(calls: list[Call], position: int) -> tuple[int, int]:
    """Which of several layers reaching one activation it reads out: the one whose input was made
    last (the main path reads what the block made, a shortcut the block's input), then the one
    called first."""
    made = max((i for i, call in enumerate(calls[:position]) if call.outputs & calls[position].inputs), default=-1)
    return made, -position


def layer_site(model: nn.Module, name: str | None, example: Any, *, default: str = "last",
               forward: Callable[[Any], Any] | None = None, argument: str = "layer") -> Site:
    """Where an analysis that looks at one layer reads it: the layer ``name`` as it is, or, for
    ``None``, the ``default`` ("last" or "middle") ``Conv2d`` after its activation (:func:`read_sites`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten())
        >>> x = torch.rand(1, 1, 6, 6)
        >>> layer_site(net, None, x).name, layer_site(net, None, x, default="middle").name, layer_site(net, "2", x).name
        ('3', '1', '2')
    """
    chosen = layer_name(model, name, default=default, argument=argument)
    sites = read_sites(model, example, [chosen], follow=[] if name else None, forward=forward)
    if error := never_called([chosen], sites, argument):
        raise error
    return sites[chosen]
