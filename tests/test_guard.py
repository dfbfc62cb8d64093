"""The guard keeps invariants 1-4 of DESIGN.md: RNG, model state, gradients everywhere, fp32."""

import random

import numpy as np
import pytest
import torch
from conftest import assert_same_state, awkward_net, snapshot

from compass_lightning.engine.guard import analysis_mode


def _input_gradient_analysis(model: torch.nn.Module) -> torch.Tensor:
    x = torch.rand(8, 1, 6, 6, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 4)
    (grad,) = torch.autograd.grad(loss, x)
    torch.rand(3), np.random.rand(), random.random()  # an analysis may draw random numbers
    return grad


@pytest.mark.parametrize("outer", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_model_and_rng_untouched_after_input_gradient_analysis(outer):
    model = awkward_net()
    before = snapshot(model)
    torch_state, numpy_state, python_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    with outer():
        with analysis_mode(model, seed=3):
            grad = _input_gradient_analysis(model)
    assert grad.abs().sum() > 0  # gradients work under every outer mode
    assert_same_state(before, snapshot(model))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after_numpy = np.random.get_state()
    assert after_numpy[0] == numpy_state[0] and np.array_equal(after_numpy[1], numpy_state[1])
    assert random.getstate() == python_state


def test_inside_the_guard_the_model_is_in_eval_mode_without_parameter_gradients():
    model = awkward_net()
    with analysis_mode(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_batchnorm_statistics_do_not_move_and_dropout_is_off():
    model = awkward_net()
    before = snapshot(model)
    x = torch.rand(16, 1, 6, 6)
    with analysis_mode(model):
        first, second = model(x), model(x)
    assert torch.equal(first, second)  # dropout off: deterministic
    assert_same_state(before, snapshot(model))


def test_analyses_are_reproducible_from_their_seed():
    model = awkward_net()
    with analysis_mode(model, seed=7):
        a = torch.rand(5)
    torch.rand(100)  # the training stream moves on in between
    with analysis_mode(model, seed=7):
        b = torch.rand(5)
    with analysis_mode(model, seed=8):
        c = torch.rand(5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_is_restored_when_the_analysis_raises():
    model = awkward_net()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with analysis_mode(model):
            raise RuntimeError("boom")
    assert_same_state(before, snapshot(model))


def test_autocast_is_off_inside_the_guard():
    model = torch.nn.Linear(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(2, 4)).dtype == torch.bfloat16
        with analysis_mode(model):
            assert model(torch.rand(2, 4)).dtype == torch.float32


def test_inference_tensors_made_outside_can_be_cloned_into_gradients_inside():
    model = torch.nn.Linear(4, 2)
    with torch.inference_mode():
        x = torch.rand(3, 4)
        with analysis_mode(model):
            x = x.clone().requires_grad_()
            (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.allclose(grad, model.weight.sum(0).expand(3, 4))
