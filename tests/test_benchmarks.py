"""The benchmark suite's own machinery: interleaving, ratios and the table it prints."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import Row, interleaved, ratios_of, seconds_of, table  # noqa: E402

CPU = torch.device("cpu")


def test_rounds_alternate_the_order_of_the_two_sides_after_the_warm_up():
    calls = []
    interleaved({"x": (lambda: calls.append("A"), lambda: calls.append("B"))}, repeats=3, device=CPU, warmup=1)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]  # warm-up, then A B, B A, A B


def test_every_case_is_timed_once_a_round_in_alternating_order():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = seconds_of(cases, repeats=2, device=CPU, warmup=0)
    assert calls == ["a", "b", "c", "c", "b", "a"] and all(len(t) == 2 for t in times.values())


def test_ratios_are_per_round_and_scaled():
    assert ratios_of({"a": [2.0, 3.0], "b": [1.0, 2.0]}, "a", "b", scale=2.0) == [1.0, 0.75]


def test_a_row_reports_the_median_its_range_and_whether_the_target_is_met():
    met, missed, untargeted = Row("x", "a / b", [0.8, 1.3, 0.9], 1.0), Row("x", "c / d", [1.2, 1.1, 1.3], 1.0), Row("x", "e", [2.0])
    assert (met.median, met.met, missed.met, untargeted.met) == (0.9, True, False, None)
    lines = table([met, missed, untargeted]).splitlines()
    assert lines[2] == "| x | a / b | **0.90** | 0.80-1.30 | <= 1.00 | met |"
    assert lines[3].endswith("| **missed** |") and lines[4].endswith("|  |  |")


def test_the_benchmark_machinery_runs_from_an_empty_directory_and_writes_nothing_there(tmp_path, monkeypatch):
    import memory
    import overhead
    from conftest import digits_task

    import compass_lightning as cl

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # a timed fit (its TensorBoard logs in a temporary directory), the pass count of one evaluation,
    # and one memory case in its own process, each at its smallest
    overhead.fit("digits", 1, lambda: [cl.MutationMetrics(task=digits_task(), mutations=["noise"], probe_size=32)], CPU)()
    (separate_forward, _), (compass_forward, _) = overhead.pass_saving("digits")
    assert 0 < compass_forward < separate_forward  # the Compass shares its clean forward
    case = memory.measure(16, 1, "cpu", 16, 4, True)
    assert case["size"] == 16 and case["seconds"] > 0 and case["peak_mb"] > 0
    assert not list(cwd.iterdir())


def test_the_attack_floor_replays_the_model_calls_the_attack_made():
    import autoattack

    from compass_lightning.attacks import run_attack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0])
    recording = autoattack.Recording(model)
    run_attack("apgd_ce", recording, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    assert sum(gradient for _, gradient in recording.calls) >= 3 and any(not g for _, g in recording.calls)
    replayed = autoattack.Recording(model)
    autoattack.replay(replayed, x, recording.calls)()
    assert replayed.calls == recording.calls and not any(p.grad is not None for p in model.parameters())
