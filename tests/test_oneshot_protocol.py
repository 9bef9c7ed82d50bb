"""The one-shot protocol (init / weight_step / arch_step / derive / distribution), checked for
every one-shot strategy of the registry: each step changes only its own half of the state,
derive is the argmax of distribution, and the functions are pure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.errors import NasInputError
from nas.single_path.cost import SlotCosts
from nas.single_path.network import SinglePathNetwork
from nas.single_path.threshold_opt import search_optimizer
from nas.space import Space
from nas.strategies import registry
from nas.strategies.oneshot_train import make_steps
from nas.strategies.protocol import OneShot, OneShotState
from nas.strategies.single_path import (SinglePathParams, make_loss, merge_thresholds,
                                        split_thresholds)
from nas.training.trainer import TrainConfig

from single_path_helpers import small_space
from test_supernet import SMALL

PARAMS = {"fbnet": {"objective": "none"}, "proxyless": {"objective": "none"},
          "single_path": {"lam": 5.0, "cost": "bops"}, "spos": {"random_subnets": 1}}


def _space(name):
    return small_space() if registry.entry(name).supernet == "superkernel" else Space.from_dict(SMALL)


def _batch(seed, n=8):
    rng = np.random.default_rng(seed)
    return {"x": jnp.asarray(rng.normal(size=(n, 8, 8, 1)), jnp.float32),
            "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32), "mask": jnp.ones(n)}


def init_key():
    """The key the strategies are initialized with: RBG, whose random draws compile in a third of
    threefry's time (every check here holds for any initial weights)."""
    return jax.random.key(0, impl="unsafe_rbg")


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def argmax_arch(space, distribution):
    """The reference: the most probable choice per label of a distribution, as an Arch."""
    return space.decode([int(np.argmax(list(distribution[label].values())))
                         for label in space.labels()])


@pytest.fixture(scope="module", params=registry.names("one_shot"))
def strategy(request):
    name = request.param
    space = _space(name)
    s = registry.make_strategy(name, space, PARAMS[name])
    steps = make_steps(s)
    return {"name": name, "space": space, "strategy": s, "steps": steps,
            "init": s.init(init_key())}


def test_every_one_shot_strategy_builds_the_protocol(strategy):
    s = strategy["strategy"]
    assert isinstance(s, OneShot) and s.name == strategy["name"]
    assert isinstance(strategy["init"], OneShotState)
    assert _same(strategy["init"], s.init(init_key()))  # init is a function of rng


def test_weight_step_changes_the_weights_and_never_the_architecture(strategy):
    weight_step, _ = strategy["steps"]
    state = strategy["init"]
    new, metrics = weight_step(state, _batch(1), jax.random.PRNGKey(1), jnp.float32(0.05),
                               jnp.float32(0.0))
    assert not _same(new.weights, state.weights) and not _same(new.weight_opt, state.weight_opt)
    assert _same(new.arch, state.arch) and _same(new.arch_opt, state.arch_opt)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    again, _ = weight_step(state, _batch(1), jax.random.PRNGKey(1), jnp.float32(0.05),
                           jnp.float32(0.0))
    assert _same(again, new)  # pure: same inputs, same outputs


def test_arch_step_changes_the_architecture_and_never_the_weights(strategy):
    weight_step, arch_step = strategy["steps"]
    state, _ = weight_step(strategy["init"], _batch(1), jax.random.PRNGKey(1), jnp.float32(0.05),
                           jnp.float32(0.0))
    new = state
    for i in range(3):
        new, _ = arch_step(new, _batch(2 + i), jax.random.PRNGKey(2 + i), jnp.float32(0.05),
                           jnp.float32(0.0))
    if registry.entry(strategy["name"]).learns_arch:
        assert not _same(new.arch, state.arch)
    else:  # spos: no architecture parameters, its arch step is the identity
        assert _same(new, state)
    assert _same(new.weights, state.weights) and _same(new.weight_opt, state.weight_opt)
    assert _same(new.stats, state.stats)


def test_derive_is_the_argmax_of_the_distribution(strategy):
    s, space = strategy["strategy"], strategy["space"]
    _, arch_step = strategy["steps"]
    state = strategy["init"]
    for i in range(4):
        state, _ = arch_step(state, _batch(10 + i), jax.random.PRNGKey(10 + i), jnp.float32(0.2),
                             jnp.float32(0.0))
        dist = s.distribution(state)
        assert list(dist) == space.labels()
        for label, vals in space.decisions():
            assert list(dist[label]) == [str(v) for v in vals]
            assert abs(sum(dist[label].values()) - 1.0) < 1e-3
        assert s.derive(state) == argmax_arch(space, dist)


def test_paths_derive_follows_the_logits():
    space = Space.from_dict(SMALL)
    for name in registry.names(supernet="paths"):
        s = registry.make_strategy(name, space, PARAMS[name])
        state = s.init(init_key())
        rng = np.random.default_rng(0)
        for trial in range(3):
            want = space.decode([int(rng.integers(0, c)) for c in space.cardinalities()])
            index = dict(zip(space.labels(), space.encode(want)))
            logits = {label: jnp.zeros_like(a).at[index[label]].set(5.0)
                      for label, a in state.arch.items()}
            state = state._replace(arch=logits)
            assert s.derive(state) == want
            assert max(s.distribution(state)[space.labels()[0]].values()) > 0.9


def test_single_path_arch_is_the_thresholds():
    space = small_space()
    s = registry.make_strategy("single_path", space, PARAMS["single_path"])
    state = s.init(init_key())
    names = {k for slot in state.arch.values() for k in slot}
    assert names and all(k.startswith("t_") for k in names)
    assert not any(k.startswith("t_") for slot in state.weights.values() if isinstance(slot, dict)
                   for k in slot)
    whole = merge_thresholds(state.weights, state.arch)
    weights, thresholds = split_thresholds(space, whole)
    assert _same(weights, state.weights) and _same(thresholds, state.arch)


def test_single_path_warmup_keeps_the_thresholds():
    space = small_space()
    s = registry.make_strategy("single_path", space, {**PARAMS["single_path"], "warmup_epochs": 1},
                               steps_per_epoch=2)
    state = s.init(init_key())
    step = jax.jit(s.arch_step)
    first, _ = step(state, _batch(3), jax.random.PRNGKey(3), jnp.float32(0.1), jnp.float32(0.0))
    second, _ = step(first, _batch(4), jax.random.PRNGKey(4), jnp.float32(0.1), jnp.float32(0.0))
    third, _ = step(second, _batch(5), jax.random.PRNGKey(5), jnp.float32(0.1), jnp.float32(0.0))
    assert _same(second.arch, state.arch) and not _same(third.arch, state.arch)


def test_single_path_latency_cost_needs_a_table():
    with pytest.raises(NasInputError) as e:
        registry.make_strategy("single_path", small_space(), {"cost": "latency"})
    assert e.value.field == "latency_table"



def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def test_single_path_steps_from_one_state_are_the_joint_step_of_its_loss():
    """weight_step and arch_step taken from the same state (as the search's train step takes
    them) equal one step of the joint loss under the search optimizer (weights: the config's
    AdamW; thresholds: the shared-RMS rule): the protocol splits the update, it does not change
    it."""
    space, train = small_space(), TrainConfig(label_smoothing=0.0)
    params = SinglePathParams(lam=5.0, cost="bops")
    net = SinglePathNetwork(space)
    s = registry.make_strategy("single_path", space, params, train=train, net=net)
    state = s.init(init_key())
    batch, rng, lr = _batch(7), jax.random.PRNGKey(7), jnp.float32(0.05)
    loss_fn = make_loss(net, space, SlotCosts.from_metric(space, "bops"), params, None, 0.0)
    tx = search_optimizer(train, 0)
    whole = {"model": merge_thresholds(state.weights, state.arch)}

    @jax.jit
    def steps_and_joint_grads(state, whole):  # one compile: XLA shares the three passes
        after_w, _ = s.weight_step(state, batch, rng, lr, jnp.float32(0.0))
        after_a, _ = s.arch_step(state, batch, rng, lr, jnp.float32(0.0))
        grads = jax.grad(lambda p: loss_fn(p, state.stats, batch, rng,
                                           {"lam": jnp.float32(5.0)})[0])(whole)
        return after_w, after_a, grads

    after_w, after_a, grads = steps_and_joint_grads(state, whole)
    updates, _ = tx.update(grads, tx.init(whole), whole)
    expected = jax.tree_util.tree_map(lambda p, u: p - lr * u, whole, updates)["model"]
    weights, thresholds = split_thresholds(space, expected)
    np.testing.assert_allclose(_flat(after_w.weights), _flat(weights), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_flat(after_a.arch), _flat(thresholds), rtol=1e-4, atol=1e-6)
    assert not _same(after_a.arch, state.arch)
