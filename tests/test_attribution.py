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
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.tasks import Classification


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


def _reference_insertion_deletion(model, x, attributions, target, steps):
    """RISE written out per sample and step, in NumPy: pixels ranked by the attribution summed over
    channels (ties: the earlier pixel first), ``round(k * pixels / (steps - 1))`` pixels moved at
    step k, every channel of a moved pixel replaced, the area by NumPy's trapezoid rule on [0, 1]."""
    n, channels, height, width = x.shape
    pixels = height * width
    scores = attributions.sum(dim=1).reshape(n, pixels).numpy()
    counts = [int(np.floor(k * pixels / (steps - 1) + 0.5)) for k in range(steps)]
    areas = {"insertion": [], "deletion": []}
    for i in range(n):
        order = np.argsort(-scores[i], kind="stable")
        curves = {"insertion": [], "deletion": []}
        for count in counts:
            chosen = np.zeros(pixels, dtype=bool)
            chosen[order[:count]] = True
            chosen = torch.from_numpy(chosen).view(1, 1, height, width).expand(1, channels, height, width)
            image = x[i : i + 1]
            deleted = torch.where(chosen, torch.zeros_like(image), image)
            inserted = torch.where(chosen, image, torch.zeros_like(image))
            for kind, masked in (("deletion", deleted), ("insertion", inserted)):
                with torch.no_grad():
                    curves[kind].append(model(masked).softmax(1)[0, target[i]].item())
        for kind in areas:
            areas[kind].append(np.trapezoid(curves[kind], np.linspace(0, 1, steps)))
    return {kind: torch.tensor(values, dtype=torch.float64) for kind, values in areas.items()}


def test_insertion_deletion_on_colour_images_equals_a_reference_written_out():
    # 3 channels whose attributions disagree between channels (the sum ranks pixels, not channel 0),
    # 25 pixels and 4 steps (counts 0, 8, 17, 25: 50/3 rounds up), a model that reads every channel.
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 4))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 75, generator=generator))
    x = torch.rand(5, 3, 5, 5, generator=generator)
    attributions = torch.randn(5, 3, 5, 5, generator=generator)
    assert not torch.equal(attributions.sum(1).flatten(1).argsort(1), attributions[:, 0].flatten(1).argsort(1))
    target = torch.tensor([0, 1, 2, 3, 0])
    expected = _reference_insertion_deletion(model, x, attributions, target, steps=4)
    insertion, deletion, curves = insertion_deletion(model, x, attributions, target=target, steps=4, batch_size=3)
    torch.testing.assert_close(insertion.double(), expected["insertion"], atol=1e-6, rtol=0)
    torch.testing.assert_close(deletion.double(), expected["deletion"], atol=1e-6, rtol=0)
    assert curves["insertion"].shape == (5, 4)
    # the trapezoid rule, not the mean of the points
    assert not torch.allclose(insertion, curves["insertion"].mean(1), atol=1e-3)


# -- independent references: closed forms and properties -------------------------------------------


class _TwoLayerReLU(torch.nn.Module):
    """``v · relu(W x + b)`` for two classes: piecewise linear, with kinks the paths cross."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.hidden, self.relu, self.out = torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x):
        return self.out(self.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def relu_net():
    net = _TwoLayerReLU().eval()
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(4)) * 2 - 0.5
    return net, x, torch.tensor([0, 1] * 4)


def test_saliency_and_input_x_gradient_of_a_linear_model_are_its_weights():
    linear = torch.nn.Linear(12, 4)
    x, target = torch.randn(5, 12), torch.tensor([0, 1, 2, 3, 0])
    weights = linear.weight[target].detach()
    torch.testing.assert_close(attribute("saliency", linear, x, target), weights.abs())
    torch.testing.assert_close(attribute("saliency", linear, x, target, abs=False), weights)
    torch.testing.assert_close(attribute("input_x_gradient", linear, x, target), weights * x)


def test_integrated_gradients_of_a_relu_net_is_the_active_fraction_of_the_path(relu_net):
    # Along the path a x (a in [0, 1]) hidden unit j is active where a z_j + b_j > 0, z = W x: IG_i =
    # x_i sum_j v_j W_ji |{a : a z_j + b_j > 0}|, an exact integral of a piecewise-constant gradient.
    net, x, target = relu_net
    W, b, v = net.hidden.weight.detach(), net.hidden.bias.detach(), net.out.weight.detach()[target]
    z = x @ W.T
    crossing = (-b / z).clamp(0, 1)  # where a z_j + b_j changes sign
    active = torch.where(z > 0, 1 - crossing, crossing) * (z != 0) + (z == 0) * (b > 0)
    active = torch.where((b > 0) & (z >= 0), torch.ones_like(active), active)  # active along the whole path
    active = torch.where((b <= 0) & (z <= 0), torch.zeros_like(active), active)  # never active
    expected = x * ((v * active) @ W)
    ours = attribute("integrated_gradients", net, x, target, steps=2000, method="riemann_middle")
    torch.testing.assert_close(ours, expected, atol=5e-3, rtol=0)
    assert ((active > 0) & (active < 1)).any()  # some unit switches on the path: a kink is crossed


def test_deeplift_follows_the_rescale_rule_on_a_two_layer_relu_net(relu_net):
    # Rescale rule from a zero baseline: each hidden unit's multiplier is (relu(z) - relu(b)) / (z - b),
    # z = W x + b its input on x and b on the baseline; attribution = x * sum_j v_j m_j W_ji.
    net, x, target = relu_net
    W, b, v = net.hidden.weight.detach(), net.hidden.bias.detach(), net.out.weight.detach()[target]
    z = x @ W.T + b
    multiplier = (z.relu() - b.relu()) / (z - b)
    expected = x * ((v * multiplier) @ W)
    ours = attribute("deeplift", net, x, target)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    gradient_times_input = attribute("input_x_gradient", net, x, target)
    assert (ours - gradient_times_input).abs().max() > 0.1  # not input x gradient on this net


def test_gradcam_of_a_conv_pool_linear_net_is_the_weighted_channel_sum():
    # Grad-CAM's channel weight is the spatial mean of the gradient, W[c, k] / (H W) here, and the
    # map relu(sum_k weight_k A_k); the conv keeps the input size, so no interpolation changes it.
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Linear(3, 2)
    model = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), linear)
    x, target = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        activations = conv(x)
        weights = linear.weight[target] / 36
    expected = (weights[:, :, None, None] * activations).sum(1, keepdim=True).relu()
    torch.testing.assert_close(attribute("gradcam", model, x, target, layer="0"), expected, atol=1e-6, rtol=1e-5)


def test_smoothgrad_of_a_sum_of_relus_is_the_gaussian_probability_of_being_active():
    # The gradient of sum_i relu(x_i) is 1[x_i > 0], so SmoothGrad (absolute gradients averaged over
    # N(0, stdev²) noise) tends to P(x_i + noise > 0) = Phi(x_i / stdev): the mean, not the sum.
    class SumOfReLUs(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.relu().sum(1), -x.relu().sum(1)], dim=1)

    x = torch.linspace(-0.3, 0.3, 7).view(1, 7)
    torch.manual_seed(0)
    ours = attribute("smoothgrad", SumOfReLUs(), x, torch.tensor([0]), samples=4000, stdev=0.15)
    expected = torch.distributions.Normal(0.0, 1.0).cdf(x / 0.15)
    torch.testing.assert_close(ours, expected, atol=0.03, rtol=0)  # 4000 draws: standard error <= 0.008


def test_fast_ig_of_a_linear_model_is_input_times_the_log_probability_gradient():
    # d log p_c / dx = W_c - sum_k p_k W_k for logits W x + b
    linear = torch.nn.Linear(5, 3)
    x, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        p = linear(x).softmax(1)
        expected = x * (linear.weight[target] - p @ linear.weight)
    torch.testing.assert_close(attribute("fast_ig", linear, x, target), expected, atol=1e-6, rtol=1e-5)


class _Smooth(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(2)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Softplus(), torch.nn.Linear(16, 4))
        with torch.no_grad():
            self.body[2].weight.mul_(scale)  # larger: more confident predictions

    def forward(self, x):
        return self.body(x)


def test_big_is_complete_from_its_boundary_baseline():
    # IG from the baseline b: the attributions sum to f_c(x) - f_c(b), and b is across the boundary.
    net = _Smooth().eval()
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = net(x).argmax(1)
    baselines, found = boundary_baselines(net, x, target, eps=(0.1, 0.3, 0.6), bounds=(0.0, 1.0))
    assert found.all()
    attributions = attribute("big", net, x, target, eps=(0.1, 0.3, 0.6), steps=128)
    with torch.no_grad():
        gap = (net(x) - net(baselines)).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(attributions.sum(1), gap, atol=1e-3, rtol=1e-3)


def test_agi_sums_to_the_probability_lost_along_its_paths():
    # AGI integrates -grad p_c . dx along each adversarial path, so on a smooth model with small steps
    # the attributions sum to sum over paths of p_c(x) - p_c(end of the path) (first-order exact).
    net = _Smooth(scale=3.0).eval()  # confident, so that the paths lose probability (0.01-0.15)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = net(x).argmax(1)
    torch.manual_seed(0)
    attributions, ends, aims = agi_paths(net, x, target, eps=0.002, steps=300, classes=3)
    with torch.no_grad():
        p = lambda t: t.softmax(1).gather(1, target[:, None]).squeeze(1)  # noqa: E731
        lost = sum(p(net(x)) - p(net(end)) for end in ends)
    assert lost.abs().max() > 0.1 and (ends - x).abs().amax() > 0.1  # the paths went somewhere
    torch.testing.assert_close(attributions.sum(1), lost, atol=1e-3, rtol=0.01)


def test_deeplift_through_the_monitors_is_captums_deeplift_on_the_model_with_its_normalisation(trained_digits):
    # The space model keeps the user's model out of its submodules; Captum's DeepLIFT hooks the modules of
    # what it is given, so it once saw no ReLU and returned input x gradient exactly.
    from captum.attr import DeepLift

    from compass_lightning.attribution.scoring import score_probe
    from compass_lightning.engine.evaluation import Evaluation
    from compass_lightning.engine.probe import ProbeSet

    model, pixels, y, task = trained_digits
    x = task.from_pixels(pixels[:6])
    evaluation = Evaluation(model, ProbeSet(x, y[:6]), task, batch_size=6)
    target = model(x).argmax(dim=1)
    with analysis_mode(model):
        _, ours = score_probe(evaluation, "deeplift", {}, torch.Generator().manual_seed(0), steps=4, keep=6)

        class Normalised(torch.nn.Module):  # the user's model with the normalisation in front, in pixel space
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, p):
                return self.model(task.from_pixels(p))

        # Captum's max-pooling rule un-pools, which a fit with deterministic=True earlier in the session forbids
        before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = DeepLift(Normalised()).attribute(pixels[:6].clone().requires_grad_(True), baselines=0.0,
                                                             target=target)
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        gradient_times_input = attribute("input_x_gradient", task.pixel_model(model), pixels[:6], target)
    torch.testing.assert_close(ours, reference.detach(), atol=1e-5, rtol=1e-4)
    assert (ours - gradient_times_input).abs().max() > 0.05 * gradient_times_input.abs().max()


class _FunctionalReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(6, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.nn.functional.relu(self.hidden(x)))


class _ReusedReLU(_FunctionalReLU):
    def __init__(self):
        super().__init__()
        self.act, self.middle = torch.nn.ReLU(), torch.nn.Linear(5, 5)

    def forward(self, x):
        return self.out(self.act(self.middle(self.act(self.hidden(x)))))


class _GELU(_FunctionalReLU):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


@pytest.mark.parametrize(("net", "cause"), [(_FunctionalReLU, "as functions"), (_ReusedReLU, "runs 2 times"),
                                            (_GELU, "no rule for gelu")])
def test_deeplift_on_a_model_it_cannot_handle_is_refused_naming_the_cause(net, cause):
    from compass_lightning.attribution.captum_methods import deeplift_problem

    reason = deeplift_problem(Classification().pixel_model(net()), torch.rand(2, 6))
    assert reason is not None and cause in reason
    assert deeplift_problem(Classification().pixel_model(_TwoLayerReLU()), torch.rand(2, 6)) is None


def test_the_monitor_refuses_deeplift_at_fit_start_on_a_model_of_functional_relus(tmp_path):
    from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer

    import compass_lightning as cl

    class FunctionalReLU(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu(x)

    model = DigitsClassifier()
    model.net[2] = FunctionalReLU()  # one of its three ReLUs applied as a function
    monitor = cl.AttributionScores(task=digits_task(), methods=["saliency", "deeplift"], every_n_epochs=1, probe_size=4)
    trainer = make_trainer(tmp_path, [monitor], epochs=1, logger=False)
    with pytest.raises(ValueError, match=r"methods: deeplift does not apply to DigitsClassifier: it applies non-linearities as functions"):
        trainer.fit(model, datamodule=DigitsDataModule())
    assert trainer.global_step == 0  # before the first training step


def test_smoothgrad_averages_the_signed_gradient_as_the_paper_does_and_the_absolute_variant_has_its_own_name():
    # a linear model's gradient is its weights whatever the noise: SmoothGrad (Smilkov et al. Eq. 3) is the
    # weights, signs kept; the mean of |gradient| is their absolute value
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    x, target = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    weights = linear.weight[target].detach()
    assert (weights < 0).any()
    torch.testing.assert_close(attribute("smoothgrad", linear, x, target, samples=8), weights)
    torch.testing.assert_close(attribute("smoothgrad_abs", linear, x, target, samples=8), weights.abs())


def test_agi_explains_the_true_class_through_the_monitors_as_its_paper_does():
    # AGI's Eq. 8 integrates the gradient of the true class; the other methods explain the prediction
    from conftest import DigitsClassifier, DigitsDataModule, digits_task

    from compass_lightning.attribution import agi_paths
    from compass_lightning.attribution.scoring import score_probe
    from compass_lightning.engine.evaluation import Evaluation
    from compass_lightning.engine.probe import ProbeSet

    torch.manual_seed(0)
    model, task = DigitsClassifier().eval(), digits_task()  # untrained: most predictions are wrong
    data = DigitsDataModule()
    data.setup()
    x, y = data.val_set.tensors[0][:6], data.val_set.tensors[1][:6]
    predicted = model(x).argmax(dim=1)
    assert (predicted != y).any()
    evaluation = Evaluation(model, ProbeSet(x, y), task, batch_size=6)
    params = {"steps": 3, "classes": 2}
    with analysis_mode(model):
        torch.manual_seed(1)
        _, ours = score_probe(evaluation, "agi", params, torch.Generator().manual_seed(0), steps=4, keep=6)
        pixels = task.to_space(x, model)
        torch.manual_seed(1)
        true_class = agi_paths(task.space_model(model, x), pixels, y, eps=0.05, **params)[0]
        torch.manual_seed(1)
        _, variant = score_probe(evaluation, "agi_predicted", params, torch.Generator().manual_seed(0), steps=4, keep=6)
        torch.manual_seed(1)
        predicted_class = agi_paths(task.space_model(model, x), pixels, predicted, eps=0.05, **params)[0]
    torch.testing.assert_close(ours, true_class)
    torch.testing.assert_close(variant, predicted_class)
    assert not torch.allclose(ours, variant)


def test_deeplift_of_a_max_pooling_model_runs_under_deterministic_algorithms_and_restores_them(trained_digits):
    # Captum's max-pooling rule un-pools, for which torch has no deterministic kernel: with
    # Trainer(deterministic=True) every evaluation of DeepLIFT on the digits CNN once failed
    model, pixels, y, task = trained_digits
    target = model(task.from_pixels(pixels[:2])).argmax(dim=1)
    expected = attribute("deeplift", task.pixel_model(model), pixels[:2], target)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ours = attribute("deeplift", task.pixel_model(model), pixels[:2], target)
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.testing.assert_close(ours, expected)
