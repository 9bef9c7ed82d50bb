"""ProxylessNAS: one path per weight step, binary-gate arch step, latency and task mechanisms."""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from nas.data import Dataset
from nas.space import Space
from nas.strategies.oneshot_base import OneShotParams
from nas.strategies import make_strategy
from nas.strategies.oneshot_loop import run_oneshot
from nas.strategies.oneshot_train import make_steps
from nas.supernet.gates import derive, init_arch_params, sample_indices
from nas.supernet.network import SuperNet
from nas.supernet.synthetic import KERNEL_TASK_SPACE, macs_latency_table, pair_distance_task

from test_supernet import SMALL


def _expected_events(net, index):
    """The pieces the nested pick forward must run per slot for the sampled option."""
    want = []
    for i, sp in enumerate(net.plan.slots):
        pi, shape = sp.branches[int(sp.option_branch[tuple(int(index[lab]) for lab in sp.labels)])]
        op = sp.paths[pi].spec.op
        want.append((i, ("path", pi, shape.mid)))
        if op != "skip":
            want += [(i, ("kernel", shape.kernel)), (i, ("se", shape.se)), (i, ("rank_in", shape.rank_in))]
        if op == "mbconv":
            want.append((i, ("rank_out", shape.rank_out)))
    return sorted(want, key=repr)


def test_weight_step_executes_only_the_sampled_path():
    space = Space.from_dict(SMALL)
    executed = []
    net = SuperNet(space, on_path=lambda slot, event: executed.append((int(slot), event)),
                   pick="nested")
    strategy = make_strategy("proxyless", net.space, OneShotParams(objective="none"), net=net)
    rbg = jax.random.key(0, impl="unsafe_rbg")  # draws compile fast; any weights do here
    state = strategy.init(rbg)
    full = net.init(rbg)
    alpha = init_arch_params(space)
    batch = {"x": jnp.ones((4, 8, 8, 1)), "y": jnp.zeros(4, jnp.int32), "mask": jnp.ones(4)}
    weight_step, _ = make_steps(strategy)
    seen_paths = set()
    for seed in range(6):
        executed.clear()
        key = jax.random.PRNGKey(seed)
        new, _ = weight_step(state, batch, key, jnp.float32(0.01), jnp.float32(0.0))
        jax.block_until_ready(new)
        index = sample_indices(alpha, jax.random.split(key)[0])
        # each slot runs one path at one channel count and, inside it, one branch of each
        # kernel / SE / rank switch: exactly the sampled option's, once
        assert sorted(executed, key=repr) == _expected_events(net, index)
        seen_paths |= {e for e in executed if e[1][0] == "path"}
    assert len(seen_paths) > len(net.plan.slots)  # different seeds took different branches
    # the mixed (FBNet) forward runs every path of every slot
    executed.clear()
    soft = init_arch_params(space)
    soft = {k: jax.nn.softmax(v) for k, v in soft.items()}
    jax.block_until_ready(jax.jit(lambda p: net.apply(p, batch["x"], "soft", soft))(full))
    assert collections.Counter(s for s, _ in executed) == {i: len(sp.paths) for i, sp in enumerate(net.plan.slots)}


def test_masked_pick_runs_the_sampled_path_and_computes_the_sampled_child():
    # the default pick: one path per slot, its knobs masks: the same logits as the nested
    # switches (which slice the weights to the sampled shape) for every sampled option
    space = Space.from_dict(SMALL)
    executed = []
    masked = SuperNet(space, on_path=lambda slot, event: executed.append((int(slot), event)))
    nested = SuperNet(space, pick="nested")
    assert masked.pick == "masked"
    params = masked.init(jax.random.key(0, impl="unsafe_rbg"))  # compiles fast; any weights do
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *space.resolution, 1)), jnp.float32)
    run = {name: jax.jit(lambda p, g, n=net: n.apply(p, x, "pick", g))
           for name, net in (("masked", masked), ("nested", nested))}
    for seed in range(4):
        arch = space.sample(seed)
        index = {lab: jnp.int32(v) for lab, v in zip(space.labels(), space.encode(arch))}
        executed.clear()
        got, want = run["masked"](params, index), run["nested"](params, index)
        jax.block_until_ready(got)
        np.testing.assert_allclose(got, want, atol=2e-5 * float(jnp.max(jnp.abs(want))))
        paths = [sp.branches[int(sp.option_branch[tuple(int(index[lab]) for lab in sp.labels)])][0]
                 for sp in masked.plan.slots]
        assert sorted(executed) == [(i, ("path", pi)) for i, pi in enumerate(paths)]


def _count_primitives(jaxpr, counts):
    """Counts primitives in a jaxpr and every sub-jaxpr (switch branches, custom_vjp, pjit)."""
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _count_primitives(inner, counts)
    return counts


def test_nested_pick_traces_each_op_once_per_channel_count():
    # compile cost: the nested switches trace each depthwise conv once per (channel count,
    # kernel) and each 1x1 conv once per (channel count, rank); the flat switch traces every
    # op once per distinct shape (the product of the slot's kernel, channel, SE, rank choices)
    space = Space.by_name("tiny")
    counts = {}
    for pick in ("nested", "flat"):
        net = SuperNet(space, pick=pick)
        full = jax.eval_shape(net.init, jax.random.PRNGKey(0))  # the jaxpr needs shapes only
        index = {lab: jnp.int32(0) for lab in space.labels()}
        jaxpr = jax.make_jaxpr(lambda p: net.apply(p, jnp.zeros((2, 16, 16, 1)), "pick", index))(full)
        counts[pick] = _count_primitives(jaxpr.jaxpr, collections.Counter())
    plan = net.plan
    dw = lambda c: c["custom_vjp_call"] + c["custom_vjp_call_jaxpr"]  # noqa: E731
    assert dw(counts["flat"]) == sum(sp.paths[pi].spec.op != "skip"
                                     for sp in plan.slots for pi, _ in sp.branches)
    assert dw(counts["nested"]) == sum(len(s["kernel"]) for sp in plan.slots
                                       for pi, per_mid in enumerate(sp.tree.sizes)
                                       if sp.paths[pi].spec.op != "skip" for s in per_mid)
    assert dw(counts["nested"]) < 0.7 * dw(counts["flat"])
    assert counts["nested"]["dot_general"] < 0.4 * counts["flat"]["dot_general"]  # 1x1 convs, SE
    sp = plan.slots[3]  # s3_b1: 3 kernels x 4 (expand, width) giving 3 channel counts x 2 SE
    assert len(sp.branches) == 18 and sum(len(m) for m in sp.tree.mids) == 3


def test_huge_latency_weight_derives_the_minimum_latency_arch():
    space = Space.from_dict(SMALL)
    table = macs_latency_table(space)
    net = SuperNet(space)
    params = OneShotParams(objective="proxyless", lam=1e4, arch_lr=0.1)
    strategy = make_strategy("proxyless", net.space, params, net=net, table=table)
    _, arch_step = make_steps(strategy)
    state = strategy.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for i in range(60):
        batch = {"x": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
                 "y": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "mask": jnp.ones(8)}
        state, _ = arch_step(state, batch, jax.random.PRNGKey(i), jnp.float32(0.0), jnp.float32(0.0))
    all_latencies = [table.predict(space.decode(list(ix)))
                     for ix in np.ndindex(*space.cardinalities())]
    assert table.predict(derive(space, state.arch)) == min(all_latencies)


def test_no_latency_weight_picks_the_kernel_the_task_needs():
    space = Space.from_dict(KERNEL_TASK_SPACE)
    x, y = pair_distance_task(1500, 0)
    data = Dataset("pairs", x[:1000], y[:1000], x[1000:1250], y[1000:1250], x[1250:], y[1250:], 2)
    params = OneShotParams(epochs=30, warmup_epochs=6, objective="none", arch_lr=0.1,
                           weight_lr=0.02, batch_size=50)
    result = run_oneshot(space, data, "proxyless", params, None)
    assert result["arch"] == {"s1_b1_kernel": 7}, result["distribution"]


def _descend_latency(space, table, objective, alpha, target, steps=300, lr=0.05):
    """Adam on the logits of objective(ce, E[LAT]) where a stand-in CE falls as E[LAT] grows
    (bigger networks are more accurate), as the arch step sees it."""
    import optax
    from nas.supernet.gates import probabilities

    def arch_loss(a):
        lat = table.expected(probabilities(a))
        return objective(1.0 - 0.2 * lat / target, lat)

    loss = jax.jit(jax.value_and_grad(arch_loss))
    tx = optax.adam(lr)
    state = tx.init(alpha)
    for _ in range(steps):
        _, g = loss(alpha)
        updates, state = tx.update(g, state, alpha)
        alpha = optax.apply_updates(alpha, updates)
    return alpha


def test_hinge_latency_term_stops_at_the_target_while_the_paper_forms_keep_shrinking():
    from nas.strategies.oneshot_base import make_objective
    from nas.supernet.gates import probabilities

    space = Space.from_dict(SMALL)
    table = macs_latency_table(space)
    lats = [table.predict(space.decode(list(ix))) for ix in np.ndindex(*space.cardinalities())]
    lo, hi = min(lats), max(lats)
    target = lo + 0.5 * (hi - lo)
    # start from the largest Arch (as an accuracy-driven search would push it)
    big = space.decode(list(np.unravel_index(int(np.argmax(lats)), space.cardinalities())))
    alpha = {lab: 3.0 * jax.nn.one_hot(space.choices(lab).index(big[lab]), len(space.choices(lab)))
             for lab in space.labels()}
    hinge = make_objective(OneShotParams(objective="hinge", target=target, lam=10.0), "proxyless")
    got = _descend_latency(space, table, hinge, alpha, target)
    expected = float(table.expected(probabilities(got)))
    assert target * 0.95 <= expected <= target * 1.02  # pushed down to T, not below
    assert float(hinge(0.0, target * 0.9)) == 0.0 and float(hinge(0.0, target * 1.1)) > 0.9
    # the paper's additive and multiplicative forms keep pushing towards the minimum
    for params in (OneShotParams(objective="proxyless", lam=10.0),
                   OneShotParams(objective="proxyless", target=target, mult_beta=2.0)):
        paper = make_objective(params, "proxyless")
        got = _descend_latency(space, table, paper, alpha, target)
        assert float(table.expected(probabilities(got))) < target * 0.8
    # the margin aims below T
    margin = make_objective(OneShotParams(objective="hinge", target=target, lam=10.0,
                                          target_margin=0.1), "proxyless")
    assert float(margin(0.0, target * 0.95)) > 0.0


def test_hinge_needs_a_target():
    import pytest

    from nas.errors import NasInputError
    from nas.strategies import parse_params

    with pytest.raises(NasInputError) as e:
        parse_params("proxyless", {"objective": "hinge", "lam": 1.0}, "x.yaml")
    assert "target" in e.value.message
