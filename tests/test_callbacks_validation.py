"""DeepValidation inside real Lightning runs: tags, kept strengths, values equal to the functions, bad input."""

import math
import sys

import pytest
from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer, read_events

import compass_lightning as cl
from compass_lightning import DeepValidation
from compass_lightning.neurons.validation import TRANSFORMS, detection_auc, fit_validator


def _monitor(**kwargs):
    return DeepValidation(**{"transforms": ["rotation", "complement"], "attacks": ["fgsm"], "eps": 0.3, "task": digits_task(),
                             "probe_size": 64, "fit_size": 300, **kwargs})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    monitor = _monitor(images_every_n=1)
    trainer = make_trainer(tmp_path_factory.mktemp("validation"), [monitor], epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    return monitor, trainer


def test_every_tag_every_epoch_with_the_strengths_chosen_once(fitted):
    monitor, trainer = fitted
    assert monitor.error_count == 0
    tags = monitor.expected_tags()
    assert {"compass/validation/auc", "compass/validation/rotation/strength", "compass/validation/fgsm/auc"} <= set(tags)
    assert any(t.startswith("compass/validation/layer/") for t in tags) and len(tags) == 1 + 6 + 3 + 1
    events = read_events(trainer.logger.log_dir)
    for name in tags:
        values = [e.value for e in events.Scalars(name)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        if name.endswith("/auc") or name.endswith("success_rate"):
            assert all(0 <= v <= 1 for v in values), name
    strengths = [e.value for e in events.Scalars("compass/validation/rotation/strength")]
    assert strengths[0] == strengths[1] == monitor.strengths["rotation"]  # kept, so the epochs compare
    assert len(events.Images("compass/validation/discrepancy")) == 2


def test_the_logged_auc_equals_the_functions_on_the_same_samples(fitted):
    monitor, trainer = fitted
    model, task = trainer.lightning_module.eval(), monitor.task
    fit = monitor.training_sample(trainer, 300, None, argument="fit_data")
    space = task.space_model(model, fit.inputs)
    validator = fit_validator(space, task.to_space(fit.inputs, model), fit.targets)
    x, y = task.to_space(monitor._probe.inputs, model), monitor._probe.targets
    clean = validator.discrepancy(space, x)
    correct = clean.predicted == y
    seeds, labels = x[correct], y[correct]
    corner = validator.discrepancy(space, TRANSFORMS["rotation"][0](seeds, monitor.strengths["rotation"]))
    expected = detection_auc(clean.total[correct], corner.total[corner.predicted != labels])
    assert monitor.history[-1]["metrics"]["compass/validation/rotation/auc"] == pytest.approx(expected, abs=1e-6)


def test_bad_settings_are_refused_before_training(monkeypatch):
    with pytest.raises(ValueError, match="transforms: unknown transform 'blur'; choose from: brightness"):
        DeepValidation(transforms=["blur"])
    with pytest.raises(ValueError, match="strengths: 'scale' is not among the transforms"):
        DeepValidation(transforms=["rotation"], strengths={"scale": 0.5})
    with pytest.raises(ValueError, match="nu"):
        DeepValidation(nu=0)
    with pytest.raises(ValueError, match="DeepValidation.*image transforms"):
        DeepValidation(task=cl.TextClassification(pad_id=0))
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*\(-1.0, 1.0\)"):
        DeepValidation(task=cl.Classification(input_range=(-1.0, 1.0)))
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    with pytest.raises(ImportError, match=r"compass-lightning\[validation\]"):
        DeepValidation()


def test_the_compass_hosts_it_off_by_default():
    assert "validation" not in cl.Compass().modules
    compass = cl.Compass(validation={"transforms": ["scale"]})
    assert compass.modules["validation"].transforms == ["scale"]
