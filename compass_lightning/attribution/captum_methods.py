"""Attribution methods that Captum has, used through Captum (not rewritten here).

Each takes ``model`` mapping pixel-space inputs to logits, inputs ``x`` in pixel space and the
``target`` class of every sample, and returns attributions of the shape of ``x``. Captum turns
gradients on itself and differentiates with respect to the inputs only; the guard around every
analysis keeps ``torch.inference_mode`` off and the model's parameters untouched.
"""

from __future__ import annotations

import warnings
from functools import partial

from torch import Tensor, nn

from compass_lightning.attribution._core import Model, register
from compass_lightning.engine.checks import at_least_one, check_bool, check_choice, check_real, module_name, non_negative, optional
from compass_lightning.engine.layers import find_layer

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


@register("smoothgrad", samples=at_least_one, stdev=non_negative, internal_batch_size=optional(at_least_one))
def smoothgrad(
    model: Model, x: Tensor, target: Tensor, *, samples: int = 25, stdev: float = 0.15,
    internal_batch_size: int | None = None,
) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over Gaussian noise of ``stdev`` pixel units
    (15 % of the unit range, within the paper's 10-20 %); Captum's ``NoiseTunnel`` over ``Saliency``.
    ``internal_batch_size`` is the number of noisy images per forward pass, as for integrated gradients."""
    from captum.attr import NoiseTunnel, Saliency

    # Captum batches whole draws: a draw brings one noisy copy of every sample
    draws = None if internal_batch_size is None else max(1, internal_batch_size // len(x))
    return NoiseTunnel(Saliency(model)).attribute(
        _leaf(x), target=target, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, nt_samples_batch_size=draws,
    ).detach()


@register("deeplift", baseline=check_real)
def deeplift(model: Model, x: Tensor, target: Tensor, *, baseline: float = 0.0) -> Tensor:
    """DeepLIFT (Shrikumar et al. 2017), rescale rule, from a constant ``baseline``.

    Captum's DeepLIFT needs every nonlinearity to be its own module, used once (not
    ``F.relu`` in ``forward``); on other models it fails and the monitor reports it."""
    from captum.attr import DeepLift

    with warnings.catch_warnings():  # Captum announces, at every call, the hooks it adds and removes
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        return DeepLift(_module(model)).attribute(_leaf(x), baselines=baseline, target=target).detach()


@register("gradcam", layer_default="last", layer=module_name, relu=check_bool)
def gradcam(model: Model, x: Tensor, target: Tensor, *, layer: str | None = None, relu: bool = True) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at ``layer`` (default: the last ``Conv2d``), upsampled
    bilinearly to the input and repeated over its channels (Captum's ``LayerGradCam``)."""
    from captum.attr import LayerAttribution, LayerGradCam

    module = find_layer(model, layer, default="last")
    maps = LayerGradCam(_module(model), module).attribute(_leaf(x), target=target, relu_attributions=relu)
    maps = LayerAttribution.interpolate(maps.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return maps.expand_as(x).contiguous()

