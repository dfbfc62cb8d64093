"""Grad-CAM (Selvaraju et al. 2017) at any layer's read-out, of several layers in one backward pass.

Written here rather than through Captum's ``LayerGradCam``, which it equals where both apply
(tested): Captum reads a module's *last* call in the forward pass, while a layer is read after its
activation (:mod:`compass_lightning.engine.sites`), which may be one call of a module used several
times (torchvision's ``BasicBlock`` calls one ``relu`` twice); and the layer deviation needs every
layer's map for the same inputs, which one backward pass gives.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from compass_lightning.attribution._core import Model, register
from compass_lightning.engine.checks import check_bool, module_name
from compass_lightning.engine.layers import Where, record
from compass_lightning.engine.sites import layer_site


def gradcam_maps(model: Model, x: Tensor, target: Tensor, sites: Mapping[str, Where], *, relu: bool = True) -> dict[str, Tensor]:
    """``{name: (N, H_l, W_l)}`` Grad-CAM maps at each site's own resolution, from one forward and
    one backward pass: ``ReLU(Σ_k α_k A^k)`` with ``α_k`` the spatial mean of ``∂y_target/∂A^k``
    (without the ReLU for ``relu=False``). ``sites``: modules or :class:`~compass_lightning.engine.layers.Site` s
    whose outputs are feature maps ``(N, C, H, W)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        >>> maps = gradcam_maps(net, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), {"first": net[1], "second": net[3]})
        >>> {name: tuple(m.shape) for name, m in maps.items()}
        {'first': (4, 6, 6), 'second': (4, 4, 4)}
    """
    with torch.enable_grad(), record(sites) as seen:
        logits = model(x.detach().requires_grad_(True))
        missing = [name for name in sites if name not in seen.outputs]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
        outputs = [seen.outputs[name] for name in sites]
        gradients = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), outputs, allow_unused=True)
    maps = {}
    for name, a, g in zip(sites, outputs, gradients):
        if a.ndim != 4:
            raise ValueError(f"Grad-CAM needs feature maps (N, C, H, W), but layer {name!r} returned shape {tuple(a.shape)}")
        g = torch.zeros_like(a) if g is None else g
        weights = g.flatten(2).mean(dim=2)[:, :, None, None]
        cam = (weights * a).sum(dim=1).detach()
        maps[name] = cam.clamp_min(0) if relu else cam
    return maps


@register("gradcam", source="native", layer_default="last", layer=module_name, relu=check_bool)
def gradcam(model: Model, x: Tensor, target: Tensor, *, layer: str | None = None, relu: bool = True) -> Tensor:
    """Grad-CAM at ``layer`` as it is, or by default after the last ``Conv2d``'s activation (the
    same read-out as the neuron analyses), upsampled bilinearly to the input and repeated over its
    channels (as Captum's ``LayerGradCam`` with ``LayerAttribution.interpolate``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gradcam needs the model as an nn.Module to find its layer, got {type(model).__name__}")
    site = layer_site(model, layer, x[:1], default="last")
    maps = gradcam_maps(model, x, target, {"": site}, relu=relu)[""]
    maps = nn.functional.interpolate(maps[:, None], size=tuple(x.shape[-2:]), mode="bilinear")
    return maps.expand_as(x).contiguous()
