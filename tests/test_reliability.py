"""What the monitors promise, one test (family) per promise, for every callback (and for the Compass on
token models: the TextCNN and AB-LSTM of ``text_models.py``).

1. Non-interference: training with the Compass is bit-identical to training without it (fp32, bf16-mixed,
   bf16-true, 64-true: the analyses run in fp32).
2. State: every flag, buffer, parameter, ``.grad`` and ``requires_grad`` is as before each evaluation.
3. DDP: see ``test_ddp.py`` (two processes log what one process logs, for every module).
4. Resume: a run resumed from a checkpoint logs the values of an uninterrupted run, at the same epochs;
   an end-of-fit analysis killed midway runs when the finished fit is resumed.
5. Fault isolation: a failing analysis, NaN logits, a device mismatch, a dict output: training
   completes, checkpoints are saved, one warning per cause, ``compass/errors`` counts; ``fail_fast`` raises.
   An undefined (NaN) tag that ``EarlyStopping`` watches never stops the run.
6. Bad input: 50+ invalid configurations raise ``ValueError``/``TypeError`` before training, naming the argument;
   targets a classifier cannot have are refused at fit start (``test_binary.py``).
7. Safe loading: histories and checkpoints are read without unpickling.
8. Memory: an evaluation's peak grows with the probe by a few probe-sized copies only.
9. Files: every file under the run's directory, crash-safe history appends, reports of hostile
   histories render or exit 2 (``test_report.py``, ``test_report_hostile.py``).
"""

import pickle
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import EVERY_MODULE, DigitsClassifier, DigitsDataModule, StateBracket, assert_monitor_ran, digits_task, make_trainer
from text_models import ABLSTM, TextCNN, text_compass
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn

from compass_lightning import (
    AttackSuccessRate,
    AttributionScores,
    Classification,
    Compass,
    CompassWarning,
    DeepValidation,
    MutationMetrics,
    NeuronAnalysis,
    PruningAnalysis,
    TextClassification,
)
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.reporting.history import read_history

SMALL_MODULES = {
    "mutation": {"mutations": ["noise", "contrast"]},
    "robustness": {"attacks": ["fgsm", "pgd"], "image_count": 2},
    "interpretability": {"methods": ["saliency", "gradcam"], "steps": 8, "every_n_epochs": 1, "probe_size": 8},
    "neurons": {"profile_size": 64, "image_count": 2},
    "pruning": {"methods": ["magnitude", "taylor"], "rates": [0.4], "sweep": [0.2], "joint_rates": [0.4],
                "attribution_steps": 8, "calibration_size": 32},
}
CALLBACKS = {  # each with small settings, so that the whole promise list runs in CI
    "MutationMetrics": lambda **kw: MutationMetrics(**SMALL_MODULES["mutation"], **{"probe_size": 48, **kw}),
    "AttackSuccessRate": lambda **kw: AttackSuccessRate(**SMALL_MODULES["robustness"], **{"probe_size": 48, **kw}),
    "AttackSuccessRate-autoattack": lambda **kw: AttackSuccessRate(  # APGD, Square, the cascade and its checks
        attacks={"apgd_dlr": None, "square": {"queries": 50}, "autoattack": None}, image_count=2, **{"probe_size": 32, **kw}
    ),
    "AttributionScores": lambda **kw: AttributionScores(
        **{k: v for k, v in SMALL_MODULES["interpretability"].items() if k != "probe_size"}, **{"probe_size": 8, **kw}
    ),
    "NeuronAnalysis": lambda **kw: NeuronAnalysis(**SMALL_MODULES["neurons"], **{"probe_size": 32, **kw}),
    "NeuronAnalysis-generation": lambda **kw: NeuronAnalysis(  # DeepSensor's swarm, every evaluation
        **SMALL_MODULES["neurons"], test_generation={"seeds": 4, "particles": 4, "generations": 2, "every_n_epochs": 1},
        **{"probe_size": 32, **kw}
    ),
    "PruningAnalysis": lambda **kw: PruningAnalysis(**SMALL_MODULES["pruning"], **{"probe_size": 32, **kw}),
    "DeepValidation": lambda **kw: DeepValidation(  # ε large enough that FGSM fools some seeds (else its AUC is undefined)
        transforms=["rotation", "complement"], attacks=["fgsm"], eps=0.3, fit_size=200, **{"probe_size": 32, **kw}
    ),
    # no time budget: which evaluations run under one depends on the clock (tests/test_budget.py)
    "Compass": lambda **kw: Compass(**{**SMALL_MODULES, "probe_size": 32, "budget": None, **kw}),
}
#: Evaluations in a 2-epoch fit: every epoch, pruning at the end, the Compass both.
EVALUATIONS = {name: 2 for name in CALLBACKS} | {"PruningAnalysis": 1, "Compass": 3, "Compass-text": 3}


#: The cases of the promises 2, 4 and 5: every callback on the digits, and the Compass on a text model.
CASES = [*sorted(CALLBACKS), "Compass-text"]


def _monitor(name, **kwargs):
    if name == "Compass-text":  # every module that applies to text; Grad-CAM's are left out with a warning
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "left out of the default", CompassWarning)
            return text_compass(**kwargs)
    return CALLBACKS[name](task=digits_task(), **kwargs)


def _fit(tmp_path, callbacks, model=None, epochs=2, datamodule=None, **kwargs):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, callbacks, epochs=epochs, **kwargs)
    model = model or DigitsClassifier()
    # a text model brings its own loaders
    trainer.fit(model, datamodule=datamodule or (DigitsDataModule() if isinstance(model, DigitsClassifier) else None))
    return trainer


# -- 1. non-interference -------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "modality"), [("32-true", "image"), ("bf16-mixed", "image"), ("bf16-true", "image"),
                                                    ("64-true", "image"), ("32-true", "text"), ("32-true", "budget")])
def test_training_with_the_compass_is_bit_identical_to_training_without(tmp_path, precision, modality):
    text = modality == "text"  # a TextCNN on token ids, its Compass in embedding space (tests/text_models.py)

    def train(callbacks):
        pl.seed_everything(0)
        model, data = (TextCNN(), None) if text else (DigitsClassifier(), DigitsDataModule())
        trainer = make_trainer(tmp_path, callbacks, epochs=3, logger=False, precision=precision)
        trainer.fit(model, datamodule=data)
        return trainer.lightning_module.state_dict(), trainer.optimizers[0].state_dict()

    weights, optimiser = train([])
    if text:
        with pytest.warns(CompassWarning, match="left out of the default"):  # Grad-CAM has no Conv2d here
            monitor = text_compass()
    elif modality == "budget":  # at its default time budget: modules rotate, scale and end the fit
        monitor = Compass(**SMALL_MODULES, probe_size=32, task=digits_task())
    else:
        monitor = _monitor("Compass")
    watched_weights, watched_optimiser = train([monitor])
    # it did not interfere because it ran, not because it failed
    assert_monitor_ran(monitor, *EVERY_MODULE)  # every module: text's Compass logs them all too
    assert weights.keys() == watched_weights.keys()
    for name, value in weights.items():
        assert torch.equal(value, watched_weights[name]), name
    for index, state in optimiser["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(watched_optimiser["state"][index][key])), (index, key)


# -- 2. state ------------------------------------------------------------------------------------


class AwkwardDigits(DigitsClassifier):
    """The digits model with Dropout, an in-place ReLU and a frozen submodule (StateBracket adds a
    BatchNorm left in train mode inside the eval model, pre-populated gradients and a frozen layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.net[2] = nn.ReLU(inplace=True)
        self.net.insert(4, nn.Dropout(0.3))
        self.net[3].requires_grad_(False)  # the second convolution, frozen


class AwkwardLSTM(ABLSTM):
    """The AB-LSTM with Dropout on its embeddings (StateBracket adds gradients and a frozen embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Sequential(self.embedding, nn.Dropout(0.3))


@pytest.mark.parametrize("name", CASES)
def test_every_callback_leaves_the_model_as_found(tmp_path, name):
    bracket = StateBracket(hooks=("on_validation_epoch_end", "on_train_end"))
    monitor = _monitor(name)
    _fit(tmp_path, bracket.around(monitor), model=AwkwardLSTM() if name == "Compass-text" else AwkwardDigits())
    assert bracket.checked == 4  # sanity check, two validation epochs, end of fit
    assert_monitor_ran(monitor)


# -- 4. resume -----------------------------------------------------------------------------------


def _stages(history):
    return [(r["epoch"], r["global_step"], r["stage"]) for r in history]


class UnshuffledDigits(DigitsDataModule):
    """Training batches in a fixed order, so that a resumed fit trains exactly as an uninterrupted one
    (Lightning restores the weights and the optimiser, but not a shuffling sampler's position): the
    values the monitors log after the resume can then be compared, not only when they were logged."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)


class UnshuffledTextCNN(TextCNN):
    shuffle = False


@pytest.mark.parametrize("name", CASES)
def test_a_resumed_run_logs_the_values_of_an_uninterrupted_run(tmp_path, name):
    extra = {"every_n_epochs": 1} if name == "PruningAnalysis" else {}
    extra |= {"robustness": {**SMALL_MODULES["robustness"], "transfer_from": ["snapshot"], "snapshot_every": 1}} if name == "Compass" else {}
    text = name == "Compass-text"

    def fit(directory, monitor, *others, epochs, **kwargs):
        model, data = (UnshuffledTextCNN(), None) if text else (DigitsClassifier(), UnshuffledDigits())
        trainer = make_trainer(directory, [monitor, *others], epochs=epochs)
        trainer.fit(model, datamodule=data, **kwargs)
        return trainer

    whole = _monitor(name, **extra)
    pl.seed_everything(0)
    fit(tmp_path / "whole", whole, epochs=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    pl.seed_everything(0)
    fit(tmp_path / "first", _monitor(name, **extra), checkpoint, epochs=2)
    resumed = _monitor(name, **extra)
    pl.seed_everything(1)  # another seed: nothing after the resume may depend on the global RNG
    trainer = fit(tmp_path / "second", resumed, epochs=4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert _stages(resumed.history) == _stages(whole.history)
    assert _stages(read_history(trainer.logger.log_dir)) == _stages(whole.history)  # the file too, once each
    assert_monitor_ran(whole)
    for before, after in zip(whole.history, resumed.history):
        assert before["metrics"].keys() == after["metrics"].keys()
        for tag, value in before["metrics"].items():
            assert after["metrics"][tag] == pytest.approx(value, abs=1e-6, nan_ok=True), (before["epoch"], tag)
    if name == "Compass":  # the snapshot surrogate and the neuron top-10 came back with the checkpoint
        last = resumed.history[2]["metrics"]  # the first evaluation after the resume
        assert last["compass/robustness/transfer/snapshot/mifgsm/asr"] is not None
        assert last["compass/neurons/sensitivity/top10_stability"] is not None


@pytest.mark.parametrize("name", ["PruningAnalysis", "Compass"])
def test_an_end_of_fit_analysis_killed_midway_runs_when_the_finished_fit_is_resumed(tmp_path, name):
    first = _monitor(name, fail_fast=True)
    pruning = first.modules["pruning"] if name == "Compass" else first
    analyse = pruning.evaluate

    def killed(trainer, evaluation):  # the process dies during the end-of-fit analysis
        if not trainer.sanity_checking and trainer.state.stage != "validate":
            raise RuntimeError("killed")
        analyse(trainer, evaluation)

    pruning.evaluate = killed
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(tmp_path / "first", [first, saving], logger=False)
    assert not any("compass/pruning/magnitude/max_safe_rate" in r["metrics"] for r in first.history)
    # resumed from last.ckpt, the fit loop is finished and Lightning skips on_train_end: the analysis still runs
    resumed = _monitor(name)
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path / "second", [resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], logger=False)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    ends = [r for r in resumed.history if "compass/pruning/magnitude/max_safe_rate" in r["metrics"]]
    assert len(ends) == 1 and ends[0]["global_step"] == trainer.global_step
    assert_monitor_ran(ends, "compass/pruning/*/max_safe_rate")
    assert [r["global_step"] for r in read_history(tmp_path / "second")][-1] == trainer.global_step  # in the file too


# -- 5. fault isolation --------------------------------------------------------------------------


class NaNDigits(DigitsClassifier):
    def forward(self, x):
        return super().forward(x) * float("nan") if not self.training else super().forward(x)


class DeviceMismatchDigits(DigitsClassifier):
    """Puts the batch on another device whenever its weights are frozen, as in the analyses (a model
    split across devices fails the same way when a probe batch lands on the wrong one)."""

    def forward(self, x):
        return super().forward(x if self.net[0].weight.requires_grad else x.to("meta"))


class DictDigits(DigitsClassifier):
    def forward(self, x):
        return {"logits": super().forward(x)}

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])["logits"], batch[1])

    def validation_step(self, batch, batch_idx):
        pass


CAUSES = {
    "injected": (DigitsClassifier, RuntimeError, "injected failure"),
    "nan_logits": (NaNDigits, FloatingPointError, "NaN or infinite outputs"),
    "device": (DeviceMismatchDigits, (RuntimeError, NotImplementedError), "meta"),
    "dict_output": (DictDigits, TypeError, "returned a dict with keys"),
}


@pytest.fixture
def injected(monkeypatch):
    original = Evaluation.per_sample

    def failing(self, function, *aligned):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(Evaluation, "per_sample", failing)
    yield
    monkeypatch.setattr(Evaluation, "per_sample", original)


class NaNTextCNN(TextCNN):
    def forward(self, ids):
        return super().forward(ids) * float("nan") if not self.training else super().forward(ids)


#: The faults of a text model: its own causes (a device or an output-type fault is the same for any model).
TEXT_CAUSES = {"injected": (TextCNN, RuntimeError, "injected failure"), "nan_logits": (NaNTextCNN, FloatingPointError, "NaN or infinite outputs")}
FAULTS = [(name, cause) for name in sorted(CALLBACKS) for cause in sorted(CAUSES)] + [("Compass-text", c) for c in TEXT_CAUSES]


@pytest.mark.parametrize(("name", "cause"), FAULTS)
def test_a_fault_warns_once_counts_and_training_and_checkpoints_go_on(tmp_path, name, cause, request):
    model_cls, _, message = (TEXT_CAUSES if name == "Compass-text" else CAUSES)[cause]
    if cause == "injected":
        request.getfixturevalue("injected")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = _monitor(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, [monitor, checkpoint], model=model_cls(), logger=False)
    failures = [str(w.message) for w in caught if issubclass(w.category, CompassWarning) and "failed and was skipped" in str(w.message)]
    assert len(failures) == 1 and message in failures[0], failures
    assert trainer.current_epoch == 2 and (tmp_path / "ckpt" / "last.ckpt").exists()
    assert monitor.error_count == EVALUATIONS[name]
    if name != "PruningAnalysis":  # logged at validation epochs (pruning logs at the end, through loggers)
        assert trainer.callback_metrics["compass/errors"].item() >= 1


class _Seen(Callback):
    """What the watchers saw of a tag after each validation (callback_metrics), by epoch."""

    def __init__(self, tag):
        self.tag, self.values = tag, {}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values[trainer.current_epoch] = trainer.callback_metrics[self.tag].item()


def test_an_undefined_watched_tag_never_stops_the_run_through_early_stopping(tmp_path):
    tag = "compass/robustness/fgsm/asr"
    monitor = AttackSuccessRate(attacks=["fgsm"], probe_size=16, image_count=0, every_n_epochs=1, task=digits_task())
    evaluate = monitor.evaluate

    def fails_at_even_epochs(trainer, evaluation):  # the analysis fails at epochs 0 and 2
        if trainer.current_epoch % 2 == 0:
            raise RuntimeError("transient failure")
        evaluate(trainer, evaluation)

    monitor.evaluate = fails_at_even_epochs
    stop = EarlyStopping(monitor=tag, mode="min", patience=5)  # check_finite=True: a NaN would stop the run
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=tag, mode="min")
    seen = _Seen(tag)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, [monitor, stop, best, seen], epochs=4, logger=False)
    assert trainer.current_epoch == 4 and not stop.stopped_epoch  # all four epochs trained
    history = {r["epoch"]: r["metrics"][tag] for r in monitor.history}
    assert history[0] is None and history[2] is None and 0 <= history[1] <= 1 and 0 <= history[3] <= 1  # NaN: None
    # the watchers saw the worst value before any was defined, then the last defined one
    assert seen.values[0] == torch.finfo(torch.float32).max and seen.values[2] == pytest.approx(history[1])
    assert seen.values[1] == pytest.approx(history[1]) and seen.values[3] == pytest.approx(history[3])
    assert best.best_model_score.item() == pytest.approx(min(history[1], history[3]))
    held = [str(w.message) for w in caught if issubclass(w.category, CompassWarning) and "undefined (NaN)" in str(w.message)]
    assert len(held) == 1 and tag in held[0]


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_fail_fast_raises_the_original_exception(tmp_path, cause, request):
    model_cls, error, message = CAUSES[cause]
    if cause == "injected":
        request.getfixturevalue("injected")
    with pytest.raises(error, match=message):
        _fit(tmp_path, [_monitor("Compass", fail_fast=True)], model=model_cls(), logger=False)


# -- 6. bad input --------------------------------------------------------------------------------

BAD = [
    (MutationMetrics, {"mutations": ["noise", "snow"]}, ValueError, "mutations: unknown mutation 'snow'; choose from"),
    (MutationMetrics, {"mutations": []}, ValueError, "mutations must name at least one"),
    (MutationMetrics, {"mutations": "noise"}, TypeError, "mutations must be a list of names"),
    (MutationMetrics, {"mutations": {"noise": {"sigma": -1}}}, ValueError, "noise.sigma must be"),
    (MutationMetrics, {"every_n_epochs": 0}, ValueError, "every_n_epochs must be an integer >= 1"),
    (MutationMetrics, {"probe_size": 0}, ValueError, "probe_size must be an integer >= 1"),
    (MutationMetrics, {"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
    (MutationMetrics, {"seed": -1}, ValueError, r"seed must be an integer in \[0, "),
    (MutationMetrics, {"task": "classification"}, TypeError, "task must be a task adapter"),
    (MutationMetrics, {"fail_fast": "no"}, TypeError, "fail_fast must be True or False"),
    (MutationMetrics, {"probe_data": [1, 2, 3]}, TypeError, "probe_data must be a Dataset or a pair"),
    (AttackSuccessRate, {"attacks": ["fgsm", "jsma"]}, ValueError, "attacks: unknown attack 'jsma'; choose from"),
    (AttackSuccessRate, {"eps": -0.1}, ValueError, "eps must be a number"),
    (AttackSuccessRate, {"eps": []}, ValueError, "eps must be a number or a non-empty list"),
    (AttackSuccessRate, {"attacks": {"pgd": {"steps": 0}}}, ValueError, "pgd.steps must be an integer >= 1"),
    (AttackSuccessRate, {"transfer_from": ["resnet"]}, ValueError, "transfer_from: .* is neither an nn.Module nor 'snapshot'"),
    (AttackSuccessRate, {"snapshot_every": 0}, ValueError, "snapshot_every must be an integer >= 1"),
    (AttributionScores, {"methods": ["lime"]}, ValueError, "methods: unknown attribution method 'lime'; choose from"),
    (AttributionScores, {"steps": 1}, ValueError, "steps must be an integer >= 2"),
    (AttributionScores, {"baseline": "grey"}, ValueError, "baseline must be one of zeros, blur"),
    (NeuronAnalysis, {"threshold": 1.5}, ValueError, r"threshold must be a number in \[0.0, 1.0\]"),
    (NeuronAnalysis, {"sections": 0}, ValueError, "sections must be an integer >= 1"),
    (NeuronAnalysis, {"top_k": 0}, ValueError, "top_k must be an integer >= 1"),
    (NeuronAnalysis, {"criteria": ["nc", "dsc"]}, ValueError, "criteria: unknown criterion 'dsc'; choose from"),
    (NeuronAnalysis, {"sigma": 0}, ValueError, "sigma must be a number"),
    (NeuronAnalysis, {"layers": "net.0"}, TypeError, "layers must be None or a non-empty list"),
    (NeuronAnalysis, {"test_generation": {"particles": 0}}, ValueError, r"test_generation\['particles'\] must be an integer >= 1"),
    (DeepValidation, {"transforms": ["blur"]}, ValueError, "transforms: unknown transform 'blur'; choose from"),
    (DeepValidation, {"fit_size": 1}, ValueError, "fit_size must be an integer >= 2"),
    (DeepValidation, {"target": 1.5}, ValueError, r"target must be a number in \(0.0, 1.0\]"),
    (DeepValidation, {"attacks": ["pgx"]}, ValueError, "pgx"),
    (PruningAnalysis, {"rates": [1.0]}, ValueError, r"rates must be a number in \[0.0, 1.0\)"),
    (PruningAnalysis, {"methods": ["snip"]}, ValueError, "methods: unknown importance 'snip'; choose from"),
    (PruningAnalysis, {"tolerance": -0.01}, ValueError, "tolerance must be a number"),
    (PruningAnalysis, {"attribution_probe_size": 0}, ValueError, "attribution_probe_size must be an integer"),
    (MutationMetrics, {"batch_size": 0}, ValueError, "batch_size must be an integer"),
    (PruningAnalysis, {"calibration_size": 0}, ValueError, "calibration_size must be an integer >= 1"),
    (PruningAnalysis, {"sweep": 0.5}, TypeError, "sweep must be a list of rates"),
    (Compass, {"robustness": {"attacks": ["nope"]}}, ValueError, "robustness: attacks: unknown attack 'nope'"),
    (Compass, {"neurons": {"seed": 3}}, ValueError, r"neurons: seed is shared by every module; set Compass\(seed=...\)"),
    (Compass, {"pruning": "yes"}, TypeError, "pruning must be True, False or a mapping"),
    (Compass, {"radar": 1}, TypeError, "radar must be True or False"),
    # accepted once, and every analysis then failed or gave NaN (issue 17 items 8 and 10)
    (MutationMetrics, {"seed": 2**63}, ValueError, r"seed must be an integer in \[0, 4294967295\]"),
    (Compass, {"seed": 2**32}, ValueError, r"seed must be an integer in \[0, 4294967295\]"),
    (AttackSuccessRate, {"eps": float("inf")}, ValueError, "eps must be a finite number"),
    (AttackSuccessRate, {"eps_l2": [0.5, float("inf")]}, ValueError, r"eps_l2\[1\] must be a finite number"),
    (AttackSuccessRate, {"eps": [8 / 255, 0.03137, 0.031372]}, ValueError, "eps: .* would both be logged as eps_0.03137"),
    (AttackSuccessRate, {"attacks": {"pgd": {"alpha": float("inf")}}}, ValueError, "pgd.alpha must be a finite number"),
    (AttackSuccessRate, {"transfer_from": {"a/b": nn.Linear(2, 2)}}, ValueError, "surrogate name 'a/b' must be a non-empty str without '/'"),
    (MutationMetrics, {"mutations": {"noise": {"sigma": float("inf")}}}, ValueError, "noise.sigma must be a finite number"),
    (MutationMetrics, {"mutations": {"brightness": {"factor": float("inf")}}}, ValueError, "brightness.factor must be a finite number"),
    (NeuronAnalysis, {"sigma": float("inf")}, ValueError, "sigma must be a finite number"),
    (PruningAnalysis, {"tolerance": float("inf")}, ValueError, "tolerance must be a finite number"),
    (Classification, {"input_range": (0.0, float("inf"))}, ValueError, r"input_range\[1\] must be a finite number"),
    (Classification, {"input_key": "x", "target_key": "x"}, ValueError, "input_key and target_key are both 'x'"),
    (Classification, {"one_hot": "yes"}, TypeError, "one_hot must be True or False"),
    (TextClassification, {"input_key": 1, "target_key": 1}, ValueError, "input_key and target_key are both 1"),
]


def test_the_bad_input_table_is_long_enough():
    assert len(BAD) >= 50 and {cls for cls, *_ in BAD} >= {type(_monitor(n)) for n in CALLBACKS}


@pytest.mark.parametrize(("cls", "kwargs", "error", "message"), BAD, ids=[f"{c.__name__}-{sorted(k)[0]}-{i}" for i, (c, k, *_) in enumerate(BAD)])
def test_bad_configuration_raises_at_construction_naming_the_argument(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


class NoValidationStep(DigitsClassifier):
    validation_step = pl.LightningModule.validation_step


# The callbacks that take layer names, each naming one the model lacks.
UNKNOWN_LAYER = {
    "NeuronAnalysis": lambda: NeuronAnalysis(layers=["head"]),
    "AttributionScores": lambda: AttributionScores(methods={"gradcam": {"layer": "head"}}),
    "Compass": lambda: Compass(neurons={"layers": ["head"]}),
}
PROBLEMS = [
    *[(name, "probe_larger_than_data", "is larger than") for name in sorted(CALLBACKS)],
    *[(name, "no_validation_step", "has no validation_step") for name in sorted(CALLBACKS)],
    *[(name, "unknown_layer", "has no layer 'head'") for name in sorted(UNKNOWN_LAYER)],
    # the digits come normalised: without the statistics, pixels would be read in [-0.8, 1.9]
    *[(name, "normalised_data_and_no_task", r"task: .* looks normalised: .*Classification\(mean=")
      for name in sorted(CALLBACKS)],
]


@pytest.mark.parametrize(("name", "problem", "message"), PROBLEMS)
def test_data_and_model_problems_raise_before_the_first_training_step(tmp_path, name, problem, message):
    if problem == "unknown_layer":
        monitor = UNKNOWN_LAYER[name]()
    elif problem == "normalised_data_and_no_task":
        monitor = CALLBACKS[name]()
    else:
        monitor = _monitor(name, probe_size=100_000) if problem == "probe_larger_than_data" else _monitor(name)
    model = NoValidationStep() if problem == "no_validation_step" else DigitsClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, [monitor], logger=False).fit(model, datamodule=DigitsDataModule())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not one training step


# -- 7. safe loading -----------------------------------------------------------------------------


class Payload:
    ran = False

    def __reduce__(self):
        return (setattr, (Payload, "ran", True))


def test_a_history_file_holding_a_pickle_is_refused_without_running_it(tmp_path):
    (tmp_path / "compass_history.jsonl").write_bytes(pickle.dumps(Payload()))
    assert read_history(tmp_path) == []  # not a single record: every line skipped, nothing unpickled
    from compass_lightning.cli import main

    assert main(["report", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert Payload.ran is False


def test_a_crafted_checkpoint_is_refused_without_running_it(tmp_path):
    from compass_lightning.checkpoints import compare_checkpoints

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        compare_checkpoints(DigitsClassifier, [path], datamodule=DigitsDataModule(), compass=Compass(pruning=False))
    assert Payload.ran is False


# -- 8. memory -----------------------------------------------------------------------------------


def _peak_live_bytes(function) -> int:
    """The largest number of bytes held by live CPU tensors while ``function`` runs: the profiler
    records each operator's allocations and frees in order (not the resident memory, which the
    allocator's caching and the imports blur), so the figure is exact and the same on every run."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        warnings.simplefilter("ignore")
        function()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        # frees outside any operator are "[memory]" events; an operator's own allocations are its self usage
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


class WideNet(pl.LightningModule):
    """32 channels on 3x16x16 inputs: a sample's activations are 32 KB per layer, 10 times its 3 KB
    input, so keeping any layer's activations for the whole probe would show as 10 probe copies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        pass


#: Probe-sized copies an evaluation of every module may hold at once (measured: 7.1 — the probe,
#: the shared adversarial examples, the matched noise, a mutant, per-sample Grad-CAM maps), well
#: below the 10 copies that one layer's activations kept for the whole probe would add.
PROBE_COPIES = 9


def test_the_memory_of_an_evaluation_grows_with_the_probe_by_a_few_probe_copies_only(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(64, 3, 16, 16, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs[:16], targets[:16]), batch_size=16)

    def evaluate(size):
        compass = Compass(
            probe_data=(inputs[:size], targets[:size]), probe_size=size, batch_size=16, pruning=False,
            mutation={"mutations": ["noise", "random_crop"], "probe_size": size},
            robustness={"attacks": ["fgsm", "pgd"], "probe_size": size, "image_count": 0},
            interpretability={"methods": ["saliency"], "steps": 4, "every_n_epochs": 1,
                              "probe_size": size, "image_count": 0, "random_baseline": False},
            neurons={"profile_data": (inputs[:16], targets[:16]), "profile_size": 16, "probe_size": size, "image_count": 0},
        )
        model = WideNet()
        trainer = make_trainer(tmp_path / str(size), [compass], logger=False)
        peak = _peak_live_bytes(lambda: trainer.validate(model, dataloaders=loader, verbose=False))
        assert_monitor_ran(compass)
        return peak

    small, large = evaluate(16), evaluate(64)
    probe_growth = inputs[16:].numel() * inputs.element_size()  # 48 more samples of 3 KB
    copies = (large - small) / probe_growth
    print(f"peak {small / 2**20:.1f} MB at 16 samples, {large / 2**20:.1f} MB at 64: {copies:.1f} probe copies")
    assert copies <= PROBE_COPIES, copies


# -- 10. smaller ones (issue 17 item 10) ---------------------------------------------------------


def test_a_schedule_that_never_meets_validation_is_said_at_fit_start(tmp_path):
    monitor = MutationMetrics(mutations=["noise"], probe_size=8, every_n_epochs=2, task=digits_task())
    with pytest.warns(CompassWarning, match=r"every_n_epochs=2.*check_val_every_n_epoch=3\), so it never runs within max_epochs=2"):
        _fit(tmp_path, [monitor], logger=False, check_val_every_n_epoch=3)
    assert monitor.history == []


class PathDigits(DigitsClassifier):
    def __init__(self, data_dir=Path("data")):  # an ordinary hyper-parameter
        super().__init__()
        self.save_hyperparameters()


def test_compare_checkpoints_loads_ordinary_checkpoints_whose_hyper_parameters_hold_paths(tmp_path):
    from compass_lightning.checkpoints import compare_checkpoints

    trainer = make_trainer(tmp_path, [], logger=False, epochs=1, enable_checkpointing=False)
    trainer.fit(PathDigits(tmp_path / "data"), datamodule=DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    result = compare_checkpoints(PathDigits, [tmp_path / "a.ckpt"], datamodule=DigitsDataModule(),
                                 compass=Compass(pruning=False, robustness={"attacks": ["fgsm"]}, interpretability=False,
                                                 neurons=False, mutation={"mutations": ["noise"]}, probe_size=16,
                                                 task=digits_task()))
    assert result.metrics["a.ckpt"]["compass/robustness/fgsm/asr"] >= 0
