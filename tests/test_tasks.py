"""The task-adapter interface: a new modality is a new adapter, with no callback code touched for it.

``Tabular`` below is written against :class:`compass_lightning.tasks.Task` only (it does not derive
from ``Classification``): ``(N, F)`` feature vectors in ``[0, 1]``, where only the Gaussian-noise
mutant and FGSM in feature space apply. ``MutationMetrics`` and ``AttackSuccessRate`` run on it in a
real fit, and refuse what it refuses before training.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import assert_monitor_ran, make_trainer, read_events
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import compass_lightning as cl
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.engine.probe import ProbeSet
from compass_lightning.mutation import MUTATIONS, mutate
from compass_lightning.reporting.figures import adversarial_grid
from compass_lightning.tasks import Task

FEATURES = 6


class Tabular:
    """Binary classification of feature vectors in [0, 1]; the perturbation space is feature space."""

    input_range = (0.0, 1.0)
    metric_names = ("accuracy", "loss")
    applies = {"mutation": {"noise"}, "attack": {"fgsm"}}

    def split(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return batch[0], batch[1]

    mutations = MUTATIONS  # the generic mutants; refusal() keeps only noise
    default_mutations = ("noise",)

    def to_space(self, x: Tensor, model: nn.Module) -> Tensor:
        return x

    def baseline(self, x: Tensor, value: float) -> float:
        return value

    adversarial_metrics = ()  # an adversarial feature vector is a real input
    budgets = {"linf": 0.2, "l2": 0.5}  # in feature units

    def project(self, x_adv: Tensor, x: Tensor, targets: Tensor, model: nn.Module) -> dict[str, Tensor]:
        return {}

    def mutate(self, name: str, x: Tensor, targets: Tensor, *, classes: int, generator, **params):
        return mutate(name, x, targets, num_classes=classes, generator=generator, bounds=self.input_range, **params)

    def outputs(self, model: nn.Module, x: Tensor) -> Tensor:
        return model(x)

    def space_model(self, model: nn.Module, x: Tensor) -> nn.Module:
        return model

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(outputs, targets)

    def predictions(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=1)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.predictions(outputs) == targets.to(outputs.device)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        targets = targets.to(outputs.device)
        return {"accuracy": self.correct(outputs, targets).float().mean(), "loss": self.loss(outputs, targets)}

    def classes(self, outputs: Tensor) -> int:
        return outputs.shape[1]

    def overview(self, outputs: Tensor, targets: Tensor, title: str) -> None:
        return None

    def refusal(self, kind: str, name: str) -> str | None:
        if kind in self.applies and name not in self.applies[kind]:
            return f"feature vectors have no {name}; this task supports {sorted(self.applies[kind])}"
        return None

    def check_inputs(self, x: Tensor) -> None:
        return None  # any feature vector

    def read_targets(self, targets: Tensor) -> Tensor:
        return targets  # integer classes already

    def check_targets(self, targets: Tensor, outputs: Tensor) -> None:
        return None

    def positions(self, x: Tensor) -> None:
        return None  # no sequence positions

    def perturbable(self, x: Tensor) -> None:
        return None  # every feature

    def display(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1).view(len(x), 1, 1, -1)  # one row of grey pixels per sample

    def show(self, x: Tensor) -> Tensor:
        return self.display(x)

    def attribution_figure(self, x, attributions, predicted, targets, title):
        return None  # no attribution picture for feature vectors

    def attribution_text(self, x, attributions, predicted, targets):
        return None

    def adversarial_figure(self, x, adversarial, targets, predicted, title, model):
        return adversarial_grid(self.display, self.input_range, x, adversarial, targets, predicted, title)


def blobs(n: int, seed: int) -> TensorDataset:
    """Two Gaussian blobs in feature space, squashed into [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, FEATURES, generator=generator) * 0.6 + (y[:, None] * 2.0 - 1.0)
    return TensorDataset(torch.sigmoid(x), y)


class TabularNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(blobs(256, 0), batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(blobs(96, 1), batch_size=32)


def test_the_toy_adapter_implements_the_interface():
    assert isinstance(Tabular(), Task) and not issubclass(Tabular, cl.Classification)


def test_a_new_adapter_runs_mutation_metrics_and_attack_success_rate_in_a_fit(tmp_path):
    mutation = cl.MutationMetrics(mutations={"noise": {"sigma": 0.3}}, task=Tabular(), image_count=4)
    attacks = cl.AttackSuccessRate(attacks=["fgsm"], eps=0.2, task=Tabular(), image_count=4)
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [mutation, attacks], epochs=2)
    trainer.fit(TabularNet())
    for monitor, required in ((mutation, ("compass/basic/accuracy", "compass/mutation/noise/accuracy_drop")),
                              (attacks, ("compass/robustness/fgsm/asr", "compass/robustness/fgsm/mean_linf"))):
        assert_monitor_ran(monitor, *required)
        assert len(monitor.history) == 2
    metrics = mutation.history[-1]["metrics"]
    assert metrics["compass/basic/accuracy"] > 0.9  # the blobs are easy: the adapter's own accuracy is read
    assert metrics["compass/mutation/noise/accuracy"] < metrics["compass/basic/accuracy"]  # sigma 0.3 hurts
    robustness = attacks.history[-1]["metrics"]
    assert 0 < robustness["compass/robustness/fgsm/asr"] <= 1
    assert robustness["compass/robustness/fgsm/mean_linf"] == pytest.approx(0.2, abs=1e-5)  # eps in feature units
    images = read_events(trainer.logger.log_dir).Tags()["images"]
    assert {"compass/mutation/examples", "compass/robustness/examples"} <= set(images)  # drawn with Tabular.display


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: cl.MutationMetrics(mutations=["noise", "brightness"], task=Tabular()),
         r"mutations: 'brightness' does not apply to .*feature vectors have no brightness"),
        (lambda: cl.AttackSuccessRate(attacks=["fgsm", "pgd"], task=Tabular()),
         r"attacks: 'pgd' does not apply to .*supports \['fgsm'\]"),
        (lambda: cl.Compass(task=Tabular(), mutation={"mutations": ["noise", "contrast"]}),
         r"mutation: mutations: 'contrast' does not apply"),
        (lambda: cl.Compass(task=Tabular(), robustness={"transfer_from": ["snapshot"], "transfer_attacks": ["mifgsm"]}),
         r"robustness: transfer_attacks: 'mifgsm' does not apply"),
    ],
)
def test_what_an_adapter_refuses_fails_at_construction_with_its_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_what_does_not_apply_is_left_out_of_the_defaults_with_one_warning_giving_the_reason():
    with pytest.warns(cl.CompassWarning, match=r"left out of the default attacks, .*'pgd' \(feature vectors have no pgd"):
        compass = cl.Compass(task=Tabular(), robustness={"transfer_from": ["snapshot"]})
    assert list(compass.modules["mutation"].mutations) == ["noise"]  # the task's default mutants
    assert list(compass.modules["robustness"].attacks) == ["fgsm"] and not compass.modules["robustness"].transfer_attacks
    assert list(compass.modules["pruning"].attacks) == ["fgsm"]
    assert not any("/pgd/" in t or "transfer" in t for t in compass.expected_tags())


def test_an_object_that_is_not_an_adapter_is_refused_naming_what_it_lacks():
    with pytest.raises(TypeError, match=r"task must be a task adapter .* lacks .*space_model"):
        cl.MutationMetrics(task=object())


def test_per_sample_gathers_dicts_key_by_key_and_ragged_lists_in_probe_order():
    probe = ProbeSet(torch.arange(10.0).view(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    evaluation = Evaluation(nn.Linear(2, 2), probe, Tabular(), batch_size=2)
    rows = evaluation.per_sample(lambda x, y: {"sum": x.sum(1), "label": y}, probe.inputs, probe.targets)
    assert rows["sum"].tolist() == [1.0, 5.0, 9.0, 13.0, 17.0] and rows["label"].tolist() == [0, 1, 0, 1, 0]
    # ragged: one object per sample, e.g. a variable number of detections
    ragged = evaluation.per_sample(lambda x: [row[: int(row[0]) % 3] for row in x], probe.inputs)
    assert [len(r) for r in ragged] == [0, 2, 1, 0, 2]


def test_feature_vectors_under_the_image_adapter_skip_their_pictures_once_and_fail_nothing(tmp_path):
    # the default image_count with tabular data: the analyses run, the pictures are left out, said once
    mutation = cl.MutationMetrics(mutations={"noise": {"sigma": 0.3}}, task=cl.Classification())
    attacks = cl.AttackSuccessRate(attacks=["fgsm"], eps=0.2, task=cl.Classification())
    pl.seed_everything(0)
    with pytest.warns(UserWarning, match=r"inputs of shape \(6,\) per sample are not images") as caught:
        make_trainer(tmp_path, [mutation, attacks], epochs=2).fit(TabularNet())
    assert sum("are not images" in str(w.message) for w in caught) == 2  # once per adapter, not per evaluation
    assert_monitor_ran(mutation, "compass/mutation/noise/accuracy")  # compass/errors == 0: no failure counted
    assert_monitor_ran(attacks, "compass/robustness/fgsm/asr")
