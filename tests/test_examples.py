"""The examples: the ResNet-18 one's generated data is deterministic and learnable, a --fast run of
each (ResNet-18, digits, text) logs every module of the Compass and writes only under its log directory,
and the adversarial-training one shows the cascade seeing through a gradient-masked model."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import EVERY_MODULE, assert_monitor_ran, read_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import adversarial_training  # noqa: E402
import cifar_like  # noqa: E402
import deepsensor_retrain  # noqa: E402
import digits  # noqa: E402
import text  # noqa: E402


def test_synthetic_cifar_is_deterministic_balanced_and_in_range():
    x, y = cifar_like.synthetic_cifar(200, seed=5)
    again, _ = cifar_like.synthetic_cifar(200, seed=5)
    assert x.shape == (200, 3, 32, 32) and torch.equal(x, again)
    assert 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10


def test_synthetic_cifar_is_learnable_by_a_linear_probe_on_simple_features():
    x, y = cifar_like.synthetic_cifar(2000, seed=1)
    xv, yv = cifar_like.synthetic_cifar(500, seed=2)
    features = lambda t: torch.cat([t.mean(dim=(2, 3)), torch.fft.rfft2(t.mean(1)).abs().flatten(1)[:, :200]], 1)  # noqa: E731
    f, fv = features(x), features(xv)
    mean, std = f.mean(0), f.std(0) + 1e-6
    torch.manual_seed(0)
    linear = torch.nn.Linear(f.shape[1], 10)
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(linear((f - mean) / std), y).backward()
        optimiser.step()
    accuracy = (linear((fv - mean) / std).argmax(1) == yv).float().mean().item()
    assert 0.3 < accuracy, accuracy  # far above chance (0.1): there is structure to learn


@pytest.mark.parametrize("example", [cifar_like, digits, text], ids=["cifar_like", "digits", "text"])
def test_fast_run_logs_every_module_of_the_compass_and_writes_only_under_its_logdir(tmp_path, monkeypatch, example):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    log_dir = example.main(["--fast", "--logdir", str(tmp_path / "logs")])
    assert_monitor_ran(log_dir, *EVERY_MODULE)
    scalars = set(read_events(log_dir).Tags()["scalars"])
    assert {"compass/basic/accuracy", "compass/robustness/fgsm/asr", "compass/neurons/coverage/nc",
            "compass/pruning/magnitude/max_safe_rate", "compass/score/accuracy", "compass/errors"} <= scalars
    assert list(work.iterdir()) == []


def test_the_text_example_reads_the_real_sentences_of_the_installed_gensim_wheel():
    words, labels = text.sentences()
    assert len(words) == 200 and sum(labels) == 100  # 100 negative, 100 positive Rotten Tomatoes snippets
    assert words[0][:3] == ["simplistic", ",", "silly"]
    data = text.Reviews()
    assert len(data.train_set) == 150 and len(data.val_set) == 50
    assert int(data.train_set.tensors[0].max()) < len(data.vocabulary) + 3


def test_the_cascade_and_the_checks_see_through_the_gradient_masked_model_of_the_adversarial_training_example(
    tmp_path, monkeypatch
):
    from compass_lightning.reporting.summary import load_run, merged

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    log_dir = adversarial_training.main(["--fast", "--logdir", str(tmp_path / "logs")])
    last = {name: merged(load_run(log_dir / name)[0])[-1][1] for name in adversarial_training.MODELS}
    robust = {name: {a: values[f"compass/robustness/{a}/robust_accuracy"] for a in adversarial_training.ATTACKS}
              for name, values in last.items()}
    # FGSM and PGD call the quantised model robust; the cascade (Square) breaks almost all of it
    assert robust["masked"]["pgd"] > robust["masked"]["autoattack"] + 0.4, robust
    assert robust["masked"]["fgsm"] > 0.6 and robust["masked"]["autoattack"] < 0.1, robust
    fired = {name: {c for c in adversarial_training.CHECKS if values[f"compass/robustness/checks/{c}"] == 1.0}
             for name, values in last.items()}
    assert fired["masked"] == {"zero_gradients", "black_box"} and fired["standard"] == set(), fired
    # adversarial training buys robustness the cascade confirms, where the standard model has none
    assert robust["pgd_trained"]["autoattack"] > robust["standard"]["autoattack"], robust
    assert (log_dir / "robust_accuracy.png").stat().st_size > 0 and list(work.iterdir()) == []


def test_retraining_on_deepsensor_tests_lowers_the_white_box_asr_more_than_the_seeds_alone(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    results = deepsensor_retrain.main(["--fast", "--logdir", str(tmp_path / "logs")])  # asserts the live model is untouched
    before, after, control = (results[k] for k in ("trained model", "retrained: deepsensor", "retrained: seeds only"))
    assert after["pgd_asr"] < before["pgd_asr"] - 0.05 and after["fgsm_asr"] < before["fgsm_asr"]
    assert before["pgd_asr"] - after["pgd_asr"] > before["pgd_asr"] - control["pgd_asr"], results
    assert after["accuracy"] > 0.85 and list(work.iterdir()) == []
