"""NeuronAnalysis inside real Lightning runs: tags, pictures, values equal to the functions, state, bad input."""

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, StateBracket, digits_task, make_trainer, read_events, train_digits

from compass_lightning import NeuronAnalysis
from compass_lightning.neurons import coverage, neuron_sensitivity, paper_fraction, select_layers, sensitive_fraction

LAYERS = ["net.0", "net.3", "net.7", "net.11"]


def _fit(tmp_path, monitor, *, epochs=2, callbacks=None, **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, callbacks or [monitor], epochs=epochs, **kwargs)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return trainer


def test_fit_logs_every_tag_every_epoch_and_the_pictures(tmp_path):
    monitor = NeuronAnalysis(task=digits_task(), probe_size=64, profile_size=200, images_every_n=1)
    trainer = _fit(tmp_path, monitor, epochs=3)
    assert monitor.error_count == 0
    tags = monitor.expected_tags()
    assert "compass/neurons/coverage/kmnc/net.7" in tags and "compass/neurons/deviation/net.3/gap" in tags
    assert not any("net.11" in t for t in tags if "/deviation/" in t)  # Grad-CAM only at convolutions
    events = read_events(trainer.logger.log_dir)
    for tag in tags:
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 3, tag
        if tag.endswith("top10_stability"):  # needs a previous evaluation: NaN at the first
            assert math.isnan(values[0])
            values = values[1:]
        assert all(math.isfinite(v) for v in values), tag
        if "deviation" not in tag:
            assert all(0 <= v <= 1 for v in values), tag
    images = set(events.Tags()["images"])
    assert {"compass/neurons/sensitivity/layers_by_epoch", "compass/neurons/deviation/similarity",
            "compass/neurons/deviation/gradcam", "compass/neurons/deviation/strengths",
            "compass/neurons/deviation/compromised_layers"} <= images
    assert {f"compass/neurons/deviation/strength_{k}/compromise_probability" for k in ("0.25", "0.5", "1", "2", "4")} <= set(tags)
    grids = events.Images("compass/neurons/sensitivity/layers_by_epoch")
    assert len(grids) == 3


def test_logged_values_equal_the_functions_on_the_probe(tmp_path):
    task = digits_task()
    monitor = NeuronAnalysis(task=task, probe_size=48, criteria=["nc", "tknc"], excitability=False, deviation=False,
                             batch_size=16, draws=2)
    trainer = _fit(tmp_path, monitor, epochs=1)
    model = trainer.lightning_module.eval()
    x = monitor._probe.inputs
    logged = monitor.history[-1]["metrics"]
    expected = coverage(model, x.split(16), criteria=["nc", "tknc"])
    for criterion in ("nc", "tknc"):
        assert logged[f"compass/neurons/coverage/{criterion}"] == pytest.approx(expected[criterion]["total"].item())
        for layer in LAYERS:
            assert logged[f"compass/neurons/coverage/{criterion}/{layer}"] == pytest.approx(expected[criterion][layer].item())
    # sensitivity of the whole probe at once with the callback's noise draws: the same fractions
    normal = torch.randn((len(x), 2, *x.shape[1:]), generator=monitor.generator("sensitivity"))
    per_input = neuron_sensitivity(task.pixel_model(model), task.to_pixels(x), draws=2, normal=normal)
    scores = {layer: per_input[layer].mean(dim=0) for layer in LAYERS}
    for form, fractions in (("fraction", paper_fraction(per_input)), ("scaled_fraction", sensitive_fraction(scores))):
        assert logged[f"compass/neurons/sensitivity/{form}"] == pytest.approx(fractions["total"].item())
        for layer in LAYERS:
            assert logged[f"compass/neurons/sensitivity/{form}/{layer}"] == pytest.approx(fractions[layer].item())


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_the_model_is_left_as_found(tmp_path, stage):
    bracket = StateBracket()
    monitor = NeuronAnalysis(task=digits_task(), probe_size=24, profile_size=64)
    trainer = make_trainer(tmp_path, bracket.around(monitor), epochs=2)
    if stage == "fit":
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    else:
        (results,) = trainer.validate(train_digits(epochs=1), datamodule=DigitsDataModule(), verbose=False)
        assert 0 <= results["compass/neurons/coverage/nc"] <= 1
    assert bracket.checked == (3 if stage == "fit" else 1) and monitor.error_count == 0
    assert all(not m._forward_hooks for m in trainer.lightning_module.modules())


def test_resume_keeps_the_previous_top_neurons(tmp_path):
    monitor = NeuronAnalysis(task=digits_task(), probe_size=32, profile_size=64, deviation=False)
    _fit(tmp_path, monitor, epochs=1)
    restored = NeuronAnalysis(task=digits_task(), probe_size=32, profile_size=64, deviation=False)
    restored.load_state_dict(monitor.state_dict())
    assert restored._previous_top == monitor._previous_top and len(restored._previous_top) == 10


def test_an_unknown_layer_fails_before_training(tmp_path):
    monitor = NeuronAnalysis(layers=["net.0", "head"], task=digits_task())
    model = DigitsClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="layers: the model has no layer 'head'; its layers: net, net.0"):
        make_trainer(tmp_path, [monitor]).fit(model, datamodule=DigitsDataModule())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_named_layers_are_read_as_they_are(tmp_path):
    monitor = NeuronAnalysis(layers=["net.2", "net.11"], task=digits_task(), probe_size=16, profile_size=32, deviation=True)
    _fit(tmp_path, monitor, epochs=1, logger=False)
    assert monitor.error_count == 0
    assert list(select_layers(DigitsClassifier(), ["net.2", "net.11"])) == ["net.2", "net.11"]
    assert "compass/neurons/deviation/net.2/gap" in monitor.history[-1]["metrics"]  # a ReLU over feature maps


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"threshold": 1.5}, ValueError, r"threshold must be a number in \[0.0, 1.0\]"),
        ({"threshold": -0.1}, ValueError, r"threshold must be a number in \[0.0, 1.0\]"),
        ({"sensitivity_threshold": 2}, ValueError, r"sensitivity_threshold must be a number in \[0.0, 1.0\]"),
        ({"sections": 0}, ValueError, "sections must be an integer >= 1"),
        ({"top_k": 0}, ValueError, "top_k must be an integer >= 1"),
        ({"criteria": ["nc", "dsc"]}, ValueError, "criteria: unknown criterion 'dsc'; choose from: nc, kmnc"),
        ({"criteria": []}, ValueError, "criteria: unknown criterion None"),
        ({"criteria": "nc"}, TypeError, "criteria must be a list"),
        ({"layers": "net.0"}, TypeError, "layers must be None or a non-empty list of module names"),
        ({"layers": []}, TypeError, "layers must be None or a non-empty list"),
        ({"sigma": 0}, ValueError, r"sigma must be a number in \(0.0, inf\]"),
        ({"draws": 0}, ValueError, "draws must be an integer >= 1"),
        ({"profile_size": 0}, ValueError, "profile_size must be an integer >= 1"),
        ({"attack": "jsma"}, ValueError, "attack: unknown attack 'jsma'"),
        ({"eps": -1}, ValueError, "eps must be a number"),
        ({"excitability": 1}, TypeError, "excitability must be True or False"),
    ],
)
def test_bad_input_raises_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        NeuronAnalysis(**kwargs)
