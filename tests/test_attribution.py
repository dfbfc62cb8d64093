"""Attribution methods and insertion/deletion: axioms, closed forms, Captum and PAIR references, RISE properties."""

import warnings

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from conftest import awkward_net, assert_same_state, snapshot

from compass_lightning.attribution import (
    METHODS,
    agi_paths,
    attribute,
    boundary_baselines,
    guided_ig,
    insertion_deletion,
)
from compass_lightning.guard import analysis_mode


@pytest.fixture(scope="module")
def digits(trained_digits):
    model, pixels, y, task = trained_digits
    net = task.pixel_model(model)
    x = pixels[:48]
    with torch.no_grad():
        target = net(x).argmax(1)
    return model, net, x, target


def _completeness_error(model, x, target):
    attributions = attribute("integrated_gradients", model, x, target, steps=128)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    return (attributions.flatten(1).sum(1) - gap).abs() / gap.abs()


def test_integrated_gradients_is_complete_at_128_steps(digits):
    # On a smooth network the path integral is well conditioned: every sample within 1 %.
    torch.manual_seed(0)
    smooth = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Softplus(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(512, 4),
    )
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        target = smooth(x).argmax(1)
    assert _completeness_error(smooth, x, target).max() < 0.01
    # On a ReLU network the integrand is piecewise constant, which quadrature handles worse: the
    # mean error is within 1 % (measured 0.3 %, worst sample 3.4 %).
    model, net, x, target = digits
    with analysis_mode(model):
        assert _completeness_error(net, x, target).mean() < 0.01


def test_integrated_gradients_of_a_linear_model_is_weight_times_input():
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 4)
    x, target = torch.rand(5, 12), torch.tensor([0, 1, 2, 3, 0])
    attributions = attribute("integrated_gradients", linear, x, target, steps=8)
    assert torch.allclose(attributions, linear.weight[target].detach() * x, atol=1e-5)


def test_captum_readme_toy_model_anchor():
    # anchors.md §5.4: the toy model of Captum's README and the IG values printed there
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1, self.relu, self.lin2 = torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
            self.lin1.weight = torch.nn.Parameter(torch.arange(-4.0, 5.0).view(3, 3))
            self.lin1.bias = torch.nn.Parameter(torch.zeros(3))
            self.lin2.weight = torch.nn.Parameter(torch.arange(-3.0, 3.0).view(2, 3))
            self.lin2.bias = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin2(self.relu(self.lin1(x)))

    torch.manual_seed(123)
    x = torch.rand(2, 3)
    attributions = attribute("integrated_gradients", Toy().eval(), x, torch.tensor([0, 0]))
    expected = torch.tensor([[-0.5922, -1.5497, -1.0067], [0.0000, -0.2219, -5.1991]])
    assert torch.allclose(attributions, expected, atol=1e-4)


def test_integrated_gradients_and_saliency_equal_captums(digits):
    model, net, x, target = digits
    with analysis_mode(model):
        ours_ig = attribute("integrated_gradients", net, x, target, steps=32)
        captum_ig = IntegratedGradients(net).attribute(x.clone().requires_grad_(), baselines=0.0, target=target, n_steps=32)
        ours_saliency = attribute("saliency", net, x, target)
        captum_saliency = Saliency(net).attribute(x.clone().requires_grad_(), target=target)
    assert torch.allclose(ours_ig, captum_ig, atol=1e-6) and torch.allclose(ours_saliency, captum_saliency, atol=1e-7)


def test_guided_ig_equals_pairs_reference_implementation(digits, monkeypatch):
    from saliency.core import guided_ig as reference_module
    from saliency.core.guided_ig import guided_ig_impl

    # PAIR's code passes NumPy's old `interpolation=` keyword, renamed `method=` in NumPy 1.22.
    quantile = np.quantile
    monkeypatch.setattr(reference_module.np, "quantile", lambda a, q, interpolation: quantile(a, q, method=interpolation))

    model, net, x, target = digits
    x, target = x[:4], target[:4]
    with analysis_mode(model):
        ours = guided_ig(net, x, target, steps=16)
        for i in range(len(x)):

            def grad_func(point, i=i):
                point = torch.tensor(point, dtype=torch.float32).unsqueeze(0).requires_grad_()
                score = net(point)[0, target[i]]
                return torch.autograd.grad(score, point)[0][0].double().numpy()

            reference = guided_ig_impl(x[i].double().numpy(), np.zeros(x[i].shape), grad_func, steps=16)
            assert np.allclose(ours[i].numpy(), reference, atol=1e-5), np.abs(ours[i].numpy() - reference).max()


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_finite_attributions_of_the_input_shape_and_leaves_the_model(name):
    model = awkward_net()
    before = snapshot(model)
    x = torch.rand(5, 1, 8, 8)
    with analysis_mode(model):
        attributions = attribute(name, model, x, torch.tensor([0, 1, 2, 3, 0]))
    assert attributions.shape == x.shape and torch.isfinite(attributions).all()
    assert_same_state(before, snapshot(model))


def test_big_baselines_and_agi_paths_cross_the_decision_boundary(digits):
    model, net, x, target = digits
    with analysis_mode(model):
        baselines, found = boundary_baselines(net, x, target, eps=(8 / 255, 32 / 255, 64 / 255), bounds=(0.0, 1.0))
        assert found.all()
        assert (net(baselines).argmax(1) != target).all()
        big = attribute("big", net, x, target)
        attributions, ends, aims = agi_paths(net, x, target, classes=4)
        for aim, end in zip(aims.tolist(), ends):
            moved = target != aim
            assert (net(end[moved]).argmax(1) != target[moved]).all()
    for a in (big, attributions):
        assert a.shape == x.shape and torch.isfinite(a).all() and a.abs().sum() > 0


def test_insertion_deletion_curves_start_and_end_at_the_clean_probability(digits):
    model, net, x, target = digits
    with analysis_mode(model):
        attributions = attribute("saliency", net, x, target)
        insertion, deletion, curves = insertion_deletion(net, x, attributions, steps=9)
        clean = net(x).softmax(1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(curves["deletion"][:, 0], clean, atol=1e-6)
    assert torch.allclose(curves["insertion"][:, -1], clean, atol=1e-6)
    for score in (insertion, deletion):
        assert ((score >= 0) & (score <= 1)).all()


class OnePixel(torch.nn.Module):
    """Reads only pixel (2, 5): class 0 when it is bright."""

    def forward(self, x):
        logit = 10 * (x[:, 0, 2, 5] - 0.5)
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def test_an_attribution_on_the_only_pixel_that_matters_scores_at_the_extremes():
    x = torch.rand(6, 1, 8, 8) * 0.5
    x[:, 0, 2, 5] = 1.0
    right = torch.zeros_like(x)
    right[:, 0, 2, 5] = 1.0
    insertion, deletion, _ = insertion_deletion(OnePixel(), x, right, steps=17)
    floor, top = torch.sigmoid(torch.tensor(-5.0)).item(), torch.sigmoid(torch.tensor(5.0)).item()
    assert (deletion < floor + 1 / 16).all() and (insertion > top - 1 / 16).all()
    wrong = -right  # the pixel last
    insertion, deletion, _ = insertion_deletion(OnePixel(), x, wrong, steps=17)
    assert (deletion > top - 1 / 16).all() and (insertion < floor + 1 / 16).all()


def test_integrated_gradients_beat_a_random_attribution_on_a_trained_model(digits):
    model, net, x, target = digits
    with analysis_mode(model):
        ig = attribute("integrated_gradients", net, x, target)
        ig_insertion, ig_deletion, _ = insertion_deletion(net, x, ig)
        random_insertion, random_deletion, _ = insertion_deletion(net, x, torch.rand_like(x))
    assert ig_insertion.mean() > random_insertion.mean() + 0.1
    assert ig_deletion.mean() < random_deletion.mean() - 0.1


def test_batched_insertion_deletion_equals_a_per_sample_loop(digits):
    model, net, x, target = digits
    x, target = x[:10], target[:10]
    attributions = torch.rand_like(x)
    with analysis_mode(model):
        together = insertion_deletion(net, x, attributions, insertion_start="blur")
        chunked = insertion_deletion(net, x, attributions, insertion_start="blur", batch_size=7)  # pieces cut across samples
        alone = [insertion_deletion(net, x[i : i + 1], attributions[i : i + 1], insertion_start="blur") for i in range(10)]
    for index in (0, 1):
        looped = torch.cat([result[index] for result in alone])
        assert torch.allclose(together[index], looped, atol=1e-6) and torch.allclose(chunked[index], looped, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, t: attribute("nope", m, x, t), "unknown attribution method 'nope'; choose from: saliency"),
        (lambda m, x, t: attribute("integrated_gradients", m, x, t, steps=0), "steps must be an integer >= 1"),
        (lambda m, x, t: attribute("gradcam", m, x, t, layer="net.42"), "no layer 'net.42'; its layers: net, net.0"),
        (lambda m, x, t: insertion_deletion(m, x, x, steps=1), "steps must be an integer >= 2"),
        (lambda m, x, t: insertion_deletion(m, x, x, insertion_start="grey"), "insertion_start must be one of zeros, blur"),
    ],
)
def test_bad_arguments(call, message, digits):
    model, net, x, target = digits
    with pytest.raises(ValueError, match=message), analysis_mode(model):
        call(net, x[:2], target[:2])


def test_integrated_gradients_batched_by_images_equal_one_forward_without_captums_warning(digits):
    model, net, x, target = digits
    x, target = x[:6], target[:6]
    with analysis_mode(model):
        whole = attribute("integrated_gradients", net, x, target, steps=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # below one image per sample Captum would warn at every call
            pieces = attribute("integrated_gradients", net, x, target, steps=8, internal_batch_size=4)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-6)
