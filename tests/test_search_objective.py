"""Rewards and losses of nas.objective."""

import jax
import jax.numpy as jnp
import pytest

from nas.objective import HARD, SOFT, MnasObjective, fbnet_loss, mnasnet_reward, proxyless_loss


def test_mnasnet_soft_constraint():
    a, b = SOFT
    assert mnasnet_reward(0.8, 10, 10, a, b) == pytest.approx(0.8)
    # twice as slow: reward drops by 2**-0.07 (about 4.7%); twice as fast gains the same factor
    assert mnasnet_reward(0.8, 20, 10, a, b) == pytest.approx(0.8 * 2 ** -0.07)
    assert mnasnet_reward(0.8, 5, 10, a, b) == pytest.approx(0.8 * 2 ** 0.07)


def test_mnasnet_hard_constraint():
    a, b = HARD
    assert mnasnet_reward(0.8, 5, 10, a, b) == pytest.approx(0.8)  # no bonus under T
    assert mnasnet_reward(0.8, 20, 10, a, b) == pytest.approx(0.4)  # ACC * T / LAT above


def test_objective_without_target_is_accuracy_and_checks_the_metric():
    assert MnasObjective(target=None).reward({"accuracy": 0.7}) == 0.7
    obj = MnasObjective("latency_ms", 1.0)
    with pytest.raises(ValueError):
        obj.reward({"accuracy": 0.7})
    assert obj.feasible({"latency_ms": 0.9}) and not obj.feasible({"latency_ms": 1.1})


def test_fbnet_and_proxyless_losses_are_differentiable():
    g = jax.grad(lambda lat: fbnet_loss(2.0, lat, 0.2, 0.6))(jnp.float32(10.0))
    expected = 2.0 * 0.2 * 0.6 * jnp.log(10.0) ** -0.4 / 10.0
    assert jnp.allclose(g, expected, rtol=1e-5)
    assert proxyless_loss(1.0, 3.0, lam=0.1) == pytest.approx(1.3)
    assert proxyless_loss(1.0, 4.0, target=2.0, beta=1.0) == pytest.approx(2.0)
