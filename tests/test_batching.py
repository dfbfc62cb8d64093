"""The batch size chosen when the user gives none: from the model's activations and the device."""

import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, digits_task, make_trainer
from torch import nn

from compass_lightning import MutationMetrics
from compass_lightning.engine.batching import BOUNDS, CPU_ACTIVATION_BUDGET, activation_bytes, auto_batch_size


def conv_net(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, 10)).eval()


def test_activation_sizes_are_those_of_one_sample():
    net = conv_net(8)
    largest, total = activation_bytes(net, net, torch.rand(5, 3, 16, 16))
    per_map = 8 * 16 * 16 * 4  # conv and ReLU outputs
    assert largest == per_map and total == 2 * per_map + 2 * 8 * 4 + 10 * 4


@pytest.mark.parametrize("channels", [1, 8, 64, 512])
def test_on_a_cpu_the_largest_activation_of_a_batch_stays_within_the_budget(channels):
    net = conv_net(channels)
    x = torch.rand(2, 3, 32, 32)
    size = auto_batch_size(net, net, x)
    largest, _ = activation_bytes(net, net, x)
    low, high = BOUNDS["cpu"]
    assert low <= size <= high and size & (size - 1) == 0  # a power of two within bounds
    assert size == low or size * largest <= CPU_ACTIVATION_BUDGET  # within budget unless at the floor
    assert size == high or 2 * size * largest > CPU_ACTIVATION_BUDGET  # and the largest such power of two


def test_wider_models_get_smaller_batches():
    sizes = [auto_batch_size(net, net, torch.rand(1, 3, 32, 32)) for net in map(conv_net, (1, 16, 64))]
    assert sizes[0] > sizes[1] > sizes[2]


def test_the_hooks_are_removed_even_when_the_forward_fails():
    net = conv_net(4)

    def broken(x):
        net(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        activation_bytes(net, broken, torch.rand(1, 3, 8, 8))
    assert all(not m._forward_hooks for m in net.modules())


def test_a_callback_without_batch_size_chooses_one_and_logs_what_a_fixed_size_logs(tmp_path):
    results = []
    for batch_size in (None, 7):
        torch.manual_seed(0)
        monitor = MutationMetrics(task=digits_task(), mutations=["noise", "contrast"], batch_size=batch_size, probe_size=100)
        trainer = make_trainer(tmp_path / str(batch_size), [monitor], epochs=1, logger=False)
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        results.append(monitor.history[-1]["metrics"])
        if batch_size is None:
            assert monitor._auto_batch_size == 1024  # the CPU cap: the largest activation is 32 x 8 x 8 floats
    assert results[0].keys() == results[1].keys()
    for tag, value in results[0].items():
        assert value == pytest.approx(results[1][tag], abs=1e-5), tag


def test_the_gradient_chunk_is_measured_once_per_architecture_and_input_shape(monkeypatch):
    from compass_lightning.engine import batching

    monkeypatch.setattr(batching, "_CALIBRATED", {})
    net = conv_net(4)
    forwards = []
    net.register_forward_pre_hook(lambda module, inputs: forwards.append(len(inputs[0])))
    x, target = torch.rand(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)
    chosen = batching.gradient_rows(net, x, target, 64)
    assert chosen in batching.candidate_sizes(64, x.device)
    assert sorted(set(forwards)) == sorted(batching.candidate_sizes(64, x.device))  # every candidate measured
    forwards.clear()
    assert batching.gradient_rows(conv_net(4), x, target, 64) == chosen and not forwards  # another copy: cached
    batching.gradient_rows(net, torch.rand(8, 3, 16, 16), target, 64)
    assert forwards  # another input shape: measured again


@pytest.mark.parametrize("auto_batch", [True, False])
def test_integrated_gradients_take_the_measured_chunk_only_when_the_rule_chose_the_batch(monkeypatch, auto_batch):
    from compass_lightning.attribution import scoring
    from compass_lightning.engine.evaluation import Evaluation
    from compass_lightning.engine.probe import ProbeSet
    from compass_lightning.tasks import Classification

    monkeypatch.setattr(scoring, "gradient_rows", lambda model, x, target, size, agree=None: 64)
    net = conv_net(4)
    largest = [0]
    net.register_forward_pre_hook(lambda module, inputs: largest.__setitem__(0, max(largest[0], len(inputs[0]))))
    probe = ProbeSet(torch.rand(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))
    evaluation = Evaluation(net, probe, Classification(), batch_size=16, auto_batch=auto_batch)
    params = {"steps": 32, "method": "gausslegendre", "internal_batch_size": None, "baseline": 0.0}
    scoring.score_probe(evaluation, "integrated_gradients", params, torch.Generator().manual_seed(0), steps=4)
    assert largest[0] == (64 if auto_batch else 16)  # 8 samples x 32 steps, in forwards of that many rows
