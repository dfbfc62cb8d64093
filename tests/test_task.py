"""The classification task adapter: batches, spaces and model outputs."""

import pytest
import torch

from compass_lightning.tasks import Classification


def test_reads_tuple_list_and_dict_batches():
    x, y = torch.rand(4, 3), torch.arange(4)
    assert Classification().split((x, y))[0] is x
    assert Classification().split([x, y])[1] is y
    task = Classification(input_key="image", target_key="label")
    assert task.split({"image": x, "label": y, "id": "extra"}) == (x, y)


def test_missing_keys_say_where_to_look():
    with pytest.raises(TypeError, match=r"cannot read the inputs at key 'pixels'.*keys \['image', 'label'\]"):
        Classification(input_key="pixels").inputs({"image": torch.rand(2), "label": torch.arange(2)})
    with pytest.raises(TypeError, match="must be a tensor"):
        Classification().targets((torch.rand(2, 3), [0, 1]))


def test_pixel_space_round_trip_with_per_channel_statistics():
    task = Classification(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    pixels = torch.rand(5, 3, 4, 4)
    data = task.from_pixels(pixels)
    assert torch.allclose(data[:, 1], (pixels[:, 1] - 0.4) / 0.25)
    assert torch.allclose(task.to_pixels(data), pixels, atol=1e-6)
    assert Classification().to_pixels(pixels) is pixels  # no normalisation: the same tensor


def test_pixel_model_normalises_before_the_model():
    task = Classification(mean=[0.5], std=[0.5])
    seen = []
    model = lambda x: seen.append(x) or x.flatten(1)  # noqa: E731
    task.pixel_model(model)(torch.ones(2, 1, 2, 2))
    assert torch.equal(seen[0], torch.ones(2, 1, 2, 2))  # (1 - 0.5) / 0.5


@pytest.mark.parametrize(
    ("output", "received"),
    [
        ({"logits": torch.zeros(2, 3)}, "a dict with keys \\['logits'\\]"),
        ((torch.zeros(2, 3), torch.zeros(2)), "a tuple of 2 items"),
        (torch.zeros(2, 3, 1), r"a tensor of shape \(2, 3, 1\)"),
        (torch.zeros(3, 3), r"a tensor of shape \(3, 3\)"),
    ],
)
def test_non_logit_outputs_get_a_type_error_that_explains_the_fix(output, received):
    with pytest.raises(TypeError, match=f"returned {received}.*Make forward\\(\\) return the logits"):
        Classification().logits(lambda x: output, torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mean": [0.5]}, ValueError, "mean and std must be given together"),
        ({"mean": [0.5], "std": [0.0]}, ValueError, "std must be positive"),
        ({"mean": [0.5, 0.5], "std": [1.0, 1.0, 1.0]}, ValueError, "same length"),
        ({"input_range": (1.0, 0.0)}, ValueError, "input_range must be a pair"),
        ({"input_key": 1.5}, TypeError, "input_key must be an int"),
        ({"mean": [float("nan")], "std": [1.0]}, ValueError, "mean must be a finite number"),
    ],
)
def test_bad_configuration(kwargs, error, message):
    with pytest.raises(error, match=message):
        Classification(**kwargs)


# -- inputs the task cannot read as pixels are refused (at fit start, through the monitors) ---------


def test_images_outside_the_pixel_range_are_refused_naming_the_cure():
    normalised = (torch.rand(8, 3, 4, 4) - 0.5) / 0.25  # [-2, 2]
    assert Classification(mean=[0.5], std=[0.25]).check_inputs(normalised) is None
    assert "looks normalised" in Classification().check_inputs(normalised)
    assert "Classification(mean=[...], std=[...])" in Classification().check_inputs(normalised)
    assert "do not undo" in Classification(mean=[0.5], std=[2.0]).check_inputs(normalised)
    assert Classification(input_range=(-2.0, 2.0)).check_inputs(normalised) is None
    assert Classification().check_inputs(torch.rand(8, 3, 4, 4)) is None
    assert Classification().check_inputs([torch.rand(3, 4, 5), torch.rand(3, 2, 2)]) is None  # ragged
    assert "outside" in Classification().check_inputs([torch.rand(3, 4, 5), torch.rand(3, 2, 2) + 1.5])


def test_integer_images_are_refused_saying_how_to_convert_them():
    reason = Classification(input_range=(0, 255)).check_inputs(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8))
    assert "torch.uint8" in reason and "ToDtype(torch.float32, scale=True)" in reason
