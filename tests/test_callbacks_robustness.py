"""AttackSuccessRate inside real Lightning runs: logged values, sweeps, transfer, checkpoints, bad input."""

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import (
    DigitsClassifier,
    DigitsDataModule,
    StateBracket,
    digits_task,
    make_trainer,
    read_events,
    train_digits,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from compass_lightning import AttackSuccessRate, Classification
from compass_lightning.attacks import run_attack
from compass_lightning.engine.guard import analysis_mode


def _fit(tmp_path, monitor, *, epochs=2, model=None, callbacks=(), **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [monitor, *callbacks], epochs=epochs, **kwargs)
    trainer.fit(model or DigitsClassifier(), datamodule=DigitsDataModule())
    return trainer


def test_fit_logs_every_tag_and_the_pictures(tmp_path):
    monitor = AttackSuccessRate(
        attacks=["fgsm", "pgd", "deepfool"], eps=[8 / 255, 2 / 255, 24 / 255], transfer_from=["snapshot"],
        snapshot_every=1, task=digits_task(), probe_size=64,
    )
    trainer = _fit(tmp_path, monitor, epochs=2)
    events = read_events(trainer.logger.log_dir)
    for tag in monitor.expected_tags():
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 2, tag
        if "transfer/snapshot" in tag:  # no earlier model to transfer from at the first evaluation
            assert math.isnan(values[0]) and math.isfinite(values[1]), tag
        else:
            assert all(math.isfinite(v) for v in values), tag
    assert {"compass/robustness/examples", "compass/robustness/eps_sweep"} <= set(events.Tags()["images"])
    assert "compass/robustness/pgd/eps_0.09412/asr" in monitor.expected_tags()  # 24/255


def test_logged_values_are_what_the_attack_functions_give(tmp_path):
    monitor = AttackSuccessRate(attacks=["fgsm"], eps=16 / 255, task=digits_task(), probe_size=100)
    trainer = _fit(tmp_path, monitor, epochs=1)
    model, probe, task = trainer.lightning_module, monitor._probe, digits_task()
    net = task.pixel_model(model)
    pixels = task.to_pixels(probe.inputs)
    with analysis_mode(model):
        clean = net(pixels).argmax(1) == probe.targets
        x_adv = run_attack("fgsm", net, pixels, probe.targets, eps=16 / 255)
        after = net(x_adv).argmax(1) == probe.targets
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert logged["compass/robustness/fgsm/robust_accuracy"] == pytest.approx(after.float().mean().item(), abs=1e-6)
    assert logged["compass/robustness/fgsm/asr"] == pytest.approx(((clean & ~after).sum() / clean.sum()).item(), abs=1e-6)
    assert logged["compass/robustness/fgsm/mean_linf"] == pytest.approx(16 / 255, abs=1e-4)
    assert logged["compass/robustness/mean_asr"] == logged["compass/robustness/fgsm/asr"]


def test_mean_asr_is_the_mean_over_the_white_box_attacks(tmp_path):
    # Two attacks of clearly different strength (about 0.09 and 0.43), so neither one's ASR equals
    # the mean; the transfer attack is not in it.
    monitor = AttackSuccessRate(
        attacks=["fgsm", "deepfool"], eps=3 / 255, eps_l2=0.3,
        transfer_from={"other": train_digits(epochs=1, seed=1)}, task=digits_task(), probe_size=96, image_count=0,
    )
    trainer = make_trainer(tmp_path, [monitor], logger=False)
    (logged,) = trainer.validate(train_digits(epochs=2), datamodule=DigitsDataModule(), verbose=False)
    asrs = [logged[f"compass/robustness/{name}/asr"] for name in ("fgsm", "deepfool")]
    assert abs(asrs[0] - asrs[1]) > 0.1, asrs
    assert logged["compass/robustness/mean_asr"] == pytest.approx(sum(asrs) / 2, abs=1e-6)
    assert math.isfinite(logged["compass/robustness/transfer/other/mifgsm/asr"])


def test_asr_rises_with_eps_and_a_snapshot_transfers_worse_than_white_box(tmp_path):
    monitor = AttackSuccessRate(
        attacks=["mifgsm"], eps=[16 / 255, 2 / 255, 6 / 255, 32 / 255], transfer_from=["snapshot"],
        transfer_attacks=["mifgsm"], snapshot_every=3, task=digits_task(), probe_size=128,
    )
    _fit(tmp_path, monitor, epochs=4)
    last = monitor.history[-1]["metrics"]
    rates = [last[f"compass/robustness/mifgsm/eps_{e:.4g}/asr"] for e in (2 / 255, 6 / 255, 16 / 255, 32 / 255)]
    assert rates == sorted(rates) and rates[-1] > rates[0] + 0.3, rates
    white, transfer = last["compass/robustness/mifgsm/asr"], last["compass/robustness/transfer/snapshot/mifgsm/asr"]
    assert transfer < white, (transfer, white)


def test_model_checkpoint_keeps_the_most_robust_epoch(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="compass/robustness/pgd/asr", mode="min")
    trainer = _fit(tmp_path, AttackSuccessRate(task=digits_task(), probe_size=64), epochs=3, callbacks=[checkpoint])
    logged = [e.value for e in read_events(trainer.logger.log_dir).Scalars("compass/robustness/pgd/asr")]
    assert checkpoint.best_model_score.item() == pytest.approx(min(logged))


class InputRecorder(DigitsClassifier):
    """Records what reaches the network during the monitor's evaluation."""

    seen: list

    def forward(self, x):
        if not self.training and torch.is_grad_enabled():  # inside the guard, during attacks
            self.seen.append(x.detach().clone())
        return super().forward(x)


def test_normalised_data_is_attacked_in_pixel_space(tmp_path):
    task = digits_task()
    model = InputRecorder()
    model.seen = []
    monitor = AttackSuccessRate(attacks=["fgsm"], eps=8 / 255, task=task, probe_size=32, batch_size=32, image_count=0)
    _fit(tmp_path, monitor, epochs=1, model=model)
    probe = monitor._probe.inputs
    attacked = [x for x in model.seen if x.shape == probe.shape]
    assert attacked, "the attack never reached the model"
    # data-space distance of the attacked inputs from the probe = eps / std, as pixel eps demands
    distance = (attacked[0] - probe).abs().max().item()
    assert distance <= 8 / 255 / task.std.item() + 1e-5
    assert attacked[0].min() < -0.5  # the model still sees normalised inputs (pixel 0 -> -0.81)


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_the_model_is_left_as_found(tmp_path, stage):
    bracket = StateBracket()
    monitor = AttackSuccessRate(attacks=["pgd", "deepfool", "naa", "ata", "ti_ata"], transfer_from=["snapshot"], task=digits_task(),
                                probe_size=32)
    trainer = make_trainer(tmp_path, bracket.around(monitor), epochs=2)
    if stage == "fit":
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    else:
        (results,) = trainer.validate(train_digits(epochs=1), datamodule=DigitsDataModule(), verbose=False)
        assert math.isfinite(results["compass/robustness/naa/asr"])
    assert bracket.checked == (3 if stage == "fit" else 1)  # fit: the sanity check, then 2 epochs
    assert monitor.error_count == 0


def test_a_surrogate_of_another_architecture(tmp_path):
    surrogate = train_digits(epochs=2, width=8, seed=1)
    monitor = AttackSuccessRate(
        attacks=["fgsm"], transfer_from=[surrogate, "snapshot"], transfer_attacks=["mifgsm", "ssa"],
        eps=16 / 255, task=digits_task(), probe_size=48,
    )
    trainer = _fit(tmp_path, monitor, epochs=1)
    for attack in ("mifgsm", "ssa"):
        assert 0 <= trainer.callback_metrics[f"compass/robustness/transfer/digitsclassifier/{attack}/asr"].item() <= 1
    assert not surrogate.training and not any(p.requires_grad for p in surrogate.parameters())  # as it was given


def test_resume_keeps_the_snapshot_surrogate(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    settings = {"attacks": ["fgsm"], "transfer_from": ["snapshot"], "snapshot_every": 10, "task": digits_task(), "probe_size": 32}
    _fit(tmp_path, AttackSuccessRate(**settings), epochs=2, callbacks=[checkpoint])
    resumed = AttackSuccessRate(**settings)
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [resumed], epochs=3)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert math.isfinite(resumed.history[-1]["metrics"]["compass/robustness/transfer/snapshot/mifgsm/asr"])
    assert resumed._snapshot_epoch == 0  # still the snapshot from the first run


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eps": -0.1}, ValueError, r"eps must be a number in \[0.0, inf\]"),
        ({"eps": [8 / 255, -1]}, ValueError, r"eps\[1\] must be a number"),
        ({"eps": []}, ValueError, "eps must be a number or a non-empty list of numbers"),
        ({"eps_l2": -1}, ValueError, "eps_l2 must be a number"),
        ({"attacks": {"pgd": {"steps": 0}}}, ValueError, "pgd.steps must be an integer >= 1"),
        ({"attacks": ["pgd", "nope"]}, ValueError, "attacks: unknown attack 'nope'; choose from: fgsm"),
        ({"attacks": []}, ValueError, "attacks must name at least one attack"),
        ({"transfer_attacks": ["bim"]}, ValueError, "transfer_attacks: unknown attack 'bim'"),
        ({"attacks": {"pgd": {"eps": 0.1}}}, ValueError, "has no parameter eps"),
        ({"task": Classification(input_range=(0.0, 1.0)), "transfer_from": ["snapshots"]}, ValueError, "neither an nn.Module nor 'snapshot'"),
        ({"transfer_from": "snapshot"}, TypeError, "transfer_from must be a list"),
        ({"snapshot_every": 0}, ValueError, "snapshot_every must be an integer >= 1"),
        ({"image_count": -2}, ValueError, "image_count must be an integer >= 0"),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        AttackSuccessRate(**kwargs)


def test_instances_with_other_settings_keep_separate_state():
    keys = {AttackSuccessRate(eps=e).state_key for e in (8 / 255, 4 / 255)} | {AttackSuccessRate(attacks=["fgsm"]).state_key}
    assert len(keys) == 3


def test_bounds_low_above_high_is_refused():
    with pytest.raises(ValueError, match="input_range must be a pair"):
        AttackSuccessRate(task=Classification(input_range=(1.0, 0.0)))


def test_an_unknown_layer_is_refused_before_training(tmp_path):
    monitor = AttackSuccessRate(attacks={"naa": {"layer": "net.99"}}, task=digits_task())
    with pytest.raises(ValueError, match=r"attacks: naa.layer: the model has no layer 'net.99'; its layers: net, net.0"):
        _fit(tmp_path, monitor)
