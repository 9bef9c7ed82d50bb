"""Single-Path NAS mechanisms: indicators, nested quantizer, superkernel slices, cost term."""

from __future__ import annotations

import copy
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.blocks.quant import fake_quant_weight
from nas.blocks.slicing import factor_product
from nas.errors import NasInputError
from nas.model import build_model, init_variables
from nas.single_path.cost import SlotCosts
from nas.single_path.export import derive_arch, derive_levels, export_child, force_levels
from nas.single_path.gates import slot_gates
from nas.single_path.indicators import indicator, ladder_levels, select
from nas.single_path.nested_quant import nested_fake_quant_weight
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import max_arch, space_plan
from nas.space import Space

from single_path_helpers import FUSED_STAGE, SMALL, fake_table, small_space


# ------------------------------------------------------------------------------ indicators
def test_indicator_is_hard_forward_and_sigmoid_backward():
    x = jnp.array([-2.0, -0.1, 0.3, 4.0])
    np.testing.assert_array_equal(indicator(x), [0.0, 0.0, 1.0, 1.0])
    grad = jax.grad(lambda v: jnp.sum(indicator(v) * jnp.arange(1.0, 5.0)))(x)
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(grad, s * (1 - s) * jnp.arange(1.0, 5.0), rtol=1e-6)


def test_select_is_exact_and_has_the_mixture_gradient():
    off, on = jnp.array([0.1, 0.7]), jnp.array([0.3, 1e-9])
    for g in (0.0, 1.0):
        out = select(jnp.float32(g), off, on)
        np.testing.assert_array_equal(out, on if g else off)   # never off + g * (on - off)
    dg = jax.grad(lambda g: jnp.sum(select(g, off, on) * jnp.array([2.0, 3.0])))(jnp.float32(1.0))
    np.testing.assert_allclose(dg, np.sum((on - off) * np.array([2.0, 3.0])), rtol=1e-6)


def test_ladder_levels_are_the_papers_kernel_probabilities():
    i5, i7 = 0.8, 0.3
    p = ladder_levels(jnp.array([i5, i7]))
    np.testing.assert_allclose(p, [1 - i5, i5 * (1 - i7), i5 * i7], rtol=1e-6)
    np.testing.assert_array_equal(ladder_levels(jnp.array([1.0, 0.0])), [0, 1, 0])


# ------------------------------------------------------------------------- nested quantizer
@pytest.mark.parametrize("ladder", [(2, 4, 8, 32), (8, 32), (4, 8, 32)])
def test_nested_quantizer_equals_plain_fake_quant_at_every_gate_setting(ladder):
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 12)) * jnp.linspace(0.1, 2.0, 12)
    n = len(ladder) - 1
    for gates in itertools.product((0.0, 1.0), repeat=n):
        level = next((i for i, g in enumerate(gates) if g == 0.0), n)
        got = nested_fake_quant_weight(w, ladder, jnp.array(gates, jnp.float32))
        np.testing.assert_array_equal(got, fake_quant_weight(w, ladder[level]))


def test_nested_quantizer_gradients_are_ste_and_gated_residuals():
    w = jax.random.normal(jax.random.key(2), (4, 6))
    ladder = (2, 4, 8, 32)
    cot = jax.random.normal(jax.random.key(3), (4, 6))
    gates = jnp.array([1.0, 1.0, 0.0])          # 8 bits selected
    dw, dg = jax.grad(lambda w, g: jnp.sum(nested_fake_quant_weight(w, ladder, g) * cot),
                      argnums=(0, 1))(w, gates)
    np.testing.assert_allclose(dw, cot, rtol=1e-6)           # straight-through
    q = {b: fake_quant_weight(w, b) for b in ladder}
    # d/dg_i = <cot, (Q_bi - Q_b(i-1)) + deeper gated residuals> at the current gates
    np.testing.assert_allclose(dg[2], np.sum(cot * (q[32] - q[8])), rtol=1e-5)
    np.testing.assert_allclose(dg[1], np.sum(cot * (q[8] - q[4])), rtol=1e-5)
    np.testing.assert_allclose(dg[0], np.sum(cot * (q[8] - q[2])), rtol=1e-5)


# ---------------------------------------------------------------------------------- plans
def test_plan_nests_every_knob_of_the_tiny_space():
    space = Space.by_name("tiny")
    plans = {p.prefix: p for p in space_plan(space)}
    assert plans["s1_b1"].ladders["op"].values == ("dwsep", "mbconv")
    assert plans["s2_b2"].ladders["keep"].values == ("skip", "layer")
    assert [m[0] for m in plans["s2_b2"].ladders["mid"].values] == [36, 72, 144]
    assert plans["s3_b1"].ladders["kernel"].values == (3, 5, 7)
    assert plans["s4_b1"].ladders["rank"].values == (0.5, None)
    assert max_arch(space, list(plans.values()))["s2_b1_expand"] == 6


def test_a_slot_choosing_among_three_operators_is_refused_in_one_line():
    d = copy.deepcopy(dict(SMALL, stages=SMALL["stages"] + [FUSED_STAGE]))
    d["stages"][-1]["knobs"]["op"] = ["mbconv", "fused_mbconv", "dwsep"]
    with pytest.raises(NasInputError, match="s4_b1_op.*single_path cannot search.*two operators"):
        space_plan(Space.from_dict(d))


# ---------------------------------------------------------------------- slices and export
@pytest.fixture(scope="module")
def small_net():
    space = small_space(fused=True)
    net = SinglePathNetwork(space)
    variables = init_single_path(net, jax.random.key(0, impl="unsafe_rbg"))  # compiles fast
    # non-trivial BatchNorm statistics, so that slicing them matters
    key = jax.random.key(5, impl="unsafe_rbg")
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: a + 0.5 * jax.random.uniform(key, a.shape), variables["batch_stats"])
    return space, net, variables, jax.jit(net.apply)


def _random_levels(space, rng):
    return {p.prefix: {n: int(rng.integers(l.n)) for n, l in p.ladders.items()}
            for p in space_plan(space)}


def test_exported_child_computes_what_the_superkernel_computes(small_net):
    space, net, variables, apply = small_net
    x = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3):
        levels = _random_levels(space, rng)
        params = force_levels(space, variables["params"], levels)
        assert derive_levels(space, params) == levels
        full = {"params": params, "batch_stats": variables["batch_stats"]}
        arch, child_vars = export_child(space, full)
        seen.add(space.arch_id(arch))
        child = build_model(space, arch)
        ref = init_variables(child, jax.random.key(1), (1, 8, 8, 1))
        assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(child_vars)
        for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(child_vars)):
            assert a.shape == b.shape
        want = apply(full, x)
        got = jax.jit(child.apply)(child_vars, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(seen) == 3


#: int8 activations and hswish (pre-activation points) in an MBConv slot with skip, mid, kernel,
#: SE, rank and bits ladders, and an MBConv vs DWSep slot: the superkernel quantizes at the
#: child's points (a Fused-MBConv's points are the same ops).
QUANT = {
    "name": "sp_quant", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "act": "relu", "dropout": 0.0},
    "defaults": {"act": "hswish", "se_ratio": 0.25, "bits_a": 8},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "dwsep"], "kernel": [3, 5], "expand": 1, "act": "relu"}},
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5], "expand": [3, 6],
                   "width": [0.5, 1.0], "se": [False, True], "rank": [None, 0.5],
                   "bits_w": [8, 32]}}]}


def test_quantized_activations_child_computes_what_the_superkernel_computes():
    space = Space.from_dict(QUANT, "tests:sp_quant")
    net = SinglePathNetwork(space)
    variables = init_single_path(net, jax.random.key(0, impl="unsafe_rbg"))  # compiles fast
    x = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
    # training statistics: BatchNorm moments and the quantizers' running ranges
    _, upd = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    variables = {"params": variables["params"], "batch_stats": upd["batch_stats"]}
    assert "q_dw_pre_act" in variables["batch_stats"]["s2_b1"]      # hswish: pre-act points
    assert "q_se_pool" in variables["batch_stats"]["s2_b1"]["se"]
    rng = np.random.default_rng(3)
    eval_checked = 0
    for i in range(2):  # eager on both sides: jit may round a quantizer's input differently
        levels = _random_levels(space, rng)
        levels["s2_b1"].update(keep=1, se=1, rank=i, bits=1 - i)          # float, then int8
        levels["s1_b1"]["op"] = i % 2                                  # dwsep, then mbconv
        params = force_levels(space, variables["params"], levels)
        full = {"params": params, "batch_stats": variables["batch_stats"]}
        arch, child_vars = export_child(space, full)
        child = build_model(space, arch)
        ref = init_variables(child, jax.random.key(1), (1, 8, 8, 1))
        assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(child_vars)
        want, _ = net.apply(full, x, train=True, mutable=["batch_stats"])
        got, _ = child.apply(child_vars, x, train=True, mutable=["batch_stats", "intermediates"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if arch["s2_b1_bits_w"] == 32:   # int8 children round BN biases onto the kernel's grid
            np.testing.assert_allclose(child.apply(child_vars, x), net.apply(full, x),
                                       rtol=1e-5, atol=1e-5)
            eval_checked += 1
    assert eval_checked == 1


def test_exported_weights_are_exact_slices_of_the_superkernel(small_net):
    space, _, variables, _ = small_net
    levels = {"s1_b1": {"op": 1, "kernel": 0},
              "s2_b1": {"keep": 1, "mid": 1, "kernel": 1, "bits": 1, "se": 1},
              "s3_b1": {"mid": 0, "kernel": 1, "rank": 0, "bits": 0}}
    params = force_levels(space, variables["params"], levels)
    arch, child = export_child(space, {"params": params, "batch_stats": variables["batch_stats"]})
    assert (arch["s2_b1_kernel"], arch["s2_b1_expand"], arch["s2_b1_width"], arch["s2_b1_bits_w"],
            arch["s2_b1_se"]) == (5, 3, 1.0, 8, True)    # 24 channels: expand 3 (unpruned)
    sup, got = params["s2_b1"], child["params"]["s2_b1"]
    m = 24
    np.testing.assert_array_equal(got["dw"]["kernel"], sup["dw"]["kernel"][1:6, 1:6, :, :m])
    np.testing.assert_array_equal(got["expand"]["kernel"], sup["expand"]["kernel"][..., :m])
    np.testing.assert_array_equal(got["project"]["kernel"], sup["project"]["kernel"][:, :, :m])
    np.testing.assert_array_equal(got["se"]["reduce"]["kernel"], sup["se"]["reduce"]["kernel"][:, :, :m])
    np.testing.assert_array_equal(child["batch_stats"]["s2_b1"]["dw_bn"]["mean"],
                                  variables["batch_stats"]["s2_b1"]["dw_bn"]["mean"][:m])
    r = child["params"]["s3_b1"]
    u = params["s3_b1"]["expand"]["kernel_u"]                 # [8, 8]; rank 0.5 of min(8, 24) = 4
    np.testing.assert_array_equal(r["expand"]["kernel_u"], u[..., :4])
    assert "expand" not in child["params"].get("s1_b1", {}) or arch["s1_b1_op"] == "mbconv"
    # Fused-MBConv: its kxk expand conv is cut like a depthwise one (centre taps, first m outputs)
    levels = {"s4_b1": {"keep": 1, "mid": 1, "kernel": 0, "rank": 1, "se": 0}}
    params = force_levels(space, variables["params"], levels)
    arch, child = export_child(space, {"params": params, "batch_stats": variables["batch_stats"]})
    assert (arch["s4_b1_op"], arch["s4_b1_kernel"], arch["s4_b1_expand"], arch["s4_b1_width"]) \
        == ("fused_mbconv", 3, 2, 1.0)                       # 32 channels: expand 2 (unpruned)
    sup, got = params["s4_b1"], child["params"]["s4_b1"]
    np.testing.assert_array_equal(got["expand"]["kernel"], sup["expand"]["kernel"][1:4, 1:4, :, :32])
    full = factor_product(sup["project"]["kernel_u"], sup["project"]["kernel_v"])  # full rank
    np.testing.assert_array_equal(got["project"]["kernel"], full[:, :, :32])
    assert "dw" not in got and "se" not in got


def test_skip_and_dwsep_levels_drop_their_weights(small_net):
    space, _, variables, _ = small_net
    levels = {"s1_b1": {"op": 0, "kernel": 1}, "s2_b1": {"keep": 0}}
    arch, child = export_child(space, {"params": force_levels(space, variables["params"], levels),
                                       "batch_stats": variables["batch_stats"]})
    assert arch["s1_b1_op"] == "dwsep" and arch["s2_b1_op"] == "skip"
    assert "expand" not in child["params"]["s1_b1"] and "s2_b1" not in child["params"]


# ------------------------------------------------------------------------------ cost term
def test_cost_on_hard_gates_is_the_tables_prediction_of_the_derived_arch(small_net):
    space, _, variables, _ = small_net
    table = fake_table(space)
    costs = SlotCosts.from_table(space, table)
    rng = np.random.default_rng(1)
    for _ in range(4):
        params = force_levels(space, variables["params"], _random_levels(space, rng))
        gates = [slot_gates(p, params[p.prefix]) for p in space_plan(space)]
        assert float(costs.expected(gates)) == pytest.approx(table.predict(derive_arch(space, params)),
                                                             rel=1e-5)
    lo, hi = costs.extremes()
    assert lo < hi


def test_cost_gradient_raises_every_threshold(small_net):
    space, _, variables, _ = small_net
    costs = SlotCosts.from_metric(space, "bops")
    plans = space_plan(space)
    grads = jax.jit(jax.grad(
        lambda p: jnp.log(costs.expected([slot_gates(pl, p[pl.prefix]) for pl in plans]))))(
        variables["params"])
    for plan in plans:
        for ladder in plan.ladders:
            g = np.asarray(grads[plan.prefix][f"t_{ladder}"])
            assert np.all(g < 0), (plan.prefix, ladder, g)     # raising t lowers the cost


def test_unknown_cost_metric_is_refused():
    with pytest.raises(NasInputError, match="unknown cost metric"):
        SlotCosts.from_metric(small_space(), "watts")


# ----------------------------------------------------------------------- threshold optimizer
def test_threshold_rule_is_frozen_during_warmup_then_keeps_relative_speeds():
    from nas.single_path.threshold_opt import scale_by_shared_rms

    tx = scale_by_shared_rms(warmup_steps=3)
    params = {"a": jnp.zeros((2,)), "b": jnp.zeros((1,))}
    grads = {"a": jnp.array([4.0, -1.0]), "b": jnp.array([0.5])}
    state = tx.init(params)
    for _ in range(3):
        upd, state = tx.update(grads, state)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(upd))
    upd, state = tx.update(grads, state)
    rms = np.sqrt(np.mean([16.0, 1.0, 0.25]))
    # first active step: bias-corrected, each gradient over the RMS of all of them (not its own
    # magnitude as Adam would: Adam's step would be +-1 for every entry)
    np.testing.assert_allclose(upd["a"], [4.0 / rms, -1.0 / rms], rtol=1e-5)
    np.testing.assert_allclose(upd["b"], [0.5 / rms], rtol=1e-5)


def test_search_optimizer_routes_only_thresholds_to_the_threshold_rule():
    from nas.single_path.threshold_opt import search_optimizer
    from nas.training.trainer import TrainConfig

    tx = search_optimizer(TrainConfig(epochs=1), warmup_steps=5)
    params = {"s1": {"t_kernel": jnp.zeros((2,)), "dw": {"kernel": jnp.ones((3, 3, 1, 4))}}}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(upd["s1"]["t_kernel"], 0.0)         # warm-up: frozen
    assert np.all(np.asarray(upd["s1"]["dw"]["kernel"]) > 0.5)         # AdamW moves the weights
