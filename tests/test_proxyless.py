"""ProxylessNAS: one path per weight step, binary-gate arch step, latency and task mechanisms."""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from nas.data import Dataset
from nas.space import Space
from nas.strategies.oneshot_base import OneShotParams
from nas.strategies.oneshot_loop import make_strategy, run_oneshot, _make_steps
from nas.supernet.gates import derive, init_arch_params, sample_indices
from nas.supernet.network import SuperNet, trainable
from nas.supernet.synthetic import KERNEL_TASK_SPACE, macs_latency_table, pair_distance_task

from test_supernet import SMALL


def test_weight_step_executes_only_the_sampled_path():
    space = Space.from_dict(SMALL)
    executed = []
    net = SuperNet(space, on_path=lambda slot, branch: executed.append((int(slot), int(branch))))
    strategy = make_strategy("proxyless", net, OneShotParams(objective="none"), None)
    full = net.init(jax.random.PRNGKey(0))
    alpha = init_arch_params(space)
    batch = {"x": jnp.ones((4, 8, 8, 1)), "y": jnp.zeros(4, jnp.int32), "mask": jnp.ones(4)}
    grad = jax.jit(jax.grad(lambda t, k: strategy.weight_loss(t, full, alpha, batch, k, 1.0)[0]))
    for seed in range(3):
        executed.clear()
        key = jax.random.PRNGKey(seed)
        g = grad(trainable(full), key)
        jax.block_until_ready(g)
        index = sample_indices(alpha, jax.random.split(key)[0])
        want = []
        for i, sp in enumerate(net.plan.slots):
            want.append((i, int(sp.option_branch[tuple(int(index[lab]) for lab in sp.labels)])))
        assert sorted(executed) == want  # one branch per slot: the sampled one
    # the mixed (FBNet) forward runs every path of every slot
    executed.clear()
    soft = init_arch_params(space)
    soft = {k: jax.nn.softmax(v) for k, v in soft.items()}
    jax.block_until_ready(jax.jit(lambda p: net.apply(p, batch["x"], "soft", soft))(full))
    assert collections.Counter(s for s, _ in executed) == {i: len(sp.paths) for i, sp in enumerate(net.plan.slots)}


def test_huge_latency_weight_derives_the_minimum_latency_arch():
    space = Space.from_dict(SMALL)
    table = macs_latency_table(space)
    net = SuperNet(space)
    params = OneShotParams(objective="proxyless", lam=1e4, arch_lr=0.1)
    strategy = make_strategy("proxyless", net, params, table)
    full = net.init(jax.random.PRNGKey(0))
    import optax
    from nas.train import TrainConfig, make_optimizer
    _, arch_step = _make_steps(strategy, make_optimizer(TrainConfig()), optax.adam(params.arch_lr))
    alpha = init_arch_params(space)
    state = optax.adam(params.arch_lr).init(alpha)
    rng = np.random.default_rng(0)
    for i in range(60):
        batch = {"x": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
                 "y": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "mask": jnp.ones(8)}
        alpha, state, _ = arch_step(alpha, state, full, batch, jax.random.PRNGKey(i), 1.0)
    all_latencies = [table.predict(space.decode(list(ix)))
                     for ix in np.ndindex(*space.cardinalities())]
    assert table.predict(derive(space, alpha)) == min(all_latencies)


def test_no_latency_weight_picks_the_kernel_the_task_needs():
    space = Space.from_dict(KERNEL_TASK_SPACE)
    x, y = pair_distance_task(1500, 0)
    data = Dataset("pairs", x[:1000], y[:1000], x[1000:1250], y[1000:1250], x[1250:], y[1250:], 2)
    params = OneShotParams(epochs=30, warmup_epochs=6, objective="none", arch_lr=0.1,
                           weight_lr=0.02, batch_size=50)
    result = run_oneshot(space, data, "proxyless", params, None)
    assert result["arch"] == {"s1_b1_kernel": 7}, result["distribution"]
