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


# ------------------------------------------------------------------ cost metrics instead of latency
import numpy as np  # noqa: E402

from nas.cost_table import LAYER_METRICS, cost_table, objective_table  # noqa: E402
from nas.errors import NasInputError  # noqa: E402
from nas.metrics import arch_metrics  # noqa: E402
from nas.space import Space  # noqa: E402


@pytest.mark.parametrize("space_name", ["tiny", "mixed"])
def test_cost_table_predicts_each_metric_exactly(space_name):
    space = Space.by_name(space_name)
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(12)]
    for metric in LAYER_METRICS:
        table = cost_table(space, metric)
        for arch in archs:
            want = arch_metrics(space, arch)[metric]
            got = table.predict(arch)
            # size_bytes: nas.metrics rounds the network's bits up to whole bytes
            tol = 1.0 if metric == "size_bytes" else 1e-9 * max(abs(want), 1e-30)
            assert abs(got - want) <= tol, (metric, got, want)
        # the differentiable expectation agrees on one-hot distributions
        arch = archs[0]
        onehot = {label: np.eye(len(space.choices(label)))[space.choices(label).index(arch[label])]
                  for label in space.labels()}
        assert float(table.expected(onehot)) == pytest.approx(table.predict(arch), rel=1e-5)


def test_cost_table_keys_keep_the_searched_bit_widths():
    space = Space.by_name("tiny")
    arch = space.sample(np.random.default_rng(0))
    arch8 = {**arch, **{k: 8 for k in arch if k.endswith("bits_w")}}
    arch32 = {**arch, **{k: 32 for k in arch if k.endswith("bits_w")}}
    table = cost_table(space, "bops")
    assert table.predict(arch8) < table.predict(arch32)  # a latency key (bw:32 everywhere) would tie


def test_non_additive_metric_is_refused_in_one_line():
    with pytest.raises(NasInputError) as e:
        objective_table(Space.by_name("tiny"), "peak_activation_bytes", None)
    assert e.value.field == "objective.metric" and "latency_ms" in e.value.message
    assert objective_table(Space.by_name("tiny"), "latency_ms", None) is None


def test_fbnet_with_a_huge_size_weight_derives_the_smallest_arch():
    from nas.strategies.oneshot_base import OneShotParams
    from nas.strategies import make_strategy
    from nas.strategies.oneshot_train import make_steps
    from nas.supernet.network import SuperNet
    from test_supernet import SMALL

    space = Space.from_dict(SMALL)  # has bits_w [8, 32]: size depends on precision, not only shape
    table = cost_table(space, "size_bytes")
    net = SuperNet(space)
    params = OneShotParams(objective="fbnet", fbnet_beta=20.0, arch_lr=0.1, latency_scale=1.0,
                           tau0=1.0)
    strategy = make_strategy("fbnet", net.space, params, net=net, table=table)
    _, arch_step = make_steps(strategy)
    state = strategy.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for i in range(60):
        batch = {"x": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
                 "y": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "mask": jnp.ones(8)}
        state, _ = arch_step(state, batch, jax.random.PRNGKey(i), jnp.float32(0.0), jnp.float32(0.0))
    sizes = [arch_metrics(space, space.decode(list(ix)))["size_bytes"]
             for ix in np.ndindex(*space.cardinalities())]
    derived = strategy.derive(state)
    assert arch_metrics(space, derived)["size_bytes"] == min(sizes)
    assert max(sizes) > 2 * min(sizes)  # the choice mattered
