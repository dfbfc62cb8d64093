"""DeepSensor's test generation inside ``NeuronAnalysis``: the configuration, the tags and one run.

``NeuronAnalysis(test_generation={...})`` runs :func:`~compass_lightning.neurons.generate_tests` on
the first ``seeds`` probe samples, in the task's perturbation space, every ``every_n_epochs``-th
evaluation of the monitor (its own schedule: the swarm costs ``seeds × particles × (generations + 1)``
forwards, 16 × 16 × 11 = 2,816 at the defaults, where coverage costs one per probe sample). It logs,
under ``compass/neurons/generation/``:

==============  ==================================================================================
error_rate      the fraction of seeds with at least one test error
errors_found    test errors per seed (one test per seed and generation: at most ``generations``)
categories      distinct wrong classes per seed (the papers' error categories, averaged over seeds)
mean_fitness    the best fitness after the last generation, averaged over seeds
==============  ==================================================================================

The fitness is the sensitive-neuron fraction (the NBC variant needs training ranges: call
:func:`~compass_lightning.neurons.generate_tests` with ``fitness="nbc"`` directly). And an image of
the seeds above their last generated test, labelled with the model's predictions
(framed red where the test is an error). Every process runs the same seeds, so the numbers agree
under DDP without a gather (the swarm is cheap next to the probe's analyses at these sizes).

Example:
    >>> config = check_generation({"seeds": 8, "generations": 5})
    >>> config["particles"], config["every_n_epochs"], generation_tags()[0]
    (16, 5, 'compass/neurons/generation/error_rate')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from compass_lightning.engine.checks import check_choice, check_int, check_real
from compass_lightning.engine.evaluation import Evaluation
from compass_lightning.engine.samples import take, to
from compass_lightning.neurons.generation import NORMS, generate_tests
from compass_lightning.reporting.figures import labelled_image_grid
from compass_lightning.reporting.tags import tag

PREFIX = tag("neurons", "generation")
METRICS = ("error_rate", "errors_found", "categories", "mean_fitness")
DEFAULTS: dict[str, Any] = {"seeds": 16, "particles": 16, "generations": 10, "bound": 1.0, "norm": "l2", "every_n_epochs": 5}
_CHECKS = {
    "seeds": lambda n, v: check_int(n, v, minimum=1),
    "particles": lambda n, v: check_int(n, v, minimum=1),
    "generations": lambda n, v: check_int(n, v, minimum=1),
    "bound": lambda n, v: check_real(n, v, low=0.0, low_open=True),
    "norm": lambda n, v: check_choice(n, v, NORMS),
    "every_n_epochs": lambda n, v: check_int(n, v, minimum=1),
}


def check_generation(value: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """``value`` (``None``: off; ``{}``: the defaults) with every key checked and the defaults filled in."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"test_generation must be None or a dict of settings from {', '.join(DEFAULTS)}, got {value!r}")
    unknown = [k for k in value if k not in DEFAULTS]
    if unknown:
        raise ValueError(f"test_generation: unknown setting {unknown[0]!r}; choose from: {', '.join(DEFAULTS)}")
    return {key: _CHECKS[key](f"test_generation['{key}']", value[key]) if key in value else default
            for key, default in DEFAULTS.items()}


def generation_tags() -> list[str]:
    """The scalar tags of one test generation."""
    return [f"{PREFIX}/{m}" for m in METRICS]


def due(config: Optional[Mapping[str, Any]], evaluations: int) -> bool:
    """Whether the generation runs at the monitor's evaluation number ``evaluations`` (0, 1, ...):
    the first, then every ``every_n_epochs``-th."""
    return config is not None and evaluations % config["every_n_epochs"] == 0


def run_generation(evaluation: Evaluation, config: Mapping[str, Any], layers: Optional[list[str]], seed: int) -> None:
    """Generate tests around the first ``config["seeds"]`` probe samples and put the scalars (and,
    if wanted, the image) into ``evaluation``."""
    model, probe, task = evaluation.model, evaluation.probe, evaluation.task
    inputs = to(take(probe.inputs, slice(0, config["seeds"])), evaluation.device)
    targets = probe.targets[: config["seeds"]].to(evaluation.device)
    x = task.to_space(inputs, model)
    found = generate_tests(task.space_model(model, inputs), x, targets, particles=config["particles"],
                           generations=config["generations"], bound=config["bound"], norm=config["norm"],
                           layers=layers, input_range=task.input_range, batch_size=evaluation.batch_size, seed=seed,
                           progress=False)  # the trainer's bar shows the module running
    values = {"error_rate": found.error_rate, "errors_found": found.errors_found.float().mean(),
              "categories": found.categories.float().mean(), "mean_fitness": found.fitness[:, -1].mean()}
    evaluation.scalars.update({f"{PREFIX}/{name}": float(value) for name, value in values.items()})
    if evaluation.want_images and (shown := task.display(x[:8])) is not None:
        last = found.tests[:8, -1]
        evaluation.images[f"{PREFIX}/examples"] = labelled_image_grid(
            {"seed": shown, "generated": task.display(last)},
            {"seed": targets[:8].cpu(), "generated": found.predictions[:8, -1].cpu()}, reference="seed",
            correct={"generated": ~found.errors[:8, -1].cpu()},
            title=f"epoch {evaluation.epoch}: DeepSensor tests (last generation, ‖δ‖ ≤ {config['bound']:g} {config['norm']})\n"
            f"{int(found.errors_found.sum())} test errors on {len(x)} seeds, red: misclassified",
        )
