"""DeepSensor's particle-swarm test generation (neurons/generation.py): climbing, bounds, reproducibility, counts."""

import pytest
import torch
from torch import nn

from compass_lightning.neurons import neuron_values, profile_ranges, select_layers
from compass_lightning.neurons.generation import GeneratedTests, _project, generate_tests, swarm_fitness

PARTICLES, GENERATIONS = 16, 10


def sensitive_model() -> nn.Module:
    """8x8 inputs; 16 hidden neurons all reading one direction ``u`` with gains 0.55 ... 20, so a
    neuron is sensitive (``gain · |cos(δ, u)| > 0.5``) the better the perturbation aligns with ``u``:
    a fitness the swarm can climb, where a random direction in 64 dimensions is nearly orthogonal."""
    torch.manual_seed(0)
    u = torch.randn(64)
    u /= u.norm()
    gains = torch.logspace(torch.log10(torch.tensor(0.55)), torch.log10(torch.tensor(20.0)), 16)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].weight.copy_(gains[:, None] * u[None])
        net[1].bias.zero_()
        net[2].weight.mul_(0.01)
    return net


@pytest.fixture
def seeds():
    return torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.25


def random_search_best(net, seeds, candidates_per_seed, bound=1.0):
    """The best fitness per seed of as many uniformly random points of the bound as the swarm evaluates."""
    chosen = select_layers(net, example=seeds[:1])
    clean = neuron_values(net, seeds, chosen).values
    delta = torch.rand(len(seeds), candidates_per_seed, *seeds.shape[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1
    flat = (seeds[:, None] + _project(delta * bound, bound, "l2")).clamp(0, 1).flatten(0, 1)
    values = neuron_values(net, flat, chosen).values
    distance = (flat - seeds.repeat_interleave(candidates_per_seed, 0)).flatten(1).norm(dim=1)
    repeated = {name: v.repeat_interleave(candidates_per_seed, 0) for name, v in clean.items()}
    return swarm_fitness(chosen, repeated, values, distance).view(len(seeds), -1).max(1).values


def test_the_swarm_climbs_above_random_search_with_the_same_budget(seeds):
    net = sensitive_model()
    found = generate_tests(net, seeds, particles=PARTICLES, generations=GENERATIONS, seed=0)
    assert found.fitness.shape == (8, GENERATIONS + 1)
    assert bool((found.fitness[:, 1:] >= found.fitness[:, :-1]).all())  # the global best is kept
    assert found.fitness[:, -1].mean() > found.fitness[:, 0].mean() + 0.05  # it rises over the generations
    random = random_search_best(net, seeds, PARTICLES * (GENERATIONS + 1))
    assert found.fitness[:, -1].mean() > random.mean() + 0.02, (found.fitness[:, -1].mean(), random.mean())


@pytest.mark.parametrize("norm, bound", [("l2", 1.0), ("linf", 0.05)])
def test_tests_stay_within_the_bound_and_the_pixel_range_and_their_predictions_are_the_models(seeds, norm, bound):
    net = sensitive_model()
    found = generate_tests(net, seeds, particles=4, generations=3, norm=norm, bound=bound, seed=0)
    delta = (found.tests - seeds[:, None]).flatten(2)
    size = delta.norm(dim=2) if norm == "l2" else delta.abs().amax(dim=2)
    assert bool((size <= bound + 1e-5).all()) and found.tests.min() >= 0 and found.tests.max() <= 1
    with torch.no_grad():
        predicted = net(found.tests.flatten(0, 1)).argmax(1).view(8, 3)
    assert torch.equal(found.predictions, predicted)
    assert torch.equal(found.errors, predicted != net(seeds).argmax(1)[:, None])


def test_same_seed_same_tests_chunking_changes_nothing_and_the_live_model_is_untouched(seeds):
    net = sensitive_model().train()
    net[2].weight.grad = torch.ones_like(net[2].weight)
    before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = generate_tests(net, seeds, particles=4, generations=3, seed=7)
    assert torch.equal(torch.rand(1), expected_draw)  # the global random state is not consumed
    again = generate_tests(net, seeds, particles=4, generations=3, seed=7, batch_size=5)
    other = generate_tests(net, seeds, particles=4, generations=3, seed=8)
    assert torch.allclose(first.tests, again.tests) and torch.equal(first.fitness, again.fitness)
    assert not torch.equal(first.tests, other.tests)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert torch.equal(net[2].weight.grad, torch.ones_like(net[2].weight)) and net[1].weight.grad is None


def test_the_nbc_fitness_adds_the_corners_beyond_the_training_ranges():
    layers, seed = ["fc"], {"fc": torch.zeros(2, 2)}
    values = {"fc": torch.tensor([[2.0, 0.0], [0.2, -3.0]])}
    ranges = {"fc": (torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))}
    distance = torch.tensor([1.0, 1.0])
    plain = swarm_fitness(layers, seed, values, distance)
    assert plain.tolist() == [0.5, 0.5]  # one neuron of two moved by more than 0.5 per unit
    # row 0: neuron 0 above its range (1 corner of 4); row 1: neuron 1 below (1 of 4)
    assert swarm_fitness(layers, seed, values, distance, ranges=ranges).tolist() == [0.75, 0.75]
    net = sensitive_model()
    data = torch.rand(32, 1, 8, 8)
    found = generate_tests(net, data[:4], particles=4, generations=2, fitness="nbc", ranges=profile_ranges(net, [data]))
    assert found.fitness.shape == (4, 3)


def test_errors_found_and_categories_count_as_the_papers_do():
    tests = torch.zeros(3, 4, 1)
    predictions = torch.tensor([[1, 2, 2, 0], [0, 0, 0, 0], [3, 3, 1, 0]])
    labels = torch.tensor([0, 0, 1])
    found = GeneratedTests(torch.zeros(3, 1), labels, tests, predictions, predictions != labels[:, None],
                           torch.zeros(3, 5), torch.zeros(3, 5))
    assert found.errors_found.tolist() == [3, 0, 3]  # misclassified tests over the generations
    assert found.categories.tolist() == [2, 0, 2]  # distinct wrong classes: {1, 2}, {}, {3, 0}
    assert found.error_rate.item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("argument, value", [
    ("particles", 0), ("generations", 0), ("bound", 0.0), ("norm", "l1"), ("fitness", "coverage"),
    ("inertia", (0.4,)), ("threshold", -1.0), ("batch_size", 0),
])
def test_bad_arguments_name_themselves(seeds, argument, value):
    with pytest.raises((ValueError, TypeError), match=argument):
        generate_tests(sensitive_model(), seeds, **{argument: value})


def test_nbc_fitness_without_ranges_is_refused(seeds):
    with pytest.raises(ValueError, match="ranges"):
        generate_tests(sensitive_model(), seeds, fitness="nbc")


@pytest.mark.parametrize("progress", [True, False])
def test_a_progress_bar_over_the_generations_only_when_asked(seeds, capsys, progress):
    generate_tests(sensitive_model(), seeds[:2], particles=2, generations=3, progress=progress)
    shown = capsys.readouterr().err
    assert ("test generation" in shown) if progress else shown == ""
