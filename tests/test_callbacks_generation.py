"""NeuronAnalysis(test_generation=...): DeepSensor's swarm on its own schedule in a real fit, equal to the function."""

import pytest
from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer, read_events

import compass_lightning as cl
from compass_lightning import NeuronAnalysis
from compass_lightning.callbacks._generation import DEFAULTS, generation_tags
from compass_lightning.neurons import generate_tests

SETTINGS = {"seeds": 6, "particles": 4, "generations": 3, "every_n_epochs": 2}


def _monitor(**settings):
    return NeuronAnalysis(task=digits_task(), probe_size=32, profile_size=64, excitability=False, deviation=False,
                          test_generation={**SETTINGS, **settings}, images_every_n=1)


def test_the_swarm_runs_on_its_own_schedule_and_logs_what_the_function_finds(tmp_path):
    monitor = _monitor()
    trainer = make_trainer(tmp_path, [monitor], epochs=3)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    assert monitor.error_count == 0
    runs = [r["epoch"] for r in monitor.history if "compass/neurons/generation/error_rate" in r["metrics"]]
    assert runs == [0, 2]  # the first evaluation, then every second
    events = read_events(trainer.logger.log_dir)
    assert {t: len(events.Scalars(t)) for t in generation_tags()} == {t: 2 for t in generation_tags()}
    assert len(events.Images("compass/neurons/generation/examples")) == 2
    # the last run equals the pure function on the probe's first seeds, in pixel space
    model, task = trainer.lightning_module.eval(), monitor.task
    x, y = monitor._probe.inputs[:6], monitor._probe.targets[:6]
    found = generate_tests(task.space_model(model, x), task.to_space(x, model), y, particles=4, generations=3, seed=monitor.seed)
    logged = monitor.history[-1]["metrics"]
    assert logged["compass/neurons/generation/error_rate"] == pytest.approx(found.error_rate.item())
    assert logged["compass/neurons/generation/errors_found"] == pytest.approx(found.errors_found.float().mean().item())
    assert logged["compass/neurons/generation/mean_fitness"] == pytest.approx(found.fitness[:, -1].mean().item())
    assert 0 < logged["compass/neurons/generation/mean_fitness"] <= 1


def test_off_by_default_and_the_settings_are_checked_before_training():
    assert NeuronAnalysis().test_generation is None
    assert NeuronAnalysis(test_generation={}).test_generation == DEFAULTS
    with pytest.raises(ValueError, match="test_generation: unknown setting 'swarm'; choose from: seeds"):
        NeuronAnalysis(test_generation={"swarm": 3})
    with pytest.raises(ValueError, match=r"test_generation\['norm'\]"):
        NeuronAnalysis(test_generation={"norm": "l1"})
    with pytest.raises(ValueError, match=r"test_generation\['bound'\]"):
        NeuronAnalysis(test_generation={"bound": 0})
    with pytest.raises(TypeError, match="test_generation must be None or a dict"):
        NeuronAnalysis(test_generation=True)


def test_a_text_model_refuses_the_swarm_with_the_reason():
    with pytest.raises(ValueError, match="test_generation.*input space"):
        NeuronAnalysis(task=cl.TextClassification(pad_id=0), test_generation={})


def test_the_compass_passes_the_settings_to_its_neuron_module():
    compass = cl.Compass(neurons={"test_generation": {"seeds": 4}})
    assert compass.modules["neurons"].test_generation["seeds"] == 4
