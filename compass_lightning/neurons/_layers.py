"""Which layers the neuron analyses look at, and recording their neurons with forward hooks.

A *neuron* is a channel of a ``Conv2d`` or ``Conv1d`` (its mean over the positions of the feature
map) or a unit of a ``Linear``, a recurrent layer (``RNN``/``LSTM``/``GRU``: its output sequence;
the final states are not read) or a Transformer layer (``nn.TransformerEncoderLayer``/
``DecoderLayer`` and Hugging Face ``*Layer`` blocks of an encoder: the hidden states they return),
averaged over the positions of its input sequence. By default all of them are selected, and a
convolution or linear layer is read at the output of its activation, for any model (a residual
block's reused ``relu`` at the right call; :mod:`compass_lightning.engine.sites` says how the place
is found from one traced forward pass), so neurons are read after their non-linearity, as the
coverage and sensitivity definitions intend — the same place as Grad-CAM and the transfer attacks.
Layers named by the user are read as they are. A layer the traced forward pass never calls as a
module — ``nn.MultiheadAttention``'s ``out_proj``, whose weights the attention uses directly — has
no output to read: it is left out of the defaults, and naming it is a ``ValueError``.

For token models the averages cover real tokens only: given ``valid`` (``(N, L)``, whether each
input position is a token rather than padding), a layer whose sequence has the input's length
``L`` averages over the valid positions, and a ``Conv1d`` whose output is shorter or longer over
the windows that hold at least one token (the mask max-pooled with the convolution's own kernel,
stride, padding and dilation). A layer whose positions cannot be matched to the tokens averages
over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compass_lightning.engine.layers import Recording, Site, _names, unwrap
from compass_lightning.engine.layers import record as record_modules
from compass_lightning.engine.sites import NotCalledError, never_called, read_sites

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
    """One analysed layer: its name, its module, its neuron layout and where it is read (``site``:
    ``None`` until :func:`select_layers` has traced an example).

    ``channels_first``: neurons are dimension 1 (a convolution; other dimensions are averaged);
    otherwise the last dimension (a linear layer; dimensions between batch and units are averaged).
    ``sequence_first``: the output is ``(L, N, units)`` (a recurrent or Transformer layer without
    ``batch_first``). ``window``: a ``Conv1d``'s geometry, to match its positions to tokens.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
        >>> [(layer.name, type(layer.observed).__name__) for layer in select_layers(net, example=torch.rand(1, 1, 8, 8)).values()]
        [('0', 'ReLU'), ('4', 'Linear')]
    """

    name: str
    module: nn.Module
    channels_first: bool
    sequence_first: bool = False
    window: tuple[int, int, int, int] | None = None
    site: Site | None = None

    @property
    def observed(self) -> nn.Module:
        """The module whose output is read (the layer's own until a site is found)."""
        return self.site.module if self.site is not None else self.module

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


def _layer(name: str, module: nn.Module) -> Layer:
    sequence_first = isinstance(module, (nn.RNNBase, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not (
        getattr(module, "batch_first", False) or getattr(getattr(module, "self_attn", None), "batch_first", False))
    channels_first = not isinstance(module, (nn.Linear, *NEURON_LAYERS[3:])) and not _is_block(name, module)
    return Layer(name, module, channels_first, sequence_first, _window(module))


def select_layers(model: nn.Module, names: Sequence[str] | None = None, *, example: Any = None,
                  forward: Callable[[Any], Any] | None = None, argument: str = "layers") -> dict[str, Layer]:
    """``{name: Layer}``: every layer of the module docstring, or exactly the modules named. With
    ``example`` (model inputs; one is enough) a forward pass of it (through ``forward``, default
    ``model``) finds where each is read: a convolution or linear layer after its activation, a
    named layer as it is (:func:`~compass_lightning.engine.sites.read_sites`); without, the layers
    are only named and cannot be recorded. An unknown name is a ``ValueError`` listing the model's
    layers; so is a named layer the forward pass never calls (with ``example``), which the
    defaults leave out.

    Example:
        >>> net = nn.Sequential(nn.Embedding(9, 4), nn.LSTM(4, 3, batch_first=True))
        >>> x = torch.tensor([[5, 6, 0]])
        >>> layer = select_layers(net, example=x)["1"]
        >>> valid = torch.tensor([[True, True, False]])  # the third position is padding
        >>> out = net(x)
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
        layers = {n: _layer(n, modules[n]) for n in chosen}
    else:
        missing = [n for n in names if n not in modules or not n]
        if missing:
            raise ValueError(f"{argument}: the model has no layer {missing[0]!r}; its layers: {_names(modules)}")
        layers = {n: _layer(n, modules[n]) if isinstance(modules[n], NEURON_LAYERS) or _is_block(n, modules[n])
                  else Layer(n, modules[n], True) for n in names}
    if example is None:
        return layers
    sites = read_sites(model, example, list(layers), follow=list(layers) if names is None else [], forward=forward)
    if names is not None and (error := never_called(names, sites, argument)):
        raise error
    if not sites:  # every default layer is one its parent calls functionally
        raise NotCalledError(f"{argument}: no layer of the model is called as a module in a forward pass; name layers from: "
                         f"{_names(modules)}")
    # default layers a forward pass never calls (MultiheadAttention's out_proj) are left out: nothing to read
    return {n: dataclasses.replace(layer, site=sites[n]) for n, layer in layers.items() if n in sites}


def record(layers: dict[str, Layer]) -> AbstractContextManager[Recording]:
    """Record the outputs of ``layers`` (their observed modules) at every forward, by layer name; the
    hooks are removed on exit, even on error (:func:`~compass_lightning.engine.layers.record`).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with record(select_layers(net, example=torch.ones(1, 3))) as seen:
        ...     _ = net(torch.ones(5, 3))
        >>> {name: tuple(out.shape) for name, out in seen.outputs.items()}, len(net[1]._forward_hooks)
        ({'0': (5, 4), '2': (5, 2)}, 0)
    """
    unplaced = [name for name, layer in layers.items() if layer.site is None]
    if unplaced:
        raise ValueError(f"layers {unplaced} have no read-out yet: select them with select_layers(..., example=x)")
    return record_modules({name: layer.site for name, layer in layers.items()})


class NeuronValues(NamedTuple):
    """What :func:`neuron_values` returns: ``values`` ``{layer: (N, neurons)}``, the model's
    ``logits`` and ``extents`` ``{layer: (N, 2)}`` (:meth:`Layer.extent`)."""

    values: dict[str, Tensor]
    logits: Any
    extents: dict[str, Tensor]


def neuron_values(model: nn.Module, x: Tensor, layers: dict[str, Layer], valid: Tensor | None = None, *,
                  extents: bool = True) -> NeuronValues:
    """The neuron values, the outputs and the layers' extents of one forward pass without gradients;
    ``valid``: which input positions are tokens (``(N, L)``, see the module docstring), ``None`` for
    images; ``extents=False``: no extents (``{}``), for the analyses that do not scale by them (a
    pass over every activation saved)."""
    with torch.no_grad(), record(layers) as seen:
        logits = model(x)
    missing = [name for name in layers if name not in seen.outputs]
    if missing:
        raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
    return NeuronValues({name: layer.neurons(seen.outputs[name], valid).float() for name, layer in layers.items()}, logits,
                        {name: layer.extent(seen.outputs[name], valid) for name, layer in layers.items()} if extents else {})
