"""Attribution methods that Captum has, used through Captum (not rewritten here).

Each takes ``model`` mapping pixel-space inputs to logits, inputs ``x`` in pixel space and the
``target`` class of every sample, and returns attributions of the shape of ``x``. Captum turns
gradients on itself and differentiates with respect to the inputs only; the guard around every
analysis keeps ``torch.inference_mode`` off and the model's parameters untouched.
"""

from __future__ import annotations

import warnings
from collections import Counter
from functools import partial

import torch
from torch import Tensor, nn

from compass_lightning.attribution._core import Model, register
from compass_lightning.engine.checks import at_least_one, check_bool, check_choice, check_real, non_negative, optional

IG_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
_rule = partial(check_choice, choices=IG_RULES)


def _leaf(x: Tensor) -> Tensor:
    # Captum warns at every call when the inputs do not require gradients yet.
    return x.detach().clone().requires_grad_(True)


def _module(model: Model) -> nn.Module:
    # Captum wants an nn.Module for DeepLIFT and layer methods; a plain function is wrapped.
    if isinstance(model, nn.Module):
        return model
    return _FunctionModule(model)


class _Shown(nn.Module):
    """A space model (``PixelModel``, ``TextSpaceModel``) with the user's model registered as a
    submodule: Captum's DeepLIFT hooks the non-linear modules of the module it is given, and the
    space models keep the user's model out of theirs (so that they never change its state)."""

    def __init__(self, view: nn.Module, inner: nn.Module) -> None:
        super().__init__()
        self.__dict__["view"] = view
        self.inner = inner  # registered for Captum's eyes only: this wrapper lives for one call

    def forward(self, x: Tensor) -> Tensor:
        return self.view(x)


def _shown(model: Model) -> nn.Module:
    inner = getattr(model, "wrapped", None)
    return _Shown(model, inner) if isinstance(model, nn.Module) and isinstance(inner, nn.Module) else _module(model)


#: What a module of each type Captum's DeepLIFT has a rule for calls, once per forward.
_DEEPLIFT_FUNCTIONS = {"relu", "relu_", "elu", "elu_", "leaky_relu", "leaky_relu_", "sigmoid", "tanh", "softplus",
                       "max_pool1d", "max_pool2d", "max_pool3d", "softmax"}
_OTHER_NON_LINEAR = {"gelu", "silu", "mish", "hardswish", "hardsigmoid", "selu", "celu", "hardtanh", "relu6", "log_softmax",
                     "prelu", "softsign", "tanhshrink", "logsigmoid", "glu", "rrelu"}


def deeplift_problem(model: Model, x: Tensor) -> str | None:
    """Why Captum's DeepLIFT would not compute DeepLIFT on ``model`` (one forward of ``x[:1]``), or
    ``None``. Its rescale rule replaces the gradient of each non-linear *module* of a supported type
    (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool, Softmax), recorded at its one call;
    a non-linearity applied as a function (``F.relu``), of another type (GELU, SiLU) or by a module
    called twice keeps its plain gradient or its records are overwritten: the values would silently
    be something else (input × gradient, for a model of functional ReLUs only).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> deeplift_problem(net, torch.ones(1, 3)) is None
        True
        >>> relu = nn.ReLU()
        >>> deeplift_problem(nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu), torch.ones(1, 3))
        "its ReLU module '1' runs 2 times in one forward; Captum's DeepLIFT needs each non-linearity to be a module of its own, used once"
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
    from torch.overrides import TorchFunctionMode

    shown = _shown(model)
    calls: Counter[str] = Counter()
    functions: Counter[str] = Counter()

    class Seen(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = getattr(func, "__name__", "")
            if name in _DEEPLIFT_FUNCTIONS or name in _OTHER_NON_LINEAR:
                functions[name] += 1
            return func(*args, **(kwargs or {}))

    modules = {name: m for name, m in shown.named_modules() if isinstance(m, tuple(SUPPORTED_NON_LINEAR))}
    handles = [m.register_forward_hook(lambda *_, key=name: calls.update([key])) for name, m in modules.items()]
    try:
        with torch.no_grad(), Seen():
            shown(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    for name, count in calls.items():
        if count > 1:
            return (f"its {type(modules[name]).__name__} module {name.removeprefix('inner.')!r} runs {count} times in one "
                    "forward; Captum's DeepLIFT needs each non-linearity to be a module of its own, used once")
    other = sorted(n for n in functions if n in _OTHER_NON_LINEAR)
    if other:
        return f"Captum's DeepLIFT has no rule for {', '.join(other)}, which the model applies: those would keep plain gradients"
    if sum(functions.values()) > sum(calls.values()):
        return ("it applies non-linearities as functions (e.g. F.relu in forward), which Captum's DeepLIFT cannot see: "
                "their plain gradients would make it input × gradient there; use modules (nn.ReLU), each once")
    if not calls:
        return "it has no non-linearity module, so DeepLIFT would equal input × gradient"
    return None


class _FunctionModule(nn.Module):
    def __init__(self, function: Model) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


@register("saliency", abs=check_bool)
def saliency(model: Model, x: Tensor, target: Tensor, *, abs: bool = True) -> Tensor:  # noqa: A002
    """Saliency (Simonyan et al. 2014): the gradient of the target logit, absolute by default."""
    from captum.attr import Saliency

    return Saliency(model).attribute(_leaf(x), target=target, abs=abs).detach()


@register("input_x_gradient")
def input_x_gradient(model: Model, x: Tensor, target: Tensor) -> Tensor:
    """Input × gradient (Shrikumar et al. 2016)."""
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(_leaf(x), target=target).detach()


@register(
    "integrated_gradients", steps=at_least_one, method=_rule, internal_batch_size=optional(at_least_one),
    baseline=check_real,
)
def integrated_gradients(
    model: Model, x: Tensor, target: Tensor, *, steps: int = 50, method: str = "gausslegendre",
    internal_batch_size: int | None = None, baseline: float = 0.0,
) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from a constant ``baseline`` (black by default);
    ``internal_batch_size`` images per forward pass (at least one per sample: Captum batches whole steps)."""
    from captum.attr import IntegratedGradients

    if internal_batch_size is not None:
        internal_batch_size = max(internal_batch_size, len(x))  # below that Captum warns at every call
    return IntegratedGradients(model).attribute(
        _leaf(x), baselines=baseline, target=target, n_steps=steps, method=method, internal_batch_size=internal_batch_size
    ).detach()


def _smoothgrad(model: Model, x: Tensor, target: Tensor, samples: int, stdev: float, internal_batch_size: int | None,
                absolute: bool) -> Tensor:
    from captum.attr import NoiseTunnel, Saliency

    # Captum batches whole draws: a draw brings one noisy copy of every sample
    draws = None if internal_batch_size is None else max(1, internal_batch_size // len(x))
    return NoiseTunnel(Saliency(model)).attribute(
        _leaf(x), target=target, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, nt_samples_batch_size=draws,
        abs=absolute,
    ).detach()


@register("smoothgrad", samples=at_least_one, stdev=non_negative, internal_batch_size=optional(at_least_one))
def smoothgrad(
    model: Model, x: Tensor, target: Tensor, *, samples: int = 25, stdev: float = 0.15,
    internal_batch_size: int | None = None,
) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017, Eq. 3): the gradient of the target logit averaged over
    Gaussian noise of ``stdev`` pixel units (15 % of the unit range, within the paper's 10-20 %) —
    the raw, signed gradient, as the paper averages it; Captum's ``NoiseTunnel`` over ``Saliency``
    with ``abs=False``. ``internal_batch_size`` is the number of noisy images per forward pass, as
    for integrated gradients."""
    return _smoothgrad(model, x, target, samples, stdev, internal_batch_size, absolute=False)


@register("smoothgrad_abs", samples=at_least_one, stdev=non_negative, internal_batch_size=optional(at_least_one))
def smoothgrad_abs(
    model: Model, x: Tensor, target: Tensor, *, samples: int = 25, stdev: float = 0.15,
    internal_batch_size: int | None = None,
) -> Tensor:
    """The mean of the gradient's absolute value over the noise (Captum's ``NoiseTunnel`` over
    ``Saliency`` at its default ``abs=True``): a variant, not the paper's :func:`smoothgrad`."""
    return _smoothgrad(model, x, target, samples, stdev, internal_batch_size, absolute=True)


@register("deeplift", baseline=check_real, model_check=deeplift_problem)
def deeplift(model: Model, x: Tensor, target: Tensor, *, baseline: float = 0.0) -> Tensor:
    """DeepLIFT (Shrikumar et al. 2017), rescale rule, from a constant ``baseline``, through Captum's
    ``DeepLift`` on the user's model itself (its modules shown to Captum through the space model).

    Captum's DeepLIFT needs every non-linearity to be a module of its own, used once: the monitors
    refuse it at fit start where :func:`deeplift_problem` finds otherwise. Its max-pooling rule
    un-pools, which torch has no deterministic kernel for; under ``Trainer(deterministic=True)`` it
    runs with ``warn_only`` (the un-pooling writes each window's own maximum position, so windows
    that do not overlap never collide) and determinism is restored after."""
    from captum.attr import DeepLift

    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings():  # Captum announces, at every call, the hooks it adds and removes
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        warnings.filterwarnings("ignore", message="max_unpooling")
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return DeepLift(_shown(model)).attribute(_leaf(x), baselines=baseline, target=target).detach()
        finally:
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=warn_only)
