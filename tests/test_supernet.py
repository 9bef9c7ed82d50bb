"""Supernet: derived from the Space, shared weights slice to the child network exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.model import build_model, init_variables
from nas.space import Space
from nas.supernet.gates import (binary_gate_grad, derive, gumbel_softmax, init_arch_params,
                                rescale_pair, sample_pairs, temperature)
from nas.supernet.network import SuperNet, child_params
from nas.supernet.plan import SuperPlan

SMALL = {"name": "small", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
         "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 32},
         "stages": [
             {"channels": 8, "stride": 1,
              "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5], "expand": [1, 3]}},
             {"channels": 16, "stride": 2,
              "knobs": {"op": ["mbconv", "dwsep"], "kernel": [3, 5], "rank": [None, 0.5],
                        "bits_w": [8, 32], "se": [False, True]}}]}


def small_space():
    return Space.from_dict(SMALL)


def test_temperature_schedule_is_fbnets():
    assert temperature(0) == pytest.approx(5.0)
    assert temperature(1) == pytest.approx(5.0 * 0.956)
    assert temperature(10) == pytest.approx(5.0 * 0.956 ** 10)
    assert temperature(3, tau0=2.0, decay=0.5) == pytest.approx(0.25)


def test_plan_is_derived_from_space():
    plan = SuperPlan.from_space(Space.by_name("tiny"))
    assert [lab for sp in plan.slots for lab in sp.labels] == Space.by_name("tiny").labels()
    fb = SuperPlan.from_space(Space.by_name("fbnet"))
    # FBNet's candidate blocks are separate paths; the skip candidate only where shapes allow
    assert [p.name for p in fb.slots[0].paths][-1] == "skip"
    assert len(fb.slots[1].paths) == 8


def test_gumbel_softmax_low_temperature_is_one_hot_and_follows_logits():
    alpha = {"a": jnp.array([0.0, 3.0, 0.0])}
    counts, sharp = np.zeros(3), 0
    for i in range(200):
        w = gumbel_softmax(alpha, 0.01, jax.random.PRNGKey(i))["a"]
        sharp += float(jnp.max(w)) > 0.99
        counts[int(jnp.argmax(w))] += 1
    assert sharp >= 190
    p = np.exp([0, 3, 0]) / np.exp([0, 3, 0]).sum()
    assert abs(counts[1] / 200 - p[1]) < 0.1


def test_binary_gate_gradient_is_gradient_of_expected_loss_over_the_pair():
    # For a loss linear in the gates, L = sum_j g_j c_j, dL/dg = c and the paper's formula must
    # equal d/dalpha of E_q[L] = sum_{j in pair} q_j c_j with q = softmax(alpha[pair]).
    alpha = {"a": jnp.array([0.3, -0.2, 1.0, 0.5])}
    pairs, qs, _ = sample_pairs(alpha, jax.random.PRNGKey(3))
    c = jnp.array([1.0, -2.0, 0.5, 3.0])
    got = binary_gate_grad({"a": c}, pairs, qs)["a"]
    pair = np.asarray(pairs["a"])

    def expected(a):
        q = jax.nn.softmax(a[pair])
        return jnp.sum(q * c[pair])

    want = jax.grad(expected)(alpha["a"])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert set(np.flatnonzero(np.asarray(got))) <= set(pair.tolist())


def test_rescale_keeps_pair_mass():
    old = {"a": jnp.array([0.0, 1.0, 2.0])}
    new = {"a": jnp.array([0.5, 0.0, 2.7])}
    pairs = {"a": jnp.array([0, 2])}
    out = rescale_pair(new, old, pairs)["a"]
    assert float(jax.nn.logsumexp(out[jnp.array([0, 2])])) == pytest.approx(
        float(jax.nn.logsumexp(old["a"][jnp.array([0, 2])])), abs=1e-6)
    assert float(out[2] - out[0]) == pytest.approx(2.2, abs=1e-6)  # the update's direction kept
    assert float(out[1]) == 0.0


def test_derive_is_argmax_per_label():
    space = small_space()
    alpha = init_arch_params(space)
    want = space.sample(5)
    for label in space.labels():
        alpha[label] = alpha[label].at[space.choices(label).index(want[label])].set(1.0)
    assert derive(space, alpha) == space.canonical(want)


def test_a_slot_choosing_skip_and_a_rank_mixes_softly_and_equals_its_children():
    """The mixed space's slots choose skip beside factorized MBConvs: the skip path has no conv
    to factorize, and the soft (FBNet) call must not ask it for one."""
    d = json.loads(json.dumps(SMALL))
    d["stages"][0]["knobs"]["rank"] = [None, 0.5]
    space = Space.from_dict(d)
    net = SuperNet(space)
    params = net.init(jax.random.key(0, impl="unsafe_rbg"))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    soft = jax.jit(lambda p, x, g: net.apply(p, x, "soft", g))
    for op, rank in (("skip", 0.5), ("mbconv", 0.5)):
        arch = space.validate({**space.sample(0), "s1_b1_op": op, "s1_b1_rank": rank})
        onehot = {lab: jax.nn.one_hot(space.choices(lab).index(arch[lab]), len(space.choices(lab)))
                  for lab in space.labels()}
        model = build_model(space, arch)
        bs = init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))["batch_stats"]
        child, _ = model.apply({"params": child_params(net, params, arch), "batch_stats": bs}, x,
                               train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(soft(params, x, onehot), child, atol=1e-4)


def test_pick_and_one_hot_soft_equal_the_child_network():
    space = small_space()
    net = SuperNet(space)
    params = net.init(jax.random.key(0, impl="unsafe_rbg"))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    pick = jax.jit(lambda p, x, g: net.apply(p, x, "pick", g))
    soft = jax.jit(lambda p, x, g: net.apply(p, x, "soft", g))
    for seed in (0, 3):
        arch = space.sample(seed)
        idx = {lab: space.choices(lab).index(arch[lab]) for lab in space.labels()}
        onehot = {lab: jax.nn.one_hot(i, len(space.choices(lab))) for lab, i in idx.items()}
        model = build_model(space, arch)
        bs = init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))["batch_stats"]
        child, _ = model.apply({"params": child_params(net, params, arch), "batch_stats": bs}, x,
                               train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(pick(params, x, {k: jnp.int32(v) for k, v in idx.items()}),
                                   child, atol=1e-4)
        np.testing.assert_allclose(soft(params, x, onehot), child, atol=1e-4)
