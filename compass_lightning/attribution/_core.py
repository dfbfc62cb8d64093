"""What every attribution method shares: the registry and the target-class gradient."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from compass_lightning.engine.registry import Check, Operation, Registry

Model = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Method(Operation):
    """A registered attribution method: ``method(model, x, target, **params) -> attributions``.

    Example:
        >>> METHODS["integrated_gradients"].defaults["steps"], METHODS["deeplift"].source
        (50, 'captum')
    """

    kind: str = "attribution method"
    source: str = "captum"  # "captum" (wrapped) or "native" (written here)
    layer_default: str | None = None  # for methods with a `layer` parameter
    #: Which class the monitors ask it to explain: ``"prediction"`` (the class predicted on the clean
    #: sample) or ``"label"`` (the true class, where the method's paper defines it so: AGI's Eq. 8).
    explains: str = "prediction"
    #: ``check(model, x) -> reason | None``: why the method cannot give its own values on this model
    #: (run once on a sample at fit start; a reason refuses the method there).
    model_check: Callable[[Callable[[Tensor], Tensor], Tensor], str | None] | None = None


METHODS: Registry[Method] = Registry("attribution method")


def model_checks(names: Iterable[str]) -> dict[str, Callable[..., str | None]]:
    """``{name: model_check}`` of the methods among ``names`` that have one (what a monitor runs at
    fit start, :meth:`~compass_lightning.callbacks.base.CompassCallback.check_on_a_sample`)."""
    return {name: METHODS[name].model_check for name in names if name in METHODS and METHODS[name].model_check}


def register(name: str, *, source: str = "captum", layer_default: str | None = None,
             model_check: Callable[..., str | None] | None = None, explains: str = "prediction",
             **checks: Check) -> Callable:
    """Decorator adding a method to :data:`METHODS`; its parameters are its keyword-only arguments."""

    def add(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        method = Method.from_function(name, function, checks, source=source, layer_default=layer_default,
                                      model_check=model_check, explains=explains)
        METHODS.register(name)(method)
        return function

    return add


def class_gradient(model: Model, x: Tensor, target: Tensor, *, log_probability: bool = False) -> tuple[Tensor, Tensor]:
    """Gradient of the target logit (or log-probability) of every sample with respect to ``x``, and the logits."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    scores = logits.log_softmax(dim=1) if log_probability else logits
    (gradient,) = torch.autograd.grad(scores.gather(1, target.view(-1, 1)).sum(), x)
    return gradient, logits.detach()
