"""Attacks: budgets and bounds, reductions between attacks, closed forms, and agreement with torchattacks."""

import math

import pytest
import torch
import torchattacks
from conftest import snapshot, assert_same_state, awkward_net

from compass_lightning.attacks import ATTACKS, fgsm, ifgsm, mifgsm, difgsm, pgd, run_attack
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.tasks import Classification

L2_EPS = 1.0


def _eps(name: str) -> float:
    return L2_EPS if ATTACKS[name].norm == "l2" else 8 / 255


#: The attacks that apply to images (the adapter says: the token attack hotflip has its tests in test_text.py).
IMAGE_ATTACKS = [name for name in ATTACKS if Classification().refusal("attack", name) is None]


def _distance(name: str, delta: torch.Tensor) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if ATTACKS[name].norm == "l2" else flat.abs().amax(dim=1)


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_attack_stays_in_its_budget_and_bounds_and_lowers_accuracy(name, trained_digits):
    model, pixels, y, task = trained_digits
    net = task.pixel_model(model)
    x, y = pixels[:96], y[:96]
    with analysis_mode(model, seed=0):
        x_adv = run_attack(name, net, x, y, eps=_eps(name), generator=torch.Generator().manual_seed(0))
        clean = (net(x).argmax(1) == y).float().mean()
        robust = (net(x_adv).argmax(1) == y).float().mean()
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (_distance(name, x_adv - x) <= _eps(name) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert robust <= clean
    assert robust < clean - 0.05, f"{name} barely changed the accuracy ({clean:.2f} -> {robust:.2f})"


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_attacks_are_reproducible_and_leave_the_model_alone(name):
    model = awkward_net()
    before = snapshot(model)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with analysis_mode(model):
        cheap = {"queries": 100} if name.startswith("square") else {}  # an untrained model: Square would use all 1000
        runs = [run_attack(name, model, x, y, eps=_eps(name), generator=torch.Generator().manual_seed(3), **cheap)
                for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert_same_state(before, snapshot(model))


def test_reductions_between_attacks(trained_digits):
    model, pixels, y, task = trained_digits
    net, x, y, eps = task.pixel_model(model), pixels[:64], y[:64], 8 / 255
    with analysis_mode(model):
        assert torch.equal(pgd(net, x, y, eps=eps, steps=1, alpha=eps, random_start=False), fgsm(net, x, y, eps=eps))
        assert torch.equal(mifgsm(net, x, y, eps=eps, alpha=1 / 255, decay=0.0), ifgsm(net, x, y, eps=eps, alpha=1 / 255))
        assert torch.equal(
            difgsm(net, x, y, eps=eps, diversity_prob=0.0, decay=1.0), mifgsm(net, x, y, eps=eps, decay=1.0)
        )


def test_fgsm_on_a_linear_model_is_the_closed_form():
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 4)
    model = lambda x: linear(x.flatten(1))  # noqa: E731
    x, y, eps = torch.rand(10, 3, 2, 2) * 0.8 + 0.1, torch.randint(0, 4, (10,)), 0.05
    with torch.no_grad():
        residual = linear(x.flatten(1)).softmax(1) - torch.nn.functional.one_hot(y, 4)
        gradient = (residual @ linear.weight).view_as(x)  # d CE / d x, up to the 1/N of the mean
    expected = (x + eps * gradient.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(model, x, y, eps=eps), expected, atol=1e-7)


class _ThreeChannelNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def reference_setup():
    model = _ThreeChannelNet().eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(12, 3, 16, 16, generator=generator)
    return model, x, model(x).argmax(1).detach()


AGREEMENT = [
    ("fgsm", {}, lambda m: torchattacks.FGSM(m, eps=8 / 255)),
    ("ifgsm", {"alpha": 2 / 255, "steps": 10}, lambda m: torchattacks.BIM(m, eps=8 / 255, alpha=2 / 255, steps=10)),
    ("pgd", {"random_start": False}, lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)),
    ("pgd_l2", {"random_start": False, "alpha": 0.2}, lambda m: torchattacks.PGDL2(m, eps=8 / 255, alpha=0.2, steps=10, random_start=False)),
    ("mifgsm", {}, lambda m: torchattacks.MIFGSM(m, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)),
    ("difgsm", {"diversity_prob": 0.0}, lambda m: torchattacks.DIFGSM(m, eps=8 / 255, diversity_prob=0.0)),
    (
        "tifgsm",
        {"diversity_prob": 0.0, "len_kernel": 5},
        lambda m: torchattacks.TIFGSM(m, eps=8 / 255, diversity_prob=0.0, len_kernel=5),
    ),
    ("sinifgsm", {}, lambda m: torchattacks.SINIFGSM(m, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0, m=5)),
]


@pytest.mark.parametrize(("name", "params", "reference"), AGREEMENT, ids=[a[0] for a in AGREEMENT])
def test_agrees_with_torchattacks(name, params, reference, reference_setup):
    model, x, y = reference_setup
    expected = reference(model)(x, y)
    with analysis_mode(model):
        ours = run_attack(name, model, x, y, eps=8 / 255, **params)
    assert (ours - x).abs().max() > 1e-3  # the attack did something
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


class _ScriptedRandomness:
    """Shares the random draws of our attack with torchattacks': our draws are recorded (each a
    value of our seeded generator), then torch's global samplers that torchattacks calls are
    replaced by a script that returns those same values in torchattacks' order. Both attacks then
    make identical random choices, and any difference left is a difference of the algorithms."""

    def __init__(self, monkeypatch):
        from compass_lightning.attacks import _core, gradient

        self.monkeypatch, self.log = monkeypatch, []
        for module in (_core, gradient):
            original = module.draw
            monkeypatch.setattr(module, "draw", lambda *a, _f=original, **k: self._keep("draw", _f(*a, **k)))
        original_randint = _core.randint
        monkeypatch.setattr(_core, "randint", lambda *a, **k: self._keep("randint", original_randint(*a, **k)))

    def _keep(self, kind, value):
        self.log.append((kind, value.clone() if isinstance(value, torch.Tensor) else value))
        return value

    def diversity(self, diversity_prob, low):
        """Per call of DI's input diversity: (applied, size, top, left) from our draws."""
        calls, log = [], list(self.log)
        while log:
            kind, u = log.pop(0)
            assert kind == "draw" and u.numel() == 1
            if float(u) < diversity_prob:
                (_, size), (_, top), (_, left) = log.pop(0), log.pop(0), log.pop(0)
                calls.append((float(u), size, top, left))
            else:
                calls.append((float(u), low, 0, 0))  # not applied: torchattacks still draws, any valid values
        return calls

    def replay_diversity(self, calls):
        """torchattacks' input_diversity draws randint (size), randint (top), randint (left), then rand."""
        queue = [v for u, size, top, left in calls for v in (size, top, left, u)]

        def randint(*args, **kwargs):
            return torch.tensor([queue.pop(0)], dtype=kwargs.get("dtype", torch.int64))

        def rand(*args, **kwargs):
            return torch.tensor([queue.pop(0)])

        self.monkeypatch.setattr(torch, "randint", randint)
        self.monkeypatch.setattr(torch, "rand", rand)
        return queue

    def replay_start(self, *fills):
        """torchattacks' random starts fill tensors in place (``uniform_``, ``normal_``): with our values."""
        queue = list(fills)
        fill = lambda tensor, *args, **kwargs: tensor.copy_(queue.pop(0).view_as(tensor))  # noqa: E731
        self.monkeypatch.setattr(torch.Tensor, "uniform_", fill)
        self.monkeypatch.setattr(torch.Tensor, "normal_", fill)
        return queue


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("difgsm", lambda m: torchattacks.DIFGSM(m, eps=8 / 255, alpha=2 / 255, steps=10, diversity_prob=0.5)),
        ("tifgsm", lambda m: torchattacks.TIFGSM(m, eps=8 / 255, alpha=2 / 255, steps=10, diversity_prob=0.5, len_kernel=5)),
    ],
)
def test_input_diversity_agrees_with_torchattacks_on_shared_random_draws(name, reference, reference_setup, monkeypatch):
    model, x, y = reference_setup
    script = _ScriptedRandomness(monkeypatch)
    params = {"diversity_prob": 0.5, **({"len_kernel": 5} if name == "tifgsm" else {})}
    with analysis_mode(model):
        ours = run_attack(name, model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(4), **params)
    calls = script.diversity(0.5, low=int(16 * 0.9))
    applied = [u < 0.5 for u, *_ in calls]
    assert len(calls) == 10 and any(applied) and not all(applied), applied  # both branches taken
    left = script.replay_diversity(calls)
    expected = reference(model)(x, y)
    monkeypatch.undo()
    assert left == []  # torchattacks drew exactly as often as we did
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_pgd_random_starts_agree_with_torchattacks_on_shared_random_draws(reference_setup, monkeypatch):
    model, x, y = reference_setup
    script = _ScriptedRandomness(monkeypatch)
    with analysis_mode(model):
        ours = run_attack("pgd", model, x, y, eps=8 / 255, alpha=2 / 255, generator=torch.Generator().manual_seed(5))
        ours_l2 = run_attack("pgd_l2", model, x, y, eps=1.0, alpha=0.2, generator=torch.Generator().manual_seed(6))
    (_, uniform), (_, direction), (_, radius) = script.log
    assert uniform.shape == x.shape and direction.shape == x.shape and radius.shape == (len(x),)
    left = script.replay_start((2 * uniform - 1) * (8 / 255), direction, radius)  # uniform_(-eps, eps) from our u
    expected = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)(x, y)
    expected_l2 = torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True)(x, y)
    monkeypatch.undo()
    assert left == []
    for a, b in ((ours, expected), (ours_l2, expected_l2)):
        assert (a - x).abs().max() > 1e-3 and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # and without the random start, no randomness at all
    with analysis_mode(model):
        plain = run_attack("pgd_l2", model, x, y, eps=1.0, alpha=0.2, random_start=False)
    assert torch.allclose(plain, torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=False)(x, y), atol=1e-5)


class _PositiveLogits(torch.nn.Module):
    """Logits shifted by +50 (C&W's margin does not change): torchattacks' best-other-logit
    ``max((1 - onehot) * logits)`` is then the true best other logit, as ours is everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 50


def test_cw_agrees_with_torchattacks_where_it_fools_every_sample(reference_setup):
    model, x, y = reference_setup
    x = x * 0.8 + 0.1  # inside the box, where the tanh change of variable is the same in both
    shifted = _PositiveLogits(model).eval()
    expected = torchattacks.CW(shifted, c=100, kappa=0, steps=30, lr=0.01)(x, y)
    with analysis_mode(model):
        ours = run_attack("cw", shifted, x, y, eps=math.inf, c=100, steps=30, lr=0.01)
        fooled = (shifted(ours).argmax(1) != y).float().mean()
    assert fooled == 1.0 and (shifted(expected).argmax(1) != y).all()  # equal ASR, and a real search
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_deepfool_agrees_with_torchattacks(trained_digits):
    model, pixels, y, task = trained_digits
    net, x, y = task.pixel_model(model), pixels[:32], y[:32]
    expected = torchattacks.DeepFool(net, steps=50, overshoot=0.02)(x, y)
    with analysis_mode(model):
        ours = run_attack("deepfool", net, x, y, eps=math.inf)
        fooled = (net(ours).argmax(1) != y).float().mean()
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    # torchattacks' per-step overshoot leaves some samples on the boundary (see deepfool's docstring)
    assert fooled > 0.5


def test_minimal_norm_attacks_respect_their_budget(trained_digits):
    model, pixels, y, task = trained_digits
    net, x, y = task.pixel_model(model), pixels[:48], y[:48]
    with analysis_mode(model):
        for name in ("deepfool", "cw"):
            free = run_attack(name, net, x, y, eps=math.inf)
            norms = (free - x).flatten(1).norm(dim=1)
            budget = norms[norms > 0].median().item()
            capped = run_attack(name, net, x, y, eps=budget)
            kept = (capped - x).flatten(1).norm(dim=1) > 0
            assert torch.equal(kept, (norms > 0) & (norms <= budget)), name


def test_asr_rises_with_eps_on_a_trained_model(trained_digits):
    model, pixels, y, task = trained_digits
    net, x, y = task.pixel_model(model), pixels[:128], y[:128]
    with analysis_mode(model):
        correct = net(x).argmax(1) == y
        rates = []
        for eps in (1 / 255, 4 / 255, 16 / 255, 48 / 255):
            x_adv = pgd(net, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
            rates.append(((net(x_adv).argmax(1) != y) & correct).sum().item() / correct.sum().item())
    assert rates == sorted(rates) and rates[-1] > rates[0] + 0.3, rates


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n, x, y: run_attack("pgd", n, x, y, eps=-0.1), r"eps must be a number in \[0.0, inf\]"),
        (lambda n, x, y: run_attack("pgd", n, x, y, eps=0.1, steps=0), "pgd.steps must be an integer >= 1"),
        (lambda n, x, y: run_attack("pgd", n, x, y, eps=0.1, bounds=(1.0, 0.0)), "bounds must be a pair"),
        (lambda n, x, y: run_attack("nope", n, x, y, eps=0.1), "unknown attack 'nope'; choose from: fgsm"),
        (lambda n, x, y: run_attack("pgd", n, x, y, eps=0.1, stepz=3), "has no parameter stepz"),
        (lambda n, x, y: run_attack("naa", n, x, y, eps=0.1, layer="nowhere"), "no layer 'nowhere'; its layers: net"),
        (lambda n, x, y: run_attack("tifgsm", n, x, y, eps=0.1, len_kernel=4), "len_kernel must be an odd integer"),
    ],
)
def test_bad_arguments_are_value_errors(call, message, trained_digits):
    model, pixels, y, task = trained_digits
    with pytest.raises(ValueError, match=message), analysis_mode(model):
        call(task.pixel_model(model), pixels[:4], y[:4])


def test_attack_success_rate_counts_only_samples_correct_before_the_attack():
    from compass_lightning.attacks import attack_success_rate, mean_attack_success_rate, robust_accuracy

    clean = torch.tensor([True, True, False, False, True])
    after = torch.tensor([False, True, True, False, False])  # sample 2 was wrong and is right now: not a success
    assert attack_success_rate(clean, after).item() == pytest.approx(2 / 3)
    assert robust_accuracy(after).item() == pytest.approx(2 / 5)
    assert math.isnan(attack_success_rate(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)).item())
    rates = [torch.tensor(0.1), torch.tensor(float("nan")), torch.tensor(0.5)]
    assert mean_attack_success_rate(rates).item() == pytest.approx(0.3)  # the undefined one left out
    assert math.isnan(mean_attack_success_rate([]).item())


def test_ti_ata_is_ata_with_the_ti_kernel_smoothing_its_gradient(trained_digits):
    # thesis Eq. 4.9: W * dJ/dx before the sign. A kernel of length 1 is the identity, so TI-ATA is ATA;
    # a wider kernel moves the examples (and stays an L-inf attack of the same budget)
    model, pixels, y, task = trained_digits
    net, x, y = task.pixel_model(model), pixels[:32], y[:32]
    with analysis_mode(model, seed=0):
        plain = run_attack("ata", net, x, y, eps=16 / 255)
        identity = run_attack("ti_ata", net, x, y, eps=16 / 255, len_kernel=1)
        smoothed = run_attack("ti_ata", net, x, y, eps=16 / 255, len_kernel=3)
    assert torch.equal(plain, identity)
    assert not torch.equal(plain, smoothed) and (smoothed - x).abs().max() <= 16 / 255 + 1e-6
    with pytest.raises(ValueError, match="len_kernel must be an odd integer"):
        run_attack("ti_ata", net, x, y, eps=16 / 255, len_kernel=2)
