"""APGD, Square and the AutoAttack cascade against torchattacks; the gradient-masking checks; the monitor."""

import math
import warnings

import pytest
import torch
import torchattacks
from conftest import DigitsClassifier, digits_task, make_trainer, train_digits, DigitsDataModule
from torch import nn

from compass_lightning import AttackSuccessRate, CompassWarning
from compass_lightning.attacks import ATTACKS, cascade, run_attack
from compass_lightning.attacks.masking import (
    black_box_share,
    dynamic,
    masking_checks,
    probabilities,
    randomised,
    zero_gradient_share,
)
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.reporting.radar import axis_values

EPS = {"linf": 24 / 255, "l2": 1.0}


@pytest.fixture(scope="module")
def digits_batch(trained_digits):
    model, pixels, y, task = trained_digits
    return task.pixel_model(model), model, pixels[:64], y[:64]


def _robust(net, x, y):
    with torch.no_grad():
        return net(x).argmax(1) == y


APGD = [
    ("apgd_ce", {}, lambda m, r: torchattacks.APGD(m, norm="Linf", eps=EPS["linf"], steps=10, seed=0, loss="ce", n_restarts=r)),
    ("apgd_dlr", {}, lambda m, r: torchattacks.APGD(m, norm="Linf", eps=EPS["linf"], steps=10, seed=0, loss="dlr", n_restarts=r)),
    ("apgd_t", {"targets": 9}, lambda m, r: torchattacks.APGDT(m, norm="Linf", eps=EPS["linf"], steps=10, seed=0, n_classes=10, n_restarts=r)),
    ("apgd_ce_l2", {}, lambda m, r: torchattacks.APGD(m, norm="L2", eps=EPS["l2"], steps=10, seed=0, loss="ce", n_restarts=r)),
    ("apgd_dlr_l2", {}, lambda m, r: torchattacks.APGD(m, norm="L2", eps=EPS["l2"], steps=10, seed=0, loss="dlr", n_restarts=r)),
]


@pytest.mark.parametrize("restarts", [1, 2])
@pytest.mark.parametrize(("name", "params", "reference"), APGD, ids=[a[0] for a in APGD])
def test_apgd_equals_torchattacks_with_the_same_seed(name, params, reference, restarts, digits_batch):
    net, model, x, y = digits_batch
    expected = reference(net, restarts)(x, y)
    with analysis_mode(model):
        ours = run_attack(name, net, x, y, eps=EPS[ATTACKS[name].norm], generator=torch.Generator().manual_seed(0),
                          restarts=restarts, **params)
    assert torch.equal(ours, expected), (ours - expected).abs().max()
    clean, after = _robust(net, x, y), _robust(net, ours, y)
    assert after.float().mean() < clean.float().mean() - 0.2  # it broke a good share: the comparison has content


def test_apgd_t_l2_matches_torchattacks_robust_accuracy(digits_batch):
    """torchattacks' APGDT scales every L2 step by the first sample's step size (``step_size[0]``);
    ours keeps each sample's own, so the examples differ but the robust accuracy must agree."""
    net, model, x, y = digits_batch
    expected = _robust(net, torchattacks.APGDT(net, norm="L2", eps=EPS["l2"], steps=10, seed=0, n_classes=10)(x, y), y)
    with analysis_mode(model):
        ours = run_attack("apgd_t_l2", net, x, y, eps=EPS["l2"], generator=torch.Generator().manual_seed(0))
    assert abs(_robust(net, ours, y).float().mean() - expected.float().mean()) <= 2 / 64


@pytest.mark.parametrize("loss", ["margin", "ce"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_equals_torchattacks_with_the_same_seed(norm, loss, digits_batch):
    net, model, x, y = digits_batch
    name = "square" if norm == "linf" else "square_l2"
    expected = torchattacks.Square(net, norm="Linf" if norm == "linf" else "L2", eps=EPS[norm], n_queries=150, seed=0,
                                   loss=loss)(x, y)
    with analysis_mode(model):
        ours = run_attack(name, net, x, y, eps=EPS[norm], generator=torch.Generator().manual_seed(0), queries=150, loss=loss)
    assert torch.equal(ours, expected), (ours - expected).abs().max()
    assert _robust(net, ours, y).float().mean() < _robust(net, x, y).float().mean() - 0.1


def test_the_cascade_is_the_per_sample_worst_case_and_beats_each_attack_alone(digits_batch):
    net, model, x, y = digits_batch
    with analysis_mode(model):
        found = cascade(net, x, y, eps=4 / 255, generator=torch.Generator().manual_seed(0))
        alone = {
            "apgd_ce": run_attack("apgd_ce", net, x, y, eps=4 / 255, generator=torch.Generator().manual_seed(0), steps=20),
            "apgd_t": run_attack("apgd_t", net, x, y, eps=4 / 255, generator=torch.Generator().manual_seed(0), steps=20,
                                 targets=3),
            "square": run_attack("square", net, x, y, eps=4 / 255, generator=torch.Generator().manual_seed(0), queries=300),
        }
    clean, robust = _robust(net, x, y), _robust(net, found.adversarial, y)
    broken = torch.stack([found.rows[f"broken_by/{s}"] for s in ("apgd_ce", "apgd_t", "square")])
    assert torch.equal(robust, clean & ~broken.any(0))  # robust exactly where no stage broke it
    assert int(broken.sum(0).max()) <= 1  # each sample broken once, by the first stage that could
    assert (found.adversarial - x).abs().max() <= 4 / 255 + 1e-6 and 0 <= found.adversarial.min() <= found.adversarial.max() <= 1
    accuracies = {name: _robust(net, adv, y).float().mean() for name, adv in alone.items()}
    assert robust.float().mean() <= min(accuracies.values())
    assert torch.equal(found.rows["broken_by/apgd_ce"], clean & ~_robust(net, alone["apgd_ce"], y))  # the same first stage
    assert found.rows["passes"][0] > 2 * 20  # at least APGD-CE's 20 forward-backward passes per sample


# -- the gradient-masking checks: each fires on a model built to trigger it, none on a trained model --


class _Masked(nn.Module):
    """The digits model behind an input quantiser: zero gradients almost everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class _Noisy(_Masked):
    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


class _Softmax(_Masked):
    def forward(self, x):
        return self.net(x).softmax(1)


class _Purifier(_Masked):
    """An input-optimising defence: one gradient step inside the forward."""

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.net(z).logsumexp(1).sum(), z)
        return self.net(x - 0.01 * g.sign())


def test_each_masking_check_fires_on_its_model_and_none_on_a_trained_model(digits_batch):
    net, model, x, y = digits_batch
    with analysis_mode(model):
        assert not randomised(net, x) and randomised(_Noisy(net), x)
        assert not probabilities(net(x)) and probabilities(_Softmax(net)(x))
        assert float(zero_gradient_share(net, x, y)) == 0.0 and float(zero_gradient_share(_Masked(net), x, y)) > 0.9
        assert not dynamic(net, x[:4]) and dynamic(_Purifier(net), x[:4])
        clean = _robust(net, x, y)
        outcomes = {name: {"correct": _robust(net, run_attack(name, net, x, y, eps=EPS["linf"], queries=200)
                                              if name == "square" else run_attack(name, net, x, y, eps=EPS["linf"]), y)}
                    for name in ("pgd", "square")}
        assert masking_checks(net, x, y, clean, outcomes) == dict.fromkeys(
            ("randomised", "probabilities", "zero_gradients", "dynamic", "black_box"), False)
        masked = _Masked(net)
        clean = _robust(masked, x, y)
        outcomes = {"pgd": {"correct": _robust(masked, run_attack("pgd", masked, x, y, eps=EPS["linf"]), y)},
                    "square": {"correct": _robust(masked, run_attack("square", masked, x, y, eps=EPS["linf"], queries=200), y)}}
        fired = masking_checks(masked, x, y, clean, outcomes)
    assert fired["zero_gradients"] and fired["black_box"], fired
    assert float(black_box_share(clean, [outcomes["pgd"]["correct"]], [outcomes["square"]["correct"]])) > 0.1


def test_the_radar_scores_robustness_by_the_cascade_where_it_ran():
    metrics = {"compass/robustness/mean_asr": 0.1, "compass/robustness/autoattack/asr": 0.6}
    assert axis_values(metrics)["robustness"] == pytest.approx(0.4)
    assert axis_values({"compass/robustness/mean_asr": 0.1})["robustness"] == pytest.approx(0.9)


class _MaskedClassifier(DigitsClassifier):
    """A digits classifier that quantises its inputs (in training too): masked gradients."""

    def forward(self, x):
        return super().forward(torch.round(x * 2) / 2)


@pytest.mark.parametrize("masked", [False, True])
def test_the_monitor_logs_the_cascade_and_the_checks_and_warns_once_when_one_fires(tmp_path, masked):
    monitor = AttackSuccessRate(attacks={"pgd": None, "autoattack": None}, probe_size=48, image_count=0,
                                task=digits_task())
    assert {"compass/robustness/autoattack/broken_by/square", "compass/robustness/autoattack/passes",
            "compass/robustness/checks/black_box", "compass/robustness/checks/zero_gradients"} <= set(monitor.expected_tags())
    torch.manual_seed(0)
    model = _MaskedClassifier() if masked else DigitsClassifier()
    trainer = make_trainer(tmp_path, [monitor], epochs=2, logger=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=DigitsDataModule())
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in monitor.expected_tags():
        assert math.isfinite(logged[name]), name
    fired = [str(w.message) for w in caught if issubclass(w.category, CompassWarning) and "checks/" in str(w.message)]
    assert logged["compass/robustness/checks/zero_gradients"] == float(masked)
    if masked:
        assert sum("checks/zero_gradients" in m for m in fired) == 1  # once, though it fired at both epochs
        # PGD sees no gradient and reports the model robust; the cascade's worst case says otherwise
        assert logged["compass/robustness/autoattack/robust_accuracy"] < logged["compass/robustness/pgd/robust_accuracy"] - 0.2
    else:
        assert fired == []
    parts = sum(logged[f"compass/robustness/autoattack/broken_by/{s}"] for s in ("apgd_ce", "apgd_t", "square"))
    clean_correct = logged["compass/robustness/autoattack/robust_accuracy"] + parts  # every correct sample: robust or broken once
    assert 0 < clean_correct <= 1


def test_binary_models_are_told_to_use_apgd_ce_for_dlr():
    model = nn.Linear(4, 2)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="apgd_dlr needs a model with at least 3 classes"):
        run_attack("apgd_dlr", model, x, y, eps=0.1)
