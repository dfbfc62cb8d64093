"""Deep Validation (neurons/validation.py): the discrepancy against scikit-learn directly, the detection
AUC on the digits model's corner cases, the grid search's closed form, the optional dependency."""

import sys

import pytest
import torch
from conftest import DigitsDataModule
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from compass_lightning.neurons import neuron_values, select_layers
from compass_lightning.neurons.validation import TRANSFORMS, choose_strength, detection_auc, fit_validator


@pytest.fixture(scope="module")
def digits_validation(trained_digits):
    model, x_val, y_val, task = trained_digits
    data = DigitsDataModule()
    data.setup()
    x_train, y_train = data.train_set.tensors
    pixel = task.pixel_model(model)
    return pixel, task.to_pixels(x_train), y_train, x_val, y_val, fit_validator(pixel, task.to_pixels(x_train), y_train)


def test_the_discrepancy_is_the_sum_of_minus_the_predicted_class_svm_decision_values(digits_validation):
    pixel, x_train, y_train, x_val, _, validator = digits_validation
    layers = select_layers(pixel, example=x_train[:1])
    hidden = list(layers)[:-1]
    assert validator.layers == hidden and len(hidden) == 3  # the logits layer is not validated
    seen = neuron_values(pixel, x_train, layers)
    correct = seen.logits.argmax(1) == y_train
    probe = neuron_values(pixel, x_val[:40], layers)
    predicted = probe.logits.argmax(1)
    expected = torch.zeros(40, dtype=torch.float64)
    for name in hidden:
        kept = seen.values[name][correct]
        mean, std = kept.mean(0), kept.std(0).clamp_min(1e-6)
        for k in predicted.unique().tolist():
            svm = OneClassSVM(nu=0.1, gamma="scale").fit(((kept[y_train[correct] == k] - mean) / std).double().numpy())
            rows = predicted == k
            expected[rows] -= torch.from_numpy(svm.decision_function(((probe.values[name][rows] - mean) / std).double().numpy()))
    found = validator.discrepancy(pixel, x_val[:40], batch_size=16)
    assert torch.equal(found.predicted, predicted)
    assert torch.allclose(found.total, expected, atol=1e-8)
    assert torch.allclose(found.total, sum(found.layers.values()))


@pytest.mark.parametrize("name", ["rotation", "scale", "complement"])
def test_successful_corner_cases_are_flagged_well_above_chance_and_above_random_scores(digits_validation, name):
    pixel, _, _, x_val, y_val, validator = digits_validation
    with torch.no_grad():
        correct = pixel(x_val).argmax(1) == y_val
    seeds, labels = x_val[correct][:200], y_val[correct][:200]
    strength, rate = choose_strength(pixel, seeds, labels, name)
    assert strength is not None and rate >= 0.3
    corner = TRANSFORMS[name][0](seeds, strength)
    clean_scores = validator.discrepancy(pixel, seeds).total
    found = validator.discrepancy(pixel, corner)
    successful = found.predicted != labels
    auc = detection_auc(clean_scores, found.total[successful])
    random = detection_auc(torch.rand(len(seeds), generator=torch.Generator().manual_seed(0)),
                           torch.rand(int(successful.sum()), generator=torch.Generator().manual_seed(1)))
    assert auc > 0.75 and auc > random + 0.2, (name, strength, rate, auc, random)


def test_detection_auc_equals_scikit_learn():
    clean, corner = torch.randn(50, generator=torch.Generator().manual_seed(0)), torch.randn(30, generator=torch.Generator().manual_seed(1)) + 1
    expected = roc_auc_score([0] * 50 + [1] * 30, torch.cat([clean, corner]).numpy())
    assert detection_auc(clean, corner) == pytest.approx(expected)
    assert detection_auc(clean, corner[:0]) != detection_auc(clean, corner[:0])  # NaN without positives


def test_the_grid_search_stops_at_the_first_strength_misclassifying_60_percent():
    """A classifier of mean brightness (class 1 above 0.5) on ten flat images of means 0.05 ... 0.41:
    brightness b misclassifies the seeds with mean + b > 0.5, so 6 of 10 first at b > 0.5 - 0.21."""

    class Bright(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], 1)

    means = torch.tensor([0.05 + 0.04 * i for i in range(10)])
    seeds = means.view(10, 1, 1, 1).expand(10, 1, 4, 4).clone()
    strength, rate = choose_strength(Bright(), seeds, torch.zeros(10, dtype=torch.long), "brightness")
    grid = TRANSFORMS["brightness"][1]
    assert strength == next(b for b in grid if b > 0.5 - float(means[4]) + 1e-9) and rate == pytest.approx(0.6)
    # a transform that never reaches the floor is dropped
    assert choose_strength(Bright(), seeds, torch.zeros(10, dtype=torch.long), "rotation")[0] is None


def test_without_scikit_learn_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    with pytest.raises(ImportError, match=r"compass-lightning\[validation\]"):
        fit_validator(torch.nn.Linear(2, 2), torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
