"""DeepSensor's test generation: a particle swarm per seed that maximises the sensitive neurons.

DeepSensor (its Algorithm 1; ``research/deepsensor.md`` §1.4) searches, around each seed input, for
inputs that make many neurons sensitive, and counts the searched inputs the model misclassifies as
test errors. Here every seed gets ``particles`` particles, and all ``seeds × particles`` go
through the model in one batched forward per generation. The update is the papers':

* inertia ``ω_g = (ω_init − ω_end)(G − g)/G + ω_end`` (their ω_init = 0.4, ω_end = 0.9);
* velocity ``v ← ω_g v + c1 r1 (p_best − x) + c2 r2 (g_best − x)``, c1 = c2 = 2, ``r ~ U[0, 1]`` per
  element; position ``x ← x + v``.

Where the papers leave it open (``research/deepsensor.md`` §6), this module decides:

* **fitness** (pitfalls 5 and 7), per seed: the fraction of the chosen layers' neurons with
  ``|φ_n(x*) − φ_n(x)| / ‖x* − x‖₂ > λ`` (λ = 0.5; the sensitivity of
  :mod:`~compass_lightning.neurons.sensitivity`, absolute), 0 where ``x* = x``. ``fitness="nbc"``
  adds the particle's neuron-boundary coverage against training ranges (the fraction of neuron
  corners beyond ``[low, high]``): the authors' code's "NBC + sensitivity";
* ``p_best`` and ``g_best`` are positions, kept with their fitness (pitfall 12);
* a **perturbation bound** (pitfall 11): ``‖x* − x‖₂ ≤ 1`` by default (the papers' MNIST/CIFAR-10
  coverage setting), or an L∞ bound, and the pixel range; positions are projected after each move.
  With c1 = c2 = 2 and a rising inertia, velocities diverge (pitfall 8), so they are clipped to the
  bound's size (per element for L∞, in norm for L2);
* **initialisation**: positions uniform in the bound around the seed (the papers' random
  initialisation, their better choice), velocity the initial perturbation (their "the velocity is
  the perturbed value Δx");
* no early stop (the papers' ε = 1 with a strict ``>`` never fires, pitfall 9);
* **tests**: after each generation a seed's ``g_best`` position is its test (one per seed and
  generation, as the papers count test errors), an error when the model's prediction differs from
  the seed's label.

Written here because no maintained library implements DeepSensor's swarm (the authors' code is
Keras, one particle per seed, for MNIST).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> found = generate_tests(net, torch.rand(4, 6), particles=8, generations=3, seed=0)
    >>> tuple(found.tests.shape), tuple(found.fitness.shape), tuple(found.errors.shape)
    ((4, 3, 6), (4, 4), (4, 3))
    >>> bool((found.fitness[:, 1:] >= found.fitness[:, :-1]).all())  # the best never gets worse
    True
    >>> again = generate_tests(net, found.seeds, particles=8, generations=3, seed=0)
    >>> torch.equal(found.tests, again.tests), net.training
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from compass_lightning.engine.checks import check_choice, check_int, check_interval, check_real
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.rng import draw
from compass_lightning.neurons._layers import neuron_values, select_layers
from compass_lightning.neurons.coverage import Ranges

FITNESS = ("sensitivity", "nbc")
NORMS = ("l2", "linf")


@dataclass(frozen=True)
class GeneratedTests:
    """What :func:`generate_tests` found, per seed (``S`` seeds, ``G`` generations).

    ``seeds`` and ``labels`` (``(S,)``, what counts as correct); ``tests`` (``(S, G, ...)``: each
    generation's best position), ``predictions`` and ``errors`` (``(S, G)``: the model's prediction
    on each test, and whether it differs from the label); ``fitness`` (``(S, G + 1)``: the best
    fitness before the first generation and after each) and ``mean_fitness`` (the same, over all
    of the seed's particles).

    Example:
        >>> predictions = torch.tensor([[1, 2, 1], [0, 0, 0]])
        >>> found = GeneratedTests(torch.zeros(2, 1), torch.tensor([0, 0]), torch.zeros(2, 3, 1), predictions,
        ...                        predictions != 0, torch.zeros(2, 4), torch.zeros(2, 4))
        >>> found.errors_found.tolist(), found.categories.tolist(), found.error_rate.item()
        ([3, 0], [2, 0], 0.5)
    """

    seeds: Tensor
    labels: Tensor
    tests: Tensor
    predictions: Tensor
    errors: Tensor
    fitness: Tensor
    mean_fitness: Tensor

    @property
    def errors_found(self) -> Tensor:
        """``(S,)`` the test errors of each seed (misclassified tests over the generations)."""
        return self.errors.sum(1)

    @property
    def categories(self) -> Tensor:
        """``(S,)`` the distinct wrong classes among each seed's test errors (the papers' error
        categories per seed; their "#error categories" is the sum)."""
        wrong = torch.where(self.errors, self.predictions, -1)
        classes = int(self.predictions.max()) + 2 if self.predictions.numel() else 1
        hits = torch.zeros(len(wrong), classes, dtype=torch.bool, device=wrong.device)
        hits.scatter_(1, wrong + 1, True)  # column 0 collects the correct tests
        return hits[:, 1:].sum(1)

    @property
    def error_rate(self) -> Tensor:
        """The fraction of seeds with at least one test error."""
        return (self.errors_found > 0).float().mean()


def swarm_fitness(
    layers: Iterable[str], seed_values: dict[str, Tensor], values: dict[str, Tensor], distance: Tensor, *,
    threshold: float = 0.5, ranges: Ranges | None = None,
) -> Tensor:
    """``(N,)`` DeepSensor fitness of ``N`` candidates (see the module docstring): the fraction of
    neurons whose sensitivity ``|φ(x*) − φ(x)| / ‖x* − x‖₂`` exceeds ``threshold``, from the
    candidates' ``values`` and their seeds' ``seed_values`` (``{layer: (N, neurons)}`` each) and the
    ``(N,)`` L2 ``distance`` to the seed (0: fitness 0), over the neurons of the ``layers`` named;
    plus their NBC against ``ranges`` if given.

    Example:
        >>> layers = ["fc"]
        >>> seed, moved = {"fc": torch.tensor([[0.0, 0.0]])}, {"fc": torch.tensor([[2.0, 0.1]])}
        >>> swarm_fitness(layers, seed, moved, torch.tensor([1.0]))  # neuron 0 moved by 2 > 0.5
        tensor([0.5000])
        >>> swarm_fitness(layers, seed, moved, torch.tensor([0.0]))  # no move, no sensitivity
        tensor([0.])
    """
    layers = list(layers)
    moved = distance > 0
    per_unit = torch.where(moved, 1 / distance.clamp_min(torch.finfo(distance.dtype).tiny), 0.0).unsqueeze(1)
    sensitive = sum(((values[n] - seed_values[n]).abs() * per_unit > threshold).sum(1) for n in layers)
    neurons = sum(values[n].shape[1] for n in layers)
    fitness = sensitive.float() / neurons
    if ranges:
        corners = sum(((values[n] > ranges[n][1].to(values[n].device)).sum(1)
                       + (values[n] < ranges[n][0].to(values[n].device)).sum(1)) for n in layers)
        fitness = fitness + corners.float() / (2 * neurons)
    return fitness


def _project(delta: Tensor, bound: float, norm: str) -> Tensor:
    """``delta`` (``(S, P, ...)``) moved into the ball of radius ``bound``."""
    if norm == "linf":
        return delta.clamp(-bound, bound)
    size = delta.flatten(2).norm(dim=2).view(*delta.shape[:2], *[1] * (delta.dim() - 2))
    return delta * (bound / size.clamp_min(bound)).clamp(max=1.0)


def generate_tests(
    model: nn.Module,
    seeds: Tensor,
    labels: Tensor | None = None,
    *,
    particles: int = 16,
    generations: int = 10,
    bound: float = 1.0,
    norm: str = "l2",
    inertia: tuple[float, float] = (0.4, 0.9),
    c1: float = 2.0,
    c2: float = 2.0,
    threshold: float = 0.5,
    fitness: str = "sensitivity",
    ranges: Ranges | None = None,
    layers: Sequence[str] | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> GeneratedTests:
    """DeepSensor's particle-swarm test generation around ``seeds`` (see the module docstring).

    Args:
        model: a classifier taking ``seeds``-shaped batches; run inside the guard (eval mode, its
            parameters, ``.grad``, modes and the global random state untouched).
        seeds: ``(S, ...)`` inputs to search around.
        labels: ``(S,)`` the classes that count as correct (default: the model's predictions on ``seeds``).
        particles: particles per seed; generations: moves of the swarm (the papers' G_k = 10).
        bound: the perturbation budget in ``norm`` (``"l2"``: the papers' 1 for MNIST and CIFAR-10; ``"linf"``).
        inertia: ``(ω_init, ω_end)`` (either may be the larger: the papers' inertia rises).
        c1, c2: the cognitive and social weights.
        threshold: λ, above which a neuron is sensitive.
        fitness: ``"sensitivity"`` (the papers' Eq. 2) or ``"nbc"`` (plus NBC against ``ranges``).
        ranges: training ranges from :func:`~compass_lightning.neurons.profile_ranges` (``fitness="nbc"``).
        layers: the layers whose neurons count (default: every Conv2d and Linear, as everywhere).
        input_range: the pixel range the tests stay in.
        batch_size: at most this many particles per forward (default: all ``S × particles``).
        seed: seed of the swarm's random numbers (the same seed gives the same tests).
        progress: a tqdm bar over the generations; ``None`` (the default): only on a terminal.
    """
    check_choice("fitness", fitness, FITNESS)
    check_choice("norm", norm, NORMS)
    if fitness == "nbc" and not ranges:
        raise ValueError("fitness='nbc' needs ranges= from profile_ranges() on training data")
    particles, generations = check_int("particles", particles, minimum=1), check_int("generations", generations, minimum=1)
    bound = check_real("bound", bound, low=0.0, low_open=True)
    for name, value in (("c1", c1), ("c2", c2), ("threshold", threshold)):
        check_real(name, value, low=0.0)
    check_interval("inertia", inertia, low=0.0, strict=False)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    low, high = check_interval("input_range", input_range, finite=False)
    with analysis_mode(model, seed=seed):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        seeds = seeds.detach()
        chosen = select_layers(model, layers, example=seeds[:1])
        clean = neuron_values(model, seeds, chosen, extents=False)
        labels = clean.logits.argmax(1) if labels is None else labels.to(seeds.device)
        count, shape = len(seeds), seeds.shape[1:]
        repeated = {n: v.repeat_interleave(particles, 0) for n, v in clean.values.items()}
        origin = seeds.unsqueeze(1)

        def evaluate(position: Tensor) -> tuple[Tensor, Tensor]:
            flat = position.flatten(0, 1)
            scores, predicted = [], []
            step = batch_size or len(flat)
            for start in range(0, len(flat), step):
                part = slice(start, start + step)
                seen = neuron_values(model, flat[part], chosen, extents=False)
                distance = (flat[part] - origin.expand_as(position).flatten(0, 1)[part]).flatten(1).norm(dim=1)
                scores.append(swarm_fitness(chosen, {n: v[part] for n, v in repeated.items()}, seen.values, distance,
                                            threshold=threshold, ranges=ranges if fitness == "nbc" else None))
                predicted.append(seen.logits.argmax(1))
            return torch.cat(scores).view(count, particles), torch.cat(predicted).view(count, particles)

        def uniform(size: tuple[int, ...]) -> Tensor:
            return draw(torch.rand, size, generator, seeds)

        start = (uniform((count, particles, *shape)) * 2 - 1) * bound
        position = (origin + _project(start, bound, norm)).clamp(low, high)
        velocity = position - origin
        score, predicted = evaluate(position)
        best_position, best_score, best_predicted = position.clone(), score.clone(), predicted.clone()
        top = score.argmax(1)
        rows = torch.arange(count, device=seeds.device)
        global_position, global_score, global_predicted = position[rows, top], score[rows, top], predicted[rows, top]
        history, mean_history = [global_score], [score.mean(1)]
        tests, predictions = [], []
        first, last = inertia
        bar = tqdm(range(generations), desc="test generation", unit="generation", leave=False,
                   disable=None if progress is None else not progress)
        for g in bar:
            omega = (first - last) * (generations - g) / generations + last
            velocity = (omega * velocity + c1 * uniform(velocity.shape) * (best_position - position)
                        + c2 * uniform(velocity.shape) * (global_position.unsqueeze(1) - position))
            velocity = _project(velocity, bound, norm)  # the velocity limit: no faster than the bound
            position = (origin + _project(position + velocity - origin, bound, norm)).clamp(low, high)
            score, predicted = evaluate(position)
            better = score > best_score
            mask = better.view(count, particles, *[1] * len(shape))
            best_position = torch.where(mask, position, best_position)
            best_score, best_predicted = torch.where(better, score, best_score), torch.where(better, predicted, best_predicted)
            top = best_score.argmax(1)
            improved = best_score[rows, top] > global_score
            global_position = torch.where(improved.view(count, *[1] * len(shape)), best_position[rows, top], global_position)
            global_predicted = torch.where(improved, best_predicted[rows, top], global_predicted)
            global_score = torch.maximum(global_score, best_score[rows, top])
            history.append(global_score)
            mean_history.append(score.mean(1))
            tests.append(global_position)
            predictions.append(global_predicted)
    predictions_ = torch.stack(predictions, 1)
    return GeneratedTests(seeds, labels, torch.stack(tests, 1), predictions_, predictions_ != labels.unsqueeze(1),
                          torch.stack(history, 1), torch.stack(mean_history, 1))
