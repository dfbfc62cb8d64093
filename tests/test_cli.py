"""The console script and the LightningCLI presets."""

import subprocess
import sys

import pytest

from conftest import ROOT, assert_monitor_ran, read_events

import compass_lightning
from compass_lightning.cli import main


def test_console_script_prints_the_version(capsys):
    assert main([]) == 0
    assert f"compass-lightning {compass_lightning.__version__}" in capsys.readouterr().out


PRESETS = {
    "mutation.yaml": ({"compass/basic/accuracy", "compass/mutation/noise/accuracy"}, {"compass/mutation/examples"}),
    "robustness.yaml": (
        {"compass/robustness/pgd/asr", "compass/robustness/pgd/eps_0.01569/asr", "compass/robustness/mean_asr"},
        {"compass/robustness/examples", "compass/robustness/eps_sweep"},
    ),
    "interpretability.yaml": (
        {"compass/interpretability/gradcam/insertion", "compass/interpretability/random/deletion"},
        {"compass/interpretability/heatmaps", "compass/interpretability/insertion_curves"},
    ),
    "neurons.yaml": (
        {"compass/neurons/coverage/kmnc", "compass/neurons/sensitivity/fraction/net.3", "compass/neurons/deviation/net.7/gap"},
        {"compass/neurons/sensitivity/layers_by_epoch", "compass/neurons/deviation/gradcam"},
    ),
    "full.yaml": (
        {"compass/basic/accuracy", "compass/robustness/cw/asr", "compass/neurons/coverage/nc",
         "compass/pruning/obd/max_safe_rate", "compass/score/robustness", "compass/interpretability/gradcam/insertion"},
        {"compass/score/radar", "compass/robustness/examples", "compass/pruning/accuracy"},
    ),
    "quick.yaml": (
        {"compass/mutation/noise/accuracy", "compass/robustness/fgsm/asr", "compass/interpretability/saliency/deletion",
         "compass/neurons/sensitivity/fraction", "compass/pruning/magnitude/max_safe_rate", "compass/score/accuracy"},
        {"compass/score/radar", "compass/pruning/accuracy"},
    ),
    "pruning.yaml": (
        {"compass/pruning/taylor/rate_0.40/accuracy", "compass/pruning/obd/max_safe_rate", "compass/pruning/unpruned/asr"},
        {"compass/pruning/accuracy", "compass/pruning/insertion_deletion"},
    ),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_adds_the_monitor_to_a_lightning_cli_script(tmp_path, preset):
    scalars, images = PRESETS[preset]
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "digits_cli.py"),
            "fit",
            "--config",
            str(ROOT / "callbacks" / preset),
            "--trainer.max_epochs=5" if preset in ("interpretability.yaml", "full.yaml") else "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (log_dir,) = (tmp_path / "lightning_logs").iterdir()
    tags = read_events(log_dir).Tags()
    assert scalars | {"compass/errors"} <= set(tags["scalars"])
    assert images <= set(tags["images"])
    assert_monitor_ran(log_dir, *scalars)


def test_every_preset_is_tested():
    assert {p.name for p in (ROOT / "callbacks").glob("*.yaml")} == set(PRESETS)


def test_a_preset_on_normalised_data_without_its_statistics_stops_at_fit_start_saying_how_to_give_them(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits_cli.py"), "fit", "--config", str(ROOT / "callbacks" / "robustness.yaml"),
         "--data.normalise=true", "--model.normalise_inputs=false", "--trainer.max_epochs=1",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "looks normalised" in result.stderr and "Classification(mean=[...], std=[...])" in result.stderr
    assert "Epoch 0" not in result.stdout + result.stderr  # refused before training
