"""Pruning: exact rates, identities, torch's own global pruning, closed forms, and the live model untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DigitsDataModule, assert_same_state, snapshot, train_digits
from torch import nn
from torch.nn.utils import prune as torch_prune

from compass_lightning.pruning import (
    IMPORTANCES, PrunedCopies, PruningSweep, importance, prunable, prune, sparsity, trained_copy,
)


@pytest.fixture(scope="module")
def trained(trained_digits):
    """The session's trained digits model with validation data in its own (normalised) input space."""
    model, pixels, y, task = trained_digits
    x = task.from_pixels(pixels)
    return model, x, y, [(x[i : i + 64], y[i : i + 64]) for i in range(0, 192, 64)]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("rate", [0.35, 0.4, 0.45, 0.5, 0.99])
def test_achieved_sparsity_equals_the_rate_to_one_weight(trained, rate):
    model, _, _, batches = trained
    total = sum(m.weight.numel() for m in prunable(model).values())
    pruned = prune(model, importance(model, "taylor", batches), rate)
    assert abs(sparsity(pruned) * total - round(rate * total)) <= 1


def test_rate_zero_reproduces_the_model_exactly(trained):
    model, x, _, batches = trained
    pruned = prune(model, importance(model, "magnitude", batches), 0.0)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_magnitude_equals_torch_global_l1_pruning(trained):
    model, _, _, batches = trained
    ours = prune(model, importance(model, "magnitude", batches), 0.4)
    reference = copy.deepcopy(model)
    torch_prune.global_unstructured([(e.module, e.attribute) for e in prunable(reference).values()], torch_prune.L1Unstructured, amount=0.4)
    for name, entry in prunable(reference).items():
        assert torch.equal(prunable(ours)[name].weight == 0, entry.weight == 0), name


def test_taylor_and_obd_equal_their_closed_forms_on_a_linear_model():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    residual = F.softmax(linear(x), dim=1).detach() - F.one_hot(y, 3)  # d CE_i / d logits
    per_sample = residual[:, :, None] * x[:, None, :]  # d CE_i / d W, (N, 3, 5)
    w = linear.weight.detach()
    name = "weight"  # the root module's weight
    taylor = importance(linear, "taylor", [(x[:16], y[:16]), (x[16:], y[16:])])[name]
    # Molchanov et al.: each batch's (w g_b)^2, g_b its mean gradient, averaged over the batches
    per_batch = [(w * per_sample[:16].mean(0)).pow(2), (w * per_sample[16:].mean(0)).pow(2)]
    assert torch.allclose(taylor, (per_batch[0] + per_batch[1]) / 2, atol=1e-7)
    obd = importance(linear, "obd", [(x[:16], y[:16]), (x[16:], y[16:])])[name]
    assert torch.allclose(obd, 0.5 * per_sample.pow(2).mean(0) * w.pow(2), atol=1e-7)


def test_taylor_of_two_batches_with_opposite_gradients_is_not_zero():
    # near a minimum the batches pull in opposite directions: the squared mean gradient is 0 (noise), the
    # mean of the per-batch squares is not
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        linear.weight.fill_(1.0)  # equal logits: the two targets give exactly opposite gradients
    x = torch.tensor([[1.0, 0.0]])
    batches = [(x, torch.tensor([0])), (x, torch.tensor([1]))]  # the same input, opposite targets
    g = [torch.softmax(linear(x), 1).detach() - F.one_hot(torch.tensor([c]), 2) for c in (0, 1)]
    per_batch = [(linear.weight.detach() * (gi.T @ x)).pow(2) for gi in g]
    assert torch.allclose((g[0] + g[1]), torch.zeros(1, 2), atol=1e-7)  # the mean gradient vanishes
    taylor = importance(linear, "taylor", batches)["weight"]
    assert torch.allclose(taylor, (per_batch[0] + per_batch[1]) / 2, atol=1e-7) and taylor.max() > 0.1


def test_structured_pruning_zeros_whole_filters_and_keeps_the_classifier(trained):
    model, _, _, batches = trained
    pruned = prune(model, importance(model, "magnitude", batches), 0.4, structured=True)
    modules = prunable(pruned)
    for name, module in modules.items():
        zero_rows = (module.weight.flatten(1) == 0).all(dim=1)
        any_zero = (module.weight.flatten(1) == 0).any(dim=1)
        assert torch.equal(zero_rows, any_zero), f"{name}: a filter is only partly zero"
    assert not (list(modules.values())[-1].weight == 0).any()  # the class outputs are left whole
    assert 0.3 < sparsity(pruned) <= 0.4


def test_accuracy_falls_to_chance_at_099_while_a_moderate_rate_is_safe(trained):
    model, x, y, batches = trained
    clean = _accuracy(model, x, y)
    for method in ("magnitude", "taylor", "obd"):
        scores = importance(model, method, batches)
        assert _accuracy(prune(model, scores, 0.99), x, y) < 0.25, method
        assert _accuracy(prune(model, scores, 0.2), x, y) >= clean - 0.05, method


#: Short episodes for the methods that train their copy (the state checks need no long schedule).
SHORT = {"greg2": {"pick_steps": 2, "steps": 3}, "asl": {"steps": 3}}


@pytest.mark.parametrize("method", list(IMPORTANCES))
def test_the_live_model_is_untouched(trained, method):
    _, x, y, batches = trained
    model = train_digits(epochs=1)
    model.net[1].train()  # a BatchNorm left in train mode
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    pruned = PrunedCopies(model, method, batches, **SHORT.get(method, {})).at(0.5)
    assert_same_state(before, snapshot(model))
    assert pruned is not model and sparsity(pruned) == pytest.approx(0.5, abs=1e-4)
    assert all(torch.isfinite(p).all() and not p.requires_grad for p in pruned.parameters())
    assert IMPORTANCES[method].changes_weights == (method in ("greg2", "asl"))


@pytest.fixture(scope="module")
def training_batches():
    data = DigitsDataModule()
    data.setup()
    x, y = data.train_set.tensors
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]


def test_greg2_and_asl_prune_the_copy_they_trained_and_keep_more_accuracy_than_magnitude_at_a_high_rate(
    trained, training_batches,
):
    """AI-Compass Table 6's trend (GReg-2 0.78 against Taylor 0.06 at 50 % on ResNet-50): the
    methods that train on while they prune lose less than one-shot magnitude pruning."""
    model, x, y, _ = trained
    magnitude = PrunedCopies(model, "magnitude", training_batches)
    accuracy = {"magnitude": {rate: _accuracy(magnitude.at(rate), x, y) for rate in (0.5, 0.9)}}
    zeros = {"magnitude": {rate: [w == 0 for w in magnitude.at(rate).state_dict().values()] for rate in (0.5, 0.9)}}
    for method in ("greg2", "asl"):
        copies = PrunedCopies(model, method, training_batches)
        accuracy[method], zeros[method] = {}, {}
        for rate in (0.5, 0.9):
            pruned = copies.at(rate)
            assert sparsity(pruned) == pytest.approx(rate, abs=1e-4)
            accuracy[method][rate] = _accuracy(pruned, x, y)
            zeros[method][rate] = [w == 0 for w in pruned.state_dict().values()]
            # the kept weights are the trained copy's, not the original ones
            kept = [(p, q) for p, q in zip(pruned.state_dict().values(), model.state_dict().values()) if p.is_floating_point()]
            assert any(not torch.equal(p, q) for p, q in kept)
        for rate in (0.5, 0.9):
            assert any(not torch.equal(a, b) for a, b in zip(zeros[method][rate], zeros["magnitude"][rate])), (method, rate)
        assert accuracy[method][0.9] > accuracy["magnitude"][0.9] + 0.1, accuracy
        assert accuracy[method][0.5] >= accuracy["magnitude"][0.5] - 0.02, accuracy


def test_greg2_drives_the_weights_it_removes_towards_zero_before_pruning_them(trained, training_batches):
    model = trained[0]
    copy_, scores = trained_copy(model, "greg2", training_batches, 0.5)
    chosen = torch.cat([(s < 0).flatten() for s in scores.values()])
    weights = torch.cat([prunable(copy_)[n].weight.abs().flatten() for n in scores])
    original = torch.cat([prunable(model)[n].weight.abs().flatten() for n in scores])
    assert chosen.float().mean().item() == pytest.approx(0.5, abs=1e-3)
    # before pruning, the penalised weights have shrunk to a small fraction of where they started
    assert weights[chosen].mean() < 0.1 * original[chosen].mean()
    assert weights[~chosen].mean() > 0.5 * original[~chosen].mean()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, b: prune(m, importance(m, "magnitude", b), 1.0), r"rate must be a number in \[0.0, 1.0\)"),
        (lambda m, b: prune(m, importance(m, "magnitude", b), -0.1), r"rate must be a number"),
        (lambda m, b: importance(m, "snip", b), "unknown importance 'snip'; choose from: magnitude, taylor, obd"),
        (lambda m, b: PrunedCopies(m, "greg2", b, steps=0).at(0.5), r"greg2.steps must be"),
        (lambda m, b: importance(m, "greg2", b), "greg2' trains the copy it prunes"),
        (lambda m, b: PrunedCopies(m, "asl", b, structured=True), "structured: 'asl' prunes single weights"),
        (lambda m, b: prune(m, {}, 0.3), "scores lack net.0.weight"),
    ],
)
def test_bad_input(call, message, trained):
    model, _, _, batches = trained
    with pytest.raises(ValueError, match=message):
        call(model, batches)


@pytest.mark.parametrize("structured", [False, True])
def test_the_sweep_equals_prune_at_every_rate_and_leaves_the_model_alone(trained, structured):
    model, x, _, batches = trained
    before = snapshot(model)
    scores = importance(model, "taylor", batches)
    sweep = PruningSweep(model, scores, structured=structured)
    for rate in (0.5, 0.1, 0.0, 0.9):  # out of order: each rate starts from the original weights
        reference = prune(model, scores, rate, structured=structured)
        with torch.no_grad():
            assert torch.equal(sweep.at(rate)(x), reference(x)), rate
    assert_same_state(before, snapshot(model))


def test_max_safe_rate_is_the_largest_rate_within_the_tolerance_even_after_an_unsafe_one():
    from compass_lightning.pruning import max_safe_rate

    drops = {0.1: 0.0, 0.2: 0.02, 0.3: 0.01, 0.4: 0.0100001, 0.5: -0.01}  # not monotone: 0.5 happens to be safe
    assert max_safe_rate(drops, tolerance=0.01) == 0.5
    assert max_safe_rate({0.1: 0.2}, tolerance=0.01) == 0.0
    assert max_safe_rate(drops, tolerance=0.0) == 0.5 and max_safe_rate({0.1: 0.0, 0.2: 0.001}, tolerance=0.0) == 0.1


def test_a_rate_of_all_parameters_counts_biases_in_the_denominator_and_both_sparsities_are_reported():
    from compass_lightning.pruning import parameter_count

    torch.manual_seed(0)
    net = nn.Linear(4, 2)  # 8 prunable weights, 10 parameters
    scores = importance(net, "magnitude", [])
    assert (parameter_count(net), parameter_count(net, "all")) == (8, 10)
    of_all = prune(net, scores, 0.4, of="all")  # 0.4 of 10 parameters: 4 weights
    assert int((of_all.weight == 0).sum()) == 4 and sparsity(of_all) == 0.5 and sparsity(of_all, of="all") == 0.4
    assert int((prune(net, scores, 0.4).weight == 0).sum()) == 3  # round(0.4 * 8)
    assert sparsity(PruningSweep(net, scores, of="all").at(0.4), of="all") == 0.4
    with pytest.raises(ValueError, match="only 8 are prunable"):
        prune(net, scores, 0.9, of="all")
    with pytest.raises(ValueError, match="of must be one of"):
        prune(net, scores, 0.4, of="weights")


def test_pruned_copies_read_batches_given_as_an_iterator_once_for_every_method(trained):
    model, x, y, batches = trained
    for method in ("taylor", "greg2"):
        params = SHORT.get(method, {})
        from_list = PrunedCopies(model, method, batches, **params).at(0.5)
        from_iterator = PrunedCopies(model, method, iter(batches), **params).at(0.5)
        assert all(torch.equal(a, b) for a, b in zip(from_list.state_dict().values(), from_iterator.state_dict().values())), method


def test_the_closed_form_fisher_equals_every_per_sample_gradient():
    # strides, dilation, groups, Conv1d, a Linear on (N, positions, features) and in-place ReLUs after
    # the layers: the one-backward closed form must give what vmap over every sample gives
    from compass_lightning.pruning.fisher import squared_sample_gradients
    from compass_lightning.pruning.importance import _vmap_squares

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 4, 3, stride=2, padding=1)
            self.b = nn.Conv2d(4, 4, 3, dilation=2, padding=2, groups=2, bias=False)
            self.c = nn.Conv1d(4, 3, 2)
            self.d = nn.Linear(3, 5)
            self.e = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu_(self.b(torch.relu_(self.a(x))))  # (N, 4, 4, 4)
            h = torch.relu_(self.c(h.flatten(2)))  # (N, 3, 15)
            return self.e(torch.relu_(self.d(h.transpose(1, 2)))).mean(1)

    torch.manual_seed(0)
    net = Net().eval()
    x, y = torch.rand(6, 2, 8, 8), torch.randint(0, 3, (6,))
    names = {f"{n}.weight": getattr(net, n) for n in "abcde"}
    fast = squared_sample_gradients(net, names, x, y, F.cross_entropy)
    reference = _vmap_squares(net, {n: m.weight for n, m in names.items()}, x, y, F.cross_entropy)
    for name in names:
        assert torch.allclose(fast[name], reference[name], rtol=1e-4, atol=1e-9), name


def test_obd_falls_back_to_vmap_where_the_closed_form_does_not_hold():
    # a layer run twice per forward: the closed form refuses it and OBD still equals the per-sample reference
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(4, 2)).eval()
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    obd = importance(net, "obd", [(x, y)])
    per_sample = [torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), shared.weight)[0] for i in range(5)]
    assert torch.allclose(obd["0.weight"], 0.5 * torch.stack(per_sample).pow(2).mean(0) * shared.weight.detach().pow(2), atol=1e-7)
