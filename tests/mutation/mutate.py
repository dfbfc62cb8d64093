"""Mutation check: plant one-line bugs in a copy of the project, one at a time, and run the tests
that should catch each. A mutation that no test catches "survives": a claim the suite does not pin.

    python tests/mutation/mutate.py                # every mutation (about 15 minutes on 2 CPU cores)
    python tests/mutation/mutate.py --list         # the mutations, without running anything
    python tests/mutation/mutate.py --only kmnc    # those whose name contains "kmnc"

Each mutation names a file, a piece of code that must occur in it exactly once, its replacement,
and the tests to run (pytest arguments, relative to the repository root). The project is copied
(its ``git ls-files``) into a temporary folder, the tests run there with ``PYTHONPATH`` pointing at
the copy (so the mutated package is the one imported, by every subprocess too), and each mutation
is reverted before the next. First the selections run unmutated: a selection that fails without a
mutation would make its verdict meaningless. A run of a mutation that outlasts ``--timeout`` counts
as caught (a planted hang, such as a rank that waits forever, is what its test is for).

Written here because the field's tools (mutmut, cosmic-ray) mutate every operator they find and
run the whole suite for each: thousands of runs of a four-minute suite. These are the mutations
that a reviewer would plant, each against the tests that own the claim, so the check reruns in
minutes. It is not part of the default CI run (``.ci/run``); the README reports its last result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


NON_INTERFERENCE = (
    "tests/test_reliability.py::test_training_with_the_compass_is_bit_identical_to_training_without",
    "tests/test_ddp.py::test_every_module_under_two_processes_logs_what_one_process_logs",
    "tests/test_compass.py::test_the_compass_equals_the_separate_callbacks_with_fewer_passes",
    "tests/test_examples.py",
    "tests/test_reliability.py::test_a_resumed_run_logs_the_values_of_an_uninterrupted_run",
)
ROBUSTNESS = "tests/test_callbacks_robustness.py"
FAITHFULNESS = ("tests/test_attribution.py", "tests/test_callbacks_interpretability.py")
COVERAGE = ("tests/test_neurons.py", "tests/test_callbacks_neurons.py")

MUTATIONS = [
    # -- the six that survived the first run, and "every attack/analysis raises" ------------------
    Mutation("mean_asr is the last attack's", "compass_lightning/attacks/success.py",
             "return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rates]).nanmean()",
             "return torch.as_tensor(rates[-1], dtype=torch.float32)", (ROBUSTNESS,)),
    Mutation("insertion/deletion area is the plain mean", "compass_lightning/attribution/faithfulness.py",
             "return (curve.sum(dim=-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)",
             "return curve.mean(dim=-1)", FAITHFULNESS),
    Mutation("insertion/deletion ranks channel 0", "compass_lightning/attribution/faithfulness.py",
             "(attributions.sum(dim=1) if attributions.ndim == 4 else attributions)",
             "(attributions[:, 0] if attributions.ndim == 4 else attributions)", FAITHFULNESS),
    Mutation("kmnc upper bound open", "compass_lightning/neurons/coverage.py",
             "inside = (v >= low) & (v <= high)", "inside = (v >= low) & (v < high)", COVERAGE),
    Mutation("kmnc last section unreachable", "compass_lightning/neurons/coverage.py",
             ".clamp(0, self.sections - 1)", ".clamp(0, self.sections - 2)", COVERAGE),
    Mutation("ddp failure agreement is local", "compass_lightning/callbacks/base.py",
             "if self.any_rank(failure is not None):", "if failure is not None:",
             ("tests/test_ddp.py",)),
    *[
        Mutation(f"every attack raises ({test.split('::')[0].split('/')[-1]})", "compass_lightning/callbacks/robustness.py",
                 "        attack = ATTACKS[name]\n", "        raise RuntimeError('planted')\n", (test,))
        for test in NON_INTERFERENCE
    ],
    Mutation("every analysis raises", "compass_lightning/callbacks/base.py",
             "            self.evaluate(trainer, evaluation)\n", "            raise RuntimeError('planted')\n",
             NON_INTERFERENCE[:1] + ("tests/test_cli.py::test_preset_adds_the_monitor_to_a_lightning_cli_script",)),
    # -- attacks ------------------------------------------------------------------------------------
    Mutation("asr counts samples wrong before the attack", "compass_lightning/attacks/success.py",
             "return (clean_correct & ~adversarial_correct).sum() / clean_correct.sum()",
             "return (~adversarial_correct).sum() / clean_correct.sum()", (ROBUSTNESS,)),
    Mutation("no projection into the eps-ball", "compass_lightning/attacks/_core.py",
             "return (x + (x_adv - x).clamp(-eps, eps)).clamp(*bounds)", "return x_adv.clamp(*bounds)",
             ("tests/test_attacks.py",)),
    Mutation("momentum not accumulated", "compass_lightning/attacks/_core.py",
             "momentum = direction + momentum * decay", "momentum = direction", ("tests/test_attacks.py",)),
    Mutation("pgd random start from the corner", "compass_lightning/attacks/_core.py",
             "return (x + eps * (2 * draw(torch.rand, tuple(x.shape), generator, x) - 1)).clamp(*bounds)",
             "return (x + eps * draw(torch.rand, tuple(x.shape), generator, x)).clamp(*bounds)", ("tests/test_attacks.py",)),
    Mutation("input diversity ignores its probability", "compass_lightning/attacks/_core.py",
             "float(draw(torch.rand, (1,), generator, x)) >= diversity_prob",
             "float(draw(torch.rand, (1,), generator, x)) > 1.0", ("tests/test_attacks.py",)),
    Mutation("pgd_l2 step not normalised", "compass_lightning/attacks/gradient.py",
             "x_adv = x_adv + alpha * gradient / (per_sample_norm(gradient) + 1e-10)",
             "x_adv = x_adv + alpha * gradient", ("tests/test_attacks.py",)),
    Mutation("cw keeps the last iterate", "compass_lightning/attacks/minimal.py",
             "improved = (logits.argmax(dim=1) != y) & (l2 < best_l2)", "improved = l2 >= 0", ("tests/test_attacks.py",)),
    Mutation("deepfool without overshoot", "compass_lightning/attacks/minimal.py",
             "stepped = (current.detach() + (1 + overshoot) * delta).clamp(*bounds)",
             "stepped = (current.detach() + delta).clamp(*bounds)", ("tests/test_attacks.py",)),
    # -- attribution ----------------------------------------------------------------------------------
    Mutation("insertion/deletion counts floor instead of round", "compass_lightning/attribution/faithfulness.py",
             "counts = torch.round(", "counts = torch.floor(", FAITHFULNESS),
    Mutation("fast_ig on the logit instead of the log-probability", "compass_lightning/attribution/paths.py",
             "gradient, _ = class_gradient(model, x, target, log_probability=True)",
             "gradient, _ = class_gradient(model, x, target)", FAITHFULNESS),
    Mutation("agi integrates the wrong sign", "compass_lightning/attribution/paths.py",
             "attribution += torch.where(keep, -truth * (moved - current), torch.zeros_like(x)).detach()",
             "attribution += torch.where(keep, truth * (moved - current), torch.zeros_like(x)).detach()", FAITHFULNESS),
    Mutation("big from a black baseline", "compass_lightning/attribution/paths.py",
             "attribute(x, baselines=baselines, target=target, n_steps=steps)",
             "attribute(x, baselines=0.0, target=target, n_steps=steps)", FAITHFULNESS),
    Mutation("smoothgrad noise ten times smaller", "compass_lightning/attribution/captum_methods.py",
             "nt_samples=samples, stdevs=stdev,", "nt_samples=samples, stdevs=stdev / 10,", FAITHFULNESS),
    # -- neurons --------------------------------------------------------------------------------------
    Mutation("snac counts the upper bound itself", "compass_lightning/neurons/coverage.py",
             'state["upper"] |= (v > high).any(0)', 'state["upper"] |= (v >= high).any(0)', COVERAGE),
    Mutation("sensitivity not divided by the noise norm", "compass_lightning/neurons/sensitivity.py",
             "out[name] = ((noisy - clean).abs() / norms.unsqueeze(2)).mean(dim=0)",
             "out[name] = (noisy - clean).abs().mean(dim=0)", COVERAGE),
    Mutation("compromise against the wrong side of the median", "compass_lightning/neurons/deviation.py",
             '"compromise_probability": ((adversarial < threshold) & counted).float().mean(),',
             '"compromise_probability": ((adversarial > threshold) & counted).float().mean(),', COVERAGE),
    # -- mutation and pruning -------------------------------------------------------------------------
    Mutation("label_error may keep the label", "compass_lightning/mutation.py",
             "offset = torch.randint(1, num_classes,", "offset = torch.randint(0, num_classes,",
             ("tests/test_mutation.py", "tests/test_callbacks_mutation.py")),
    Mutation("mean accuracy over the mutants is the first's", "compass_lightning/callbacks/mutation.py",
             'scalars["compass/mutation/mean_accuracy"] = torch.stack(accuracies).mean()',
             'scalars["compass/mutation/mean_accuracy"] = accuracies[0]', ("tests/test_callbacks_mutation.py",)),
    Mutation("batch dependence compares misaligned rows", "compass_lightning/mutation.py",
             "aligned[permutation.to(shuffled_logits.device)] = shuffled_logits", "aligned = shuffled_logits",
             ("tests/test_mutation.py", "tests/test_callbacks_mutation.py")),
    Mutation("max safe rate ignores the tolerance", "compass_lightning/pruning.py",
             "if drop <= tolerance), default=0.0)", "if drop <= 1.0), default=0.0)",
             ("tests/test_callbacks_pruning.py", "tests/test_pruning.py")),
    Mutation("max safe rate is the first safe rate", "compass_lightning/pruning.py",
             "return max((rate for rate, drop in drops.items()", "return min((rate for rate, drop in drops.items()",
             ("tests/test_callbacks_pruning.py", "tests/test_pruning.py")),
    Mutation("subsets do not share the adversarial examples", "compass_lightning/engine/evaluation.py",
             "child.scalars, child.images, child.shared = self.scalars, self.images, self.shared\n",
             "child.scalars, child.images = self.scalars, self.images\n",
             ("tests/test_compass.py::test_the_neuron_module_reuses_the_attacks_examples_when_they_cover_its_probe",)),
    # -- the guard ------------------------------------------------------------------------------------
    Mutation("guard leaves the model in eval mode", "compass_lightning/engine/guard.py",
             "                m.training = training\n", "                pass\n",
             ("tests/test_guard.py", "tests/test_reliability.py::test_every_callback_leaves_the_model_as_found")),
    Mutation("guard does not put gradients back", "compass_lightning/engine/guard.py",
             "                p.grad = grad\n", "                p.grad = None\n",
             ("tests/test_guard.py", "tests/test_reliability.py::test_every_callback_leaves_the_model_as_found")),
    Mutation("guard does not fork the torch RNG", "compass_lightning/engine/guard.py",
             "    with torch.random.fork_rng(devices=devices):", "    with contextlib.nullcontext():",
             ("tests/test_guard.py", "tests/test_reliability.py::test_training_with_the_compass_is_bit_identical_to_training_without")),
    Mutation("guard leaves parameters trainable", "compass_lightning/engine/guard.py",
             "                p.requires_grad_(False)\n", "                pass\n",
             ("tests/test_guard.py", "tests/test_reliability.py::test_every_callback_leaves_the_model_as_found")),
]


def copy_project(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``"passed"``, ``"failed"`` or ``"timeout"`` for the tests in the copy, and the seconds taken."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    process = subprocess.Popen(command, cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return "timeout", time.perf_counter() - started
    return ("passed" if code == 0 else "failed"), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", default="", help="run the mutations whose name contains this")
    parser.add_argument("--timeout", type=float, default=400, help="seconds one mutation's tests may take")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file}: {m.original.strip()!r} -> {m.replacement.strip()!r}  [{' '.join(m.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="compass-mutation-") as folder:
        copy = Path(folder)
        copy_project(copy)
        for m in chosen:  # every planted piece exists exactly once
            count = (copy / m.file).read_text(encoding="utf-8").count(m.original)
            if count != 1:
                raise SystemExit(f"{m.name}: the code to mutate occurs {count} times in {m.file}")
        for selection in sorted({m.tests for m in chosen}):
            verdict, seconds = run_tests(copy, selection, args.timeout)
            print(f"unmutated: {verdict} in {seconds:.0f} s: {' '.join(selection)}", flush=True)
            if verdict != "passed":
                raise SystemExit("a selection fails without any mutation; fix the suite first")
        print("\n| mutation | file | verdict | seconds |\n|---|---|---|---|", flush=True)
        caught = 0
        for m in chosen:
            path = copy / m.file
            source = path.read_text(encoding="utf-8")
            path.write_text(source.replace(m.original, m.replacement), encoding="utf-8")
            try:
                verdict, seconds = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(source, encoding="utf-8")
            killed = verdict != "passed"
            caught += killed
            label = {"failed": "caught", "timeout": "caught (timed out)", "passed": "**survived**"}[verdict]
            print(f"| {m.name} | {m.file} | {label} | {seconds:.0f} |", flush=True)
        print(f"\n{caught} of {len(chosen)} mutations caught ({100 * caught / max(len(chosen), 1):.0f} %)")
        return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
