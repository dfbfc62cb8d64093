"""Neuron analyses against hand-computed values, Captum's Grad-CAM and built-to-be-sensitive models."""

import pytest
import torch
from torch import nn

from compass_lightning.neurons import (
    Coverage,
    conv_neuron_layers,
    cosine,
    coverage,
    compromised_layers,
    jaccard,
    layer_deviation,
    matched_gaussian,
    neuron_excitability,
    neuron_sensitivity,
    neuron_values,
    paper_fraction,
    profile_ranges,
    select_layers,
    sensitivity,
    summarise_deviation,
)
from compass_lightning.attribution import gradcam_maps
from compass_lightning.neurons.deviation import deviation_similarities


class Identity3(nn.Module):
    """Its one Linear layer passes the three inputs through: the neuron values are the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x)


def test_coverage_criteria_equal_hand_computed_values():
    net = Identity3()
    train = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]])  # ranges: [0,1], [0,2], [0,4]
    probe = torch.tensor([[0.05, 1.9, 5.0], [0.95, 0.1, -1.0], [0.5, 1.0, 2.0]])
    ranges = profile_ranges(net, [train])
    result = coverage(net, [probe[:2], probe[2:]], ranges=ranges, sections=4, threshold=0.2)
    # NC: per input min-max over the layer: input 0 -> [0, 0.38, 1] covers neurons 1, 2; input 1 ->
    # [1, 0.55, 0] covers 0, 1; input 2 -> [0, 0.33, 1] -> all three covered
    assert result["nc"]["total"].item() == pytest.approx(1.0)
    # KMNC, 4 sections: neuron 0 [0,1]: 0.05->s0, 0.95->s3, 0.5->s2 (3); neuron 1 [0,2]: 1.9->s3,
    # 0.1->s0, 1.0->s2 (3); neuron 2 [0,4]: 5 and -1 outside, 2.0->s2 (1): 7 of 12
    assert result["kmnc"]["fc"].item() == pytest.approx(7 / 12)
    # corners: neuron 2 above (5 > 4) and below (-1 < 0): NBC 2 / 6, SNAC 1 / 3
    assert result["nbc"]["total"].item() == pytest.approx(2 / 6)
    assert result["snac"]["total"].item() == pytest.approx(1 / 3)
    # TKNC (k=1): top neurons 2, 0, 2 -> {0, 2}
    assert result["tknc"]["total"].item() == pytest.approx(2 / 3)
    # BKNC (k=1): bottom neurons 0 (0.05), 2 (-1.0), 0 (0.5) -> {0, 2}; k=2 adds neuron 1 (0.1 in input 1)
    assert result["bknc"]["total"].item() == pytest.approx(2 / 3)
    two = coverage(net, [probe], criteria=["tknc", "bknc"], top_k=2)
    assert two["bknc"]["fc"].item() == pytest.approx(1.0) and two["tknc"]["fc"].item() == pytest.approx(1.0)
    only_first = coverage(net, [probe[:1]], criteria=["bknc"])  # input 0 alone: its smallest is neuron 0
    assert only_first["bknc"]["fc"].item() == pytest.approx(1 / 3)


def test_nc_of_a_convolution_scales_by_the_whole_feature_map_then_takes_the_channel_mean():
    """DeepXplore's rule: min-max over every position and channel of one input's map, then each
    channel's mean — not min-max over the channel means (which always covers the top channel)."""
    conv = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0  # channel 0: [1, 0, 0, 0], channel 1: [0.5, 0, 0, 0]
    # map min 0, max 1: scaled channel means 0.25 and 0.125; threshold 0.2 covers channel 0 only
    result = coverage(conv, [x], criteria=["nc"], threshold=0.2)
    assert result["nc"]["total"].item() == pytest.approx(0.5)
    # at 0.3 none is covered; min-max over the channel means (0.25, 0.125 -> 1, 0) would cover channel 0
    assert coverage(conv, [x], criteria=["nc"], threshold=0.3)["nc"]["total"].item() == 0.0


def test_kmnc_sections_are_closed_at_both_ends_of_the_range_and_boundaries_go_up():
    # One neuron per layer, range [0, 1], 4 sections [0, .25), [.25, .5), [.5, .75), [.75, 1]:
    # a value equal to `high` is inside (last section), one equal to `low` is inside (first
    # section), a section boundary belongs to the section above it, and only values strictly
    # beyond the range are corners.
    layers = {"at_high": [1.0], "at_low": [0.0], "boundary": [0.5, 0.4999], "just_above": [1.0 + 1e-6],
              "just_below": [-1e-6], "first_boundary": [0.25]}
    ranges = {name: (torch.zeros(1), torch.ones(1)) for name in layers}
    cover = Coverage(ranges, sections=4, criteria=["kmnc", "nbc", "snac"])
    cover.update({name: torch.tensor(values).view(-1, 1) for name, values in layers.items()})
    result = {criterion: {k: v.item() for k, v in r.items()} for criterion, r in cover.result().items()}
    kmnc = result["kmnc"]
    assert kmnc["at_high"] == 1 / 4 and kmnc["at_low"] == 1 / 4 and kmnc["first_boundary"] == 1 / 4
    assert kmnc["boundary"] == 2 / 4  # 0.5 in [.5, .75), 0.4999 in [.25, .5)
    assert kmnc["just_above"] == 0 and kmnc["just_below"] == 0
    assert result["snac"]["at_high"] == 0 and result["nbc"]["at_high"] == 0 and result["nbc"]["at_low"] == 0
    assert result["snac"]["just_above"] == 1 and result["nbc"]["just_below"] == 1 / 2
    # Which section: the four values 0, 0.25, 0.5 and 1.0 in one neuron cover four different sections.
    one = Coverage({"n": (torch.zeros(1), torch.ones(1))}, sections=4, criteria=["kmnc"])
    one.update({"n": torch.tensor([[0.0], [0.25], [0.5], [1.0]])})
    assert one.result()["kmnc"]["n"].item() == 1.0
    # and 0.74, 0.75 are two sections, 0.76, 0.99 one (the boundary goes up, not down)
    two = Coverage({"n": (torch.zeros(1), torch.ones(1))}, sections=4, criteria=["kmnc"])
    two.update({"n": torch.tensor([[0.74], [0.75], [0.76], [0.99]])})
    assert two.result()["kmnc"]["n"].item() == 2 / 4


def test_sensitivity_is_the_value_change_per_unit_of_noise_norm():
    # For the pass-through layer, neuron n's value change is the noise's n-th component, so its
    # sensitivity is the mean over the draws of |delta_n| / ||delta||_2, whatever sigma is.
    net = Identity3()
    x = torch.rand(4, 3)
    normal = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))  # (N, draws, ...)
    expected = (normal.abs() / normal.norm(dim=2, keepdim=True)).mean(dim=1)
    for sigma in (0.01, 0.5):
        scores = neuron_sensitivity(net, x, sigma=sigma, draws=5, normal=normal)["fc"]
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_coverage_totals_weigh_layers_by_their_neurons_and_conv_channels_are_spatial_means():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    x = torch.rand(5, 1, 2, 2)
    values = neuron_values(net, x, select_layers(net, example=x)).values
    assert torch.allclose(values["0"][:, 0], x.mean(dim=(1, 2, 3)))  # read after the ReLU: channel 1 is 0
    assert torch.equal(values["0"][:, 1], torch.zeros(5))
    result = coverage(net, [x], criteria=["tknc"])
    per_layer = {k: v.item() for k, v in result["tknc"].items()}
    assert per_layer["total"] == pytest.approx((per_layer["0"] * 2 + per_layer["3"] * 3) / 5)


def test_profiled_ranges_are_the_min_and_max_over_the_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    data = torch.randn(50, 4)
    ranges = profile_ranges(net, data.split(16))
    with torch.no_grad():
        hidden = torch.tanh(net[0](data))
        out = net(data)
    assert torch.equal(ranges["0"][0], hidden.amin(0)) and torch.equal(ranges["0"][1], hidden.amax(0))
    assert torch.equal(ranges["2"][0], out.amin(0)) and torch.equal(ranges["2"][1], out.amax(0))


def test_sensitivity_flags_the_neuron_built_to_be_sensitive():
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight.fill_(0.01)
        net[0].weight[3] = 5.0  # hidden neuron 3 amplifies any input change 500 times more
        net[0].bias.fill_(1.0)  # every ReLU active: the response is linear
    result = sensitivity(net, torch.rand(32, 8), sigma=0.05, draws=4, generator=torch.Generator().manual_seed(0))
    assert result["scaled_fraction"]["0"].item() == pytest.approx(1 / 6)
    assert 0.5 / 6 < result["fraction"]["0"].item() <= 1 / 6 + 1e-6  # neuron 3 on most inputs, no other on any
    assert result["top"][0] == "0:3"
    assert result["scores"]["0"].argmax().item() == 3


def test_the_paper_form_fraction_rises_when_a_layer_grows_and_the_scale_free_one_cannot_show_it():
    """DeepSensor's Def. 2 thresholds the unscaled sensitivity: weights ×10 make more neurons
    sensitive. The per-layer min-max scaled variant is blind to it: it gives the same fraction."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(64, 8)

    def measure():
        return sensitivity(net, x, sigma=0.05, draws=4, layers=["0"], generator=torch.Generator().manual_seed(0))

    before = measure()
    with torch.no_grad():
        net[0].weight.mul_(10)
        net[0].bias.mul_(10)
    after = measure()
    assert after["fraction"]["0"] > before["fraction"]["0"] + 0.2
    assert after["scaled_fraction"]["0"] == pytest.approx(before["scaled_fraction"]["0"].item())


def test_excitability_is_the_first_order_loss_change_of_zeroing_a_neuron():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.rand(6, 3), torch.randint(0, 2, (6,))
    generator = torch.Generator().manual_seed(1)
    scores = neuron_excitability(net, x, y, sigma=0.1, layers=["2"], generator=generator)["2"]
    noisy = x + torch.randn(1, *x.shape, generator=torch.Generator().manual_seed(1))[0] * 0.1

    def a_times_grad(inputs):
        logits = net(inputs).detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(loss, logits)
        return logits.detach() * g

    assert torch.allclose(scores, a_times_grad(noisy) - a_times_grad(x), atol=1e-6)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_of_every_layer_from_one_backward_equals_captum(relu):
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
    x, target = torch.rand(5, 1, 10, 10), torch.tensor([0, 1, 2, 0, 1])
    layers = conv_neuron_layers(net, example=x[:1])
    assert list(layers) == ["0", "3", "6"] and all(isinstance(l.observed, nn.ReLU) for l in layers.values())
    ours = gradcam_maps(net, x, target, {n: layer.site for n, layer in layers.items()}, relu=relu)
    for name, layer in layers.items():
        reference = LayerGradCam(net, layer.observed).attribute(x, target=target, relu_attributions=relu)
        assert torch.allclose(ours[name], reference[:, 0], atol=1e-6), name
        up = LayerAttribution.interpolate(reference, (10, 10), interpolate_mode="bilinear")
        ours_up = nn.functional.interpolate(ours[name][:, None], size=(10, 10), mode="bilinear")
        assert torch.allclose(ours_up, up, atol=1e-6), name


def test_cosine_handles_all_zero_maps_without_nan():
    zero, ones = torch.zeros(1, 4), torch.ones(1, 4)
    assert cosine(zero, zero).item() == 1.0 and cosine(zero, ones).item() == 0.0
    assert cosine(ones, 2 * ones).item() == pytest.approx(1.0) and cosine(ones, -ones).item() == pytest.approx(-1.0)


def test_compromise_rule_on_synthetic_similarities():
    gaussian = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])  # median 0.7
    adversarial = {"a": torch.tensor([0.1, 0.2, 0.69, 0.71, 0.95]), "b": torch.full((5,), 0.8)}
    summary = summarise_deviation({name: (adv, gaussian) for name, adv in adversarial.items()})
    assert summary["a"]["compromise_probability"].item() == pytest.approx(3 / 5)
    assert summary["b"]["compromise_probability"].item() == 0.0
    assert summary["a"]["gap"].item() == pytest.approx(0.7 - adversarial["a"].mean().item())


def _deviation_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def test_deviation_compares_the_maps_at_the_input_resolution_and_scales_the_perturbation_per_strength():
    net, x = _deviation_net(), torch.rand(6, 1, 12, 12)
    y = torch.zeros(6, dtype=torch.long)
    net(x)
    layers = conv_neuron_layers(net, example=x[:1])
    x_adv = (x + 0.1 * torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    by_strength, pictures = deviation_similarities(net, x, y, layers=layers, x_adv=x_adv, strengths=(0.5, 2.0),
                                                   generator=torch.Generator().manual_seed(2))
    assert sorted(by_strength) == [0.5, 1.0, 2.0]
    # strength 1: the cosine of the bilinear-upsampled Grad-CAMs (5x5 and 3x3 maps of a 12x12 input)
    predicted = net(torch.cat([x, x_adv])).argmax(1)
    maps = gradcam_maps(net, torch.cat([x, x_adv]), predicted, {n: layer.site for n, layer in layers.items()})
    differs = []
    for name, m in maps.items():
        up = nn.functional.interpolate(m[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
        assert torch.allclose(by_strength[1.0]["layers"][name][0], cosine(up[:6], up[6:]), atol=1e-6)
        differs.append(not torch.allclose(cosine(up[:6], up[6:]), cosine(m[:6], m[6:]), atol=1e-4))
    assert any(differs)  # the resolution matters
    assert torch.equal(by_strength[1.0]["fooled"], (predicted[6:] != predicted[:6]).cpu())
    # strength 2: the attack's perturbation doubled and clipped, re-checked for fooling
    doubled, _ = deviation_similarities(net, x, y, layers=layers, x_adv=(x + 2 * (x_adv - x)).clamp(0, 1),
                                        generator=torch.Generator().manual_seed(2))
    for name in layers:
        assert torch.allclose(by_strength[2.0]["layers"][name][0], doubled[1.0]["layers"][name][0], atol=1e-6)
    assert torch.equal(by_strength[2.0]["fooled"], doubled[1.0]["fooled"])


def test_an_attack_that_fools_nobody_compromises_no_layer():
    net, x = _deviation_net(), torch.rand(6, 1, 12, 12)
    net(x)
    result = layer_deviation(net, x, torch.zeros(6, dtype=torch.long), eps=0.0)
    assert result["fooled"].item() == 0.0
    assert all(s["compromise_probability"].item() == 0.0 for s in result["layers"].values())


def test_matched_gaussian_has_the_perturbations_statistics():
    x = torch.full((2, 3, 32, 32), 0.5)
    delta = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.03 + 0.01
    noisy = matched_gaussian(x, x + delta, bounds=(0, 1), generator=torch.Generator().manual_seed(1))
    noise = (noisy - x).flatten(1)
    assert torch.allclose(noise.mean(1), delta.flatten(1).mean(1), atol=2e-3)
    assert torch.allclose(noise.std(1), delta.flatten(1).std(1), rtol=0.05)


def test_layer_deviation_attack_moves_attention_more_than_matched_noise(trained_digits):
    model, pixels, y, task = trained_digits
    net = task.pixel_model(model)
    result = layer_deviation(net, pixels[:64], y[:64], attack="pgd", eps=0.15, generator=torch.Generator().manual_seed(0))
    gaps = {name: s["gap"].item() for name, s in result["layers"].items()}
    assert list(gaps) == ["net.0", "net.3", "net.7"]
    assert max(gaps.values()) > 0.05, gaps  # some layer's attention moves more under attack than under noise
    assert result["most_vulnerable"][0] == max(gaps, key=gaps.get)


def test_hooks_are_removed_after_an_exception():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError):
        coverage(net, [torch.rand(2, 5)], criteria=["nc"])  # wrong input size
    with pytest.raises(RuntimeError):
        sensitivity(net, torch.rand(2, 5))
    assert all(not m._forward_hooks for m in net.modules())


def test_unknown_layers_and_criteria_are_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layers: the model has no layer 'fc'; its layers: 0, 1, 2"):
        select_layers(net, ["fc"])
    with pytest.raises(ValueError, match="criteria: unknown criterion 'xnc'"):
        Coverage(None, criteria=["xnc"])
    with pytest.raises(ValueError, match="need ranges"):
        Coverage(None, criteria=["kmnc"])
    with pytest.raises(ValueError, match="needs Conv2d layers"):
        conv_neuron_layers(net)


def test_jaccard():
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3) and jaccard([], []) == 1.0
