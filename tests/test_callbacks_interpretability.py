"""AttributionScores inside real Lightning runs: tags, chance baseline, pictures, state, bad input."""

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, StateBracket, digits_task, make_trainer, read_events, train_digits

from compass_lightning import AttributionScores
from compass_lightning.attribution import attribute, insertion_deletion
from compass_lightning.engine.guard import analysis_mode


def _fit(tmp_path, monitor, *, epochs=2, callbacks=(), **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [monitor, *callbacks], epochs=epochs, **kwargs)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return trainer


def test_fit_logs_every_method_the_chance_baseline_and_the_pictures(tmp_path):
    monitor = AttributionScores(
        methods=["saliency", "integrated_gradients", "gradcam", "agi"], every_n_epochs=1, task=digits_task(), probe_size=24,
        images_every_n=1,
    )
    trainer = _fit(tmp_path, monitor, epochs=3)
    events = read_events(trainer.logger.log_dir)
    for tag in monitor.expected_tags():
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), tag
        if not tag.endswith("minus_deletion"):
            assert all(0 <= v <= 1 for v in values), tag
    last = monitor.history[-1]["metrics"]
    chance = last["compass/interpretability/random/insertion_minus_deletion"]
    assert last["compass/interpretability/integrated_gradients/insertion_minus_deletion"] > chance + 0.2
    images = events.Tags()["images"]
    assert {"compass/interpretability/heatmaps", "compass/interpretability/insertion_curves",
            "compass/interpretability/deletion_curves"} <= set(images)
    heatmaps = events.Images("compass/interpretability/heatmaps")
    assert len(heatmaps) == 3 and heatmaps[0].width == heatmaps[-1].width  # the same grid every epoch


def test_logged_scores_are_those_of_the_functions(tmp_path):
    monitor = AttributionScores(methods=["integrated_gradients"], every_n_epochs=1, task=digits_task(), probe_size=16, steps=8)
    trainer = _fit(tmp_path, monitor, epochs=1)
    task, probe = digits_task(), monitor._probe
    net = task.pixel_model(trainer.lightning_module)
    x = task.to_pixels(probe.inputs)
    with analysis_mode(trainer.lightning_module):
        target = net(x).argmax(1)
        insertion, deletion, _ = insertion_deletion(net, x, attribute("integrated_gradients", net, x, target), steps=8)
    logged = trainer.callback_metrics
    assert logged["compass/interpretability/integrated_gradients/insertion"].item() == pytest.approx(insertion.mean().item(), abs=1e-5)
    assert logged["compass/interpretability/integrated_gradients/deletion"].item() == pytest.approx(deletion.mean().item(), abs=1e-5)


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_the_model_is_left_as_found(tmp_path, stage):
    bracket = StateBracket()
    monitor = AttributionScores(methods=["smoothgrad", "gradcam", "big", "guided_ig"], every_n_epochs=1, task=digits_task(), probe_size=8)
    trainer = make_trainer(tmp_path, bracket.around(monitor), epochs=2)
    if stage == "fit":
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    else:
        (results,) = trainer.validate(train_digits(epochs=1), datamodule=DigitsDataModule(), verbose=False)
        assert math.isfinite(results["compass/interpretability/big/insertion"])
    assert bracket.checked == (3 if stage == "fit" else 1) and monitor.error_count == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"methods": ["saliency", "nope"]}, ValueError, "methods: unknown attribution method 'nope'; choose from: saliency"),
        ({"methods": []}, ValueError, "methods must name at least one attribution method"),
        ({"steps": 1}, ValueError, "steps must be an integer >= 2"),
        ({"methods": {"integrated_gradients": {"steps": 0}}}, ValueError, "integrated_gradients.steps must be an integer >= 1"),
        ({"baseline": "grey"}, ValueError, "baseline must be one of zeros, blur"),
        ({"insertion_start": None}, ValueError, "insertion_start must be one of zeros, blur"),
        ({"image_count": -1}, ValueError, "image_count must be an integer >= 0"),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        AttributionScores(**kwargs)


def test_a_gradcam_layer_that_does_not_exist_is_refused_before_training(tmp_path):
    monitor = AttributionScores(methods={"gradcam": {"layer": "net.conv9"}}, task=digits_task())
    with pytest.raises(ValueError, match=r"methods: gradcam.layer: the model has no layer 'net.conv9'; its layers: net, net.0"):
        _fit(tmp_path, monitor)


def test_methods_that_clip_use_the_tasks_pixel_range():
    monitor = AttributionScores(methods=["agi", "big"], task=digits_task())
    assert monitor.methods["agi"]["bounds"] == (0.0, 1.0) and monitor.methods["big"]["bounds"] == (0.0, 1.0)
    from compass_lightning import Classification

    wide = AttributionScores(methods=["agi"], task=Classification(input_range=(0.0, 255.0)))
    assert wide.methods["agi"]["bounds"] == (0.0, 255.0)
