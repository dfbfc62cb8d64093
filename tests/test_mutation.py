"""Mutants: identities, exact counts, determinism, bounds, and the label-noise closed form."""

import pytest
import torch

from compass_lightning.mutation import MUTATIONS, mutate, shuffle_permutation


def _batch(n: int = 20, channels: int = 3, side: int = 8):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, side, side, generator=generator), torch.arange(n) % 10


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("noise", {"sigma": 0.0}),
        ("contrast", {"factor": 1.0}),
        ("brightness", {"factor": 1.0}),
        ("random_crop", {"scale": (1.0, 1.0)}),
        ("data_missing", {"p": 0.0}),
        ("label_error", {"p": 0.0}),
    ],
)
def test_neutral_parameters_reproduce_the_input(name, params):
    x, y = _batch()
    mutated, targets = mutate(name, x, y, num_classes=10, generator=_g(), **params)
    assert torch.equal(mutated, x) and torch.equal(targets, y)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_label_error_changes_exactly_round_pn_labels_each_to_another_class(p):
    x = torch.zeros(37, 1, 2, 2)
    y = torch.arange(37) % 5
    _, noisy = mutate("label_error", x, y, num_classes=5, generator=_g(), p=p)
    changed = noisy != y
    assert int(changed.sum()) == round(p * 37)
    assert ((noisy >= 0) & (noisy < 5)).all()


def test_label_error_matches_the_expected_measured_accuracy():
    # anchors.md §5.7: with label noise p to a uniformly random other class, the measured accuracy
    # of fixed predictions is (1-p)·acc + p·(1-acc)/(C-1) in expectation.
    classes, n, p = 4, 40_000, 0.3
    generator = _g(3)
    y = torch.randint(0, classes, (n,), generator=generator)
    correct = torch.rand(n, generator=generator) < 0.8
    predictions = torch.where(correct, y, (y + torch.randint(1, classes, (n,), generator=generator)) % classes)
    accuracy = correct.float().mean().item()
    _, noisy = mutate("label_error", torch.zeros(n, 1), y, num_classes=classes, generator=_g(4), p=p)
    measured = (predictions == noisy).float().mean().item()
    assert measured == pytest.approx((1 - p) * accuracy + p * (1 - accuracy) / (classes - 1), abs=0.01)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_data_missing_zeroes_exactly_round_p_hw_pixels_in_every_channel(p):
    x = torch.ones(6, 3, 8, 8)
    mutated, _ = mutate("data_missing", x, torch.zeros(6, dtype=torch.long), num_classes=2, generator=_g(), p=p)
    missing = mutated == 0
    assert (missing.all(dim=1) == missing.any(dim=1)).all()  # a pixel is missing in all channels or none
    assert missing[:, 0].flatten(1).sum(1).tolist() == [round(p * 64)] * 6


def test_data_shuffle_permutes_samples_with_their_labels():
    x, y = _batch()
    mutated, targets = mutate("data_shuffle", x, y, num_classes=10, generator=_g(5))
    permutation = shuffle_permutation(len(x), _g(5))
    assert torch.equal(mutated, x[permutation]) and torch.equal(targets, y[permutation])
    assert not torch.equal(permutation, torch.arange(len(x)))
    assert MUTATIONS["data_shuffle"].permutes and not MUTATIONS["noise"].permutes


def test_noise_has_the_requested_sigma_and_stays_in_bounds():
    x = torch.full((64, 1, 16, 16), 0.5)
    mutated, _ = mutate("noise", x, torch.zeros(64, dtype=torch.long), num_classes=2, generator=_g(), sigma=0.1)
    assert (mutated - x).std().item() == pytest.approx(0.1, rel=0.03)
    extreme, _ = mutate("noise", x, torch.zeros(64, dtype=torch.long), num_classes=2, generator=_g(), sigma=5.0)
    assert extreme.min() >= 0 and extreme.max() <= 1


def test_contrast_and_brightness_follow_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x, y = _batch()
    assert torch.equal(mutate("contrast", x, y, num_classes=10)[0], TF.adjust_contrast(x, 0.5))
    assert torch.equal(mutate("brightness", x, y, num_classes=10)[0], TF.adjust_brightness(x, 1.3))


def test_random_crop_crops_each_sample_differently_and_keeps_the_shape():
    x = torch.linspace(0, 1, 16).expand(10, 1, 16, 16).contiguous()  # a horizontal ramp
    mutated, _ = mutate("random_crop", x, torch.zeros(10, dtype=torch.long), num_classes=2, generator=_g())
    assert mutated.shape == x.shape and mutated.min() >= 0 and mutated.max() <= 1
    spans = mutated[:, 0, 0, -1] - mutated[:, 0, 0, 0]  # a crop of side s spans about s of the ramp
    assert (spans < 1.0 - 1e-3).all() and (spans > 0.7).all()  # side in [sqrt(0.6), 1]
    assert len(set(spans.tolist())) == 10


def test_mutants_are_reproducible_from_the_seed():
    x, y = _batch()
    for name in MUTATIONS:
        first = mutate(name, x, y, num_classes=10, generator=_g(9))
        second = mutate(name, x, y, num_classes=10, generator=_g(9))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]), name


def test_bounds_map_the_parameters_onto_the_pixel_range():
    x, y = _batch()
    brightened, _ = mutate("brightness", x * 255, y, num_classes=10, bounds=(0.0, 255.0), factor=1.3)
    assert torch.allclose(brightened, mutate("brightness", x, y, num_classes=10, factor=1.3)[0] * 255, atol=1e-4)
    noisy, _ = mutate("noise", x * 255, y, num_classes=10, generator=_g(), bounds=(0.0, 255.0), sigma=1.0)
    assert noisy.min() >= 0 and noisy.max() <= 255 and noisy.max() > 1


def test_inputs_are_returned_unchanged_when_a_mutant_only_touches_labels():
    x, y = _batch()
    assert mutate("label_error", x, y, num_classes=10, generator=_g())[0] is x
    assert mutate("label_error", x * 2, y, num_classes=10, generator=_g(), bounds=(0.0, 2.0))[0] is not x


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown mutation 'nope'; choose from: label_error"),
        ("noise", {"sigma": -0.1}, r"noise.sigma must be a number in \[0.0, inf\]"),
        ("noise", {"std": 0.1}, "mutation 'noise' has no parameter std; its parameters: sigma"),
        ("label_error", {"p": 1.5}, r"label_error.p must be a number in \[0.0, 1.0\]"),
        ("data_missing", {"p": -1}, "data_missing.p"),
        ("random_crop", {"scale": (0.0, 1.0)}, r"random_crop.scale\[0\] must be a number in \(0.0, 1.0\]"),
        ("random_crop", {"scale": (0.9, 0.5)}, "low <= high"),
        ("contrast", {"factor": -1}, "contrast.factor"),
    ],
)
def test_bad_names_and_parameters_are_value_errors(name, params, message):
    x, y = _batch()
    with pytest.raises(ValueError, match=message):
        mutate(name, x, y, num_classes=10, **params)


def test_image_mutants_reject_non_images_and_label_error_needs_two_classes():
    with pytest.raises(ValueError, match=r"needs image batches of shape \(N, C, H, W\)"):
        mutate("random_crop", torch.rand(4, 5), torch.zeros(4, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        mutate("label_error", torch.rand(4, 5), torch.zeros(4, dtype=torch.long), num_classes=1)


def test_batch_dependence_realigns_the_shuffled_rows_before_comparing():
    from compass_lightning.mutation import batch_dependence, shuffle_permutation

    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    permutation = shuffle_permutation(6, torch.Generator().manual_seed(1))
    assert not torch.equal(permutation, torch.arange(6))
    assert batch_dependence(logits, logits[permutation], permutation).item() == 0.0  # order alone changes nothing
    changed = logits[permutation].clone()
    changed[0] += torch.tensor([1.0, 0.0, 0.0])  # sample permutation[0]'s prediction moves
    expected = (changed[0].softmax(0) - logits[permutation[0]].softmax(0)).abs().max()
    assert batch_dependence(logits, changed, permutation).item() == pytest.approx(expected.item())
