"""Which layers the neuron analyses look at, and recording their neurons with forward hooks.

A *neuron* is a channel of a ``Conv2d`` or ``Conv1d`` (its mean over the positions of the feature
map) or a unit of a ``Linear``, a recurrent layer (``RNN``/``LSTM``/``GRU``: its output sequence;
the final states are not read) or a Transformer layer (``nn.TransformerEncoderLayer``/
``DecoderLayer`` and Hugging Face ``*Layer`` blocks of an encoder: the hidden states they return),
averaged over the positions of its input sequence. By default all of them are selected; where a
convolution or linear layer is followed inside an ``nn.Sequential`` by an activation module
(normalisation layers in between allowed), the activation's output is observed, so neurons are
read after their non-linearity, as the coverage and sensitivity definitions intend.

For token models the averages cover real tokens only: given ``valid`` (``(N, L)``, whether each
input position is a token rather than padding), a layer whose sequence has the input's length
``L`` averages over the valid positions, and a ``Conv1d`` whose output is shorter or longer over
the windows that hold at least one token (the mask max-pooled with the convolution's own kernel,
stride, padding and dilation). A layer whose positions cannot be matched to the tokens averages
over all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from compass_lightning.engine.layers import Recording, _names, unwrap
from compass_lightning.engine.layers import record as record_modules

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)
NORMALISATIONS = (_NormBase, nn.GroupNorm, nn.LayerNorm)
NEURON_LAYERS = (nn.Conv2d, nn.Conv1d, nn.Linear, nn.RNNBase, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _is_block(name: str, module: nn.Module) -> bool:
    """A Hugging Face Transformer block: a ``*Layer`` module held in an encoder's ``layer`` list
    (``encoder.layer.0`` of BERT, RoBERTa, DistilBERT's ``transformer.layer.0``, ...)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in ("layer", "layers") and parts[-1].isdigit() and type(module).__name__.endswith("Layer")


def _window(module: nn.Module) -> tuple[int, int, int, int] | None:
    """A ``Conv1d``'s (kernel, stride, padding, dilation), where its padding is a number."""
    if isinstance(module, nn.Conv1d) and not isinstance(module.padding, str):
        return module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
    return None


def as_tensor(output: Any) -> Tensor:
    """The tensor of a module's output: itself, or the first item of a tuple (a recurrent layer's
    sequence, a Hugging Face block's hidden states)."""
    return output if isinstance(output, Tensor) else output[0]


@dataclass(frozen=True)
class Layer:
    """One analysed layer: its name, the module whose output is read, and its neuron layout.

    ``channels_first``: neurons are dimension 1 (a convolution; other dimensions are averaged);
    otherwise the last dimension (a linear layer; dimensions between batch and units are averaged).
    ``sequence_first``: the output is ``(L, N, units)`` (a recurrent or Transformer layer without
    ``batch_first``). ``window``: a ``Conv1d``'s geometry, to match its positions to tokens.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        >>> [(layer.name, type(layer.observed).__name__) for layer in select_layers(net).values()]
        [('0', 'ReLU'), ('4', 'LazyLinear')]
    """

    name: str
    observed: nn.Module
    channels_first: bool
    sequence_first: bool = False
    window: tuple[int, int, int, int] | None = None

    def neurons(self, output: Any, valid: Tensor | None = None, *, total: bool = False) -> Tensor:
        """``(N, neurons)`` values of the layer from the observed module's output: each neuron's mean
        over its positions (their sum with ``total``), over the valid ones where ``valid`` (``(N, L)``
        input positions that are tokens) can be matched to them (see the module docstring)."""
        output = as_tensor(output)
        if output.ndim == 2:
            return output
        values, weights = self._by_position(output, valid)
        if weights is None:
            return values.sum(dim=2) if total else values.mean(dim=2)
        weights = weights.to(values.dtype)[:, None]
        summed = (values * weights).sum(dim=2)
        return summed if total else summed / weights.sum(dim=2).clamp_min(1)

    def extent(self, output: Any, valid: Tensor | None = None) -> Tensor:
        """``(N, 2)`` each input's minimum and maximum over the layer's whole output — every
        channel and (valid) position of a feature map, every unit of a linear layer: what
        DeepXplore's neuron coverage scales an input's layer output by."""
        output = as_tensor(output)
        if output.ndim == 2:
            return torch.stack([output.amin(dim=1), output.amax(dim=1)], dim=1).float()
        values, weights = self._by_position(output, valid)
        if weights is None:
            flat_low = flat_high = values.flatten(1)
        else:  # positions that are padding cannot be the minimum or the maximum
            keep = weights[:, None].expand_as(values).flatten(1)
            flat = values.flatten(1)
            flat_low = flat.masked_fill(~keep, float("inf"))
            flat_high = flat.masked_fill(~keep, float("-inf"))
        return torch.stack([flat_low.amin(dim=1), flat_high.amax(dim=1)], dim=1).float()

    def _by_position(self, output: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(N, units, T)`` values of an output with positions, and which of the ``T`` positions
        hold tokens (``None``: all count)."""
        if self.sequence_first:
            output = output.transpose(0, 1)
        values = output.flatten(2) if self.channels_first else output.flatten(1, -2).transpose(1, 2)
        return values, self._positions(valid, values.shape[2]) if valid is not None else None

    def _positions(self, valid: Tensor, length: int) -> Tensor | None:
        """``(N, length)`` which positions of the layer's sequence hold tokens, or ``None`` (unknown)."""
        if valid.shape[1] == length:
            return valid
        if self.window is not None:
            kernel, stride, padding, dilation = self.window
            if padding <= kernel // 2:  # max_pool1d's limit
                pooled = F.max_pool1d(valid[:, None].float(), kernel, stride, padding, dilation)[:, 0] > 0
                if pooled.shape[1] == length:
                    return pooled
        return None


def _follower(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    """The activation right after ``name`` in its ``nn.Sequential`` parent, if any."""
    parent_name, _, child = name.rpartition(".")
    parent = modules.get(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent.named_children())
    index = [key for key, _ in children].index(child)
    for _, module in children[index + 1 :]:
        if isinstance(module, NORMALISATIONS):
            continue
        return module if isinstance(module, ACTIVATIONS) else None
    return None


def _layer(name: str, module: nn.Module, observed: nn.Module | None = None) -> Layer:
    sequence_first = isinstance(module, (nn.RNNBase, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not (
        getattr(module, "batch_first", False) or getattr(getattr(module, "self_attn", None), "batch_first", False))
    channels_first = not isinstance(module, (nn.Linear, *NEURON_LAYERS[3:])) and not _is_block(name, module)
    return Layer(name, observed or module, channels_first, sequence_first, _window(module))


def select_layers(model: nn.Module, names: Sequence[str] | None = None, *, argument: str = "layers") -> dict[str, Layer]:
    """``{name: Layer}``: every layer of the module docstring (a convolution or linear layer read
    after a following activation), or exactly the modules named (read as they are). An unknown name
    is a ``ValueError`` listing the model's layers.

    Example:
        >>> net = nn.Sequential(nn.Embedding(9, 4), nn.LSTM(4, 3, batch_first=True))
        >>> layer = select_layers(net)["1"]
        >>> valid = torch.tensor([[True, True, False]])  # the third position is padding
        >>> out = net(torch.tensor([[5, 6, 0]]))
        >>> torch.allclose(layer.neurons(out, valid), out[0][:, :2].mean(dim=1))
        True
    """
    modules = dict(unwrap(model).named_modules())
    if names is None:
        chosen = [n for n, m in modules.items() if n and (isinstance(m, NEURON_LAYERS) or _is_block(n, m))]
        # a Transformer block's own Linear layers stay selected: they are neurons too
        if not chosen:
            raise ValueError(f"{argument}: the model has no convolution, linear, recurrent or Transformer layer; "
                             f"name layers from: {_names(modules)}")
        followers = {n: _follower(modules, n) if isinstance(modules[n], NEURON_LAYERS[:3]) else None for n in chosen}
        shared = {id(f) for f in followers.values() if f is not None and sum(g is f for g in followers.values()) > 1}
        # an activation instance reused after several layers cannot tell their outputs apart: read those raw
        observed = {n: f if f is not None and id(f) not in shared else None for n, f in followers.items()}
        return {n: _layer(n, modules[n], observed[n]) for n in chosen}
    missing = [n for n in names if n not in modules or not n]
    if missing:
        raise ValueError(f"{argument}: the model has no layer {missing[0]!r}; its layers: {_names(modules)}")
    return {n: _layer(n, modules[n]) if isinstance(modules[n], NEURON_LAYERS) or _is_block(n, modules[n])
            else Layer(n, modules[n], True) for n in names}


def record(layers: dict[str, Layer]) -> AbstractContextManager[Recording]:
    """Record the outputs of ``layers`` (their observed modules) at every forward, by layer name; the
    hooks are removed on exit, even on error (:func:`~compass_lightning.engine.layers.record`).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with record(select_layers(net)) as seen:
        ...     _ = net(torch.ones(5, 3))
        >>> {name: tuple(out.shape) for name, out in seen.outputs.items()}, len(net[1]._forward_hooks)
        ({'0': (5, 4), '2': (5, 2)}, 0)
    """
    return record_modules({name: layer.observed for name, layer in layers.items()})


class NeuronValues(NamedTuple):
    """What :func:`neuron_values` returns: ``values`` ``{layer: (N, neurons)}``, the model's
    ``logits`` and ``extents`` ``{layer: (N, 2)}`` (:meth:`Layer.extent`)."""

    values: dict[str, Tensor]
    logits: Any
    extents: dict[str, Tensor]


def neuron_values(model: nn.Module, x: Tensor, layers: dict[str, Layer], valid: Tensor | None = None) -> NeuronValues:
    """The neuron values, the outputs and the layers' extents of one forward pass without gradients;
    ``valid``: which input positions are tokens (``(N, L)``, see the module docstring), ``None`` for
    images."""
    with torch.no_grad(), record(layers) as seen:
        logits = model(x)
    missing = [name for name in layers if name not in seen.outputs]
    if missing:
        raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
    return NeuronValues({name: layer.neurons(seen.outputs[name], valid).float() for name, layer in layers.items()}, logits,
                        {name: layer.extent(seen.outputs[name], valid) for name, layer in layers.items()})
