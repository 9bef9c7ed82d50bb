"""Single-Path NAS searches the activation bit-width bits_a: the nested activation quantizer, its
gates on the running activation residual, the cost term, derive / export, and the CLI check."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from nas.blocks.program import Quantize
from nas.blocks.quant import ActQuant
from nas.metrics import layer_costs
from nas.model import build_model, init_variables
from nas.single_path.cost import SlotCosts
from nas.single_path.export import derive_arch, derive_levels, export_child, force_levels
from nas.single_path.gates import slot_gates
from nas.single_path.indicators import hard_level
from nas.single_path.nested_act_quant import (FIRST_RESIDUAL_STAT, RESIDUAL_STAT, NestedActQuant,
                                              residual_growth)
from nas.single_path.plan import space_plan
from nas.single_path.roles import slot_program
from nas.space import Space

from single_path_helpers import trained_once

#: Two slots at 8x8: an MBConv slot (hswish: pre-activation points) with skip, mid, SE, rank,
#: weight bits and three activation bit-widths, and a DWSep slot searching only bits_a.
ACT_BITS = {
    "name": "sp_bits_a", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "act": "relu", "dropout": 0.0},
    "defaults": {"act": "hswish", "se_ratio": 0.25},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "skip"], "kernel": 3, "expand": [2, 4], "se": [False, True],
                   "rank": [None, 0.5], "bits_w": [8, 32], "bits_a": [4, 8, 32]}},
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": "dwsep", "kernel": 3, "act": "relu", "bits_a": [8, 32]}}]}


@pytest.fixture(scope="module")
def trained():
    """The space, its network, and variables after one training batch (BatchNorm moments,
    running ranges and the residual statistics measured), plus the batch."""
    space = Space.from_dict(ACT_BITS, "tests:sp_bits_a")
    x = jax.random.normal(jax.random.key(7), (4, 8, 8, 1))
    net, variables = trained_once(space, x)
    return space, net, variables, x


# ------------------------------------------------------------------------------ quantizer
def _plain(x, bits, signed):
    """A b-bit ActQuant's training-mode output and running range on `x`."""
    quant = ActQuant(bits, signed)
    variables = quant.init(jax.random.key(0), x, False)
    y, upd = quant.apply(variables, x, True, mutable=["batch_stats"])
    return y, upd.get("batch_stats", {}).get("amax")


@pytest.mark.parametrize("signed", [True, False])
def test_nested_act_quantizer_is_the_plain_quantizer_of_the_selected_bits(signed):
    ladder = (4, 8, 32)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3)) * 3.0
    x = x if signed else jax.nn.relu(x)
    nested = NestedActQuant(ladder, signed)
    variables = nested.init(jax.random.key(0), x, False, jnp.ones((2,)))
    for gates in itertools.product((0.0, 1.0), repeat=2):
        bits = ladder[hard_level(gates)]
        (y, squares), upd = nested.apply(variables, x, True, jnp.array(gates, jnp.float32),
                                         mutable=["batch_stats"])
        want, amax = _plain(x, bits, signed)
        np.testing.assert_array_equal(y, want)                         # bit for bit
        if amax is not None:
            assert upd["batch_stats"]["amax"] == amax                  # the child's running range
    # the residuals the gates decide on: the refinement each finer grid adds
    q4, q8 = _plain(x, 4, signed)[0], _plain(x, 8, signed)[0]
    np.testing.assert_allclose(squares, [np.sum((q8 - q4) ** 2), np.sum((x - q8) ** 2)],
                               rtol=1e-5)


def test_gate_gradient_is_the_difference_the_finer_grid_makes():
    x = jax.random.normal(jax.random.key(2), (8, 5))
    quant = NestedActQuant((8, 32), True)
    variables = quant.init(jax.random.key(0), x, True, jnp.ones((1,)))
    cot = jax.random.normal(jax.random.key(3), x.shape)

    def out(g):
        return jnp.sum(quant.apply(variables, x, False, g)[0] * cot)

    q8 = quant.apply(variables, x, False, jnp.zeros((1,)))[0]
    np.testing.assert_allclose(jax.grad(out)(jnp.ones((1,))), [np.sum(cot * (x - q8))], rtol=1e-5)


# ----------------------------------------------------------------------------------- plan
def test_plan_nests_bits_a_and_the_superkernel_runs_the_lowest_bits_program():
    space = Space.from_dict(ACT_BITS, "tests:sp_bits_a")
    plans = space_plan(space)
    assert plans[0].ladders["bits_a"].values == (4, 8, 32)
    assert plans[1].ladders["bits_a"].values == (8, 32) and set(plans[1].ladders) == {"bits_a"}
    assert plans[0].max_spec().bits_a == 32
    points = [op for op in slot_program(plans[0]).ops if isinstance(op, Quantize)]
    assert points and {q.bits for q in points} == {4}    # every point, at the lowest bits_a
    assert plans[0].spec({"bits_a": 1}).bits_a == 8


# ------------------------------------------------------------------------------ the gates
def test_bits_a_gates_decide_on_the_running_activation_residual(trained):
    space, _, variables, _ = trained
    params, stats = variables["params"], variables["batch_stats"]
    slot = stats["s1_b1"]
    # the first batch sets both estimates: the gates start on with the init margin
    assert np.all(np.asarray(slot[FIRST_RESIDUAL_STAT]) > 0)
    np.testing.assert_array_equal(slot[RESIDUAL_STAT], slot[FIRST_RESIDUAL_STAT])
    np.testing.assert_array_equal(residual_growth(slot), 0.0)
    assert derive_levels(space, params, stats)["s1_b1"]["bits_a"] == 2
    # the residual of the 8 -> 32 step shrinks by e^2 in RMS: that gate turns off (8 bits)
    shrunk = {**slot, RESIDUAL_STAT: slot[RESIDUAL_STAT] * np.array([1.0, np.exp(-4.0)])}
    stats2 = {**stats, "s1_b1": shrunk}
    plan = space_plan(space)[0]
    np.testing.assert_array_equal(slot_gates(plan, params["s1_b1"], shrunk)["bits_a"], [1.0, 0.0])
    assert derive_arch(space, params, stats2)["s1_b1_bits_a"] == 8
    with pytest.raises(ValueError, match="batch_stats"):
        derive_levels(space, params)                      # the gates need the statistics


def test_extreme_thresholds_give_the_lowest_and_the_highest_bits_child(trained):
    space, net, variables, x = trained
    for t, bits in ((1e3, (4, 8)), (-1e3, (32, 32))):
        params = jax.tree_util.tree_map(lambda a: a, dict(variables["params"]))
        for prefix in ("s1_b1", "s2_b1"):
            t_bits_a = jnp.full_like(params[prefix]["t_bits_a"], t)
            params[prefix] = {**params[prefix], "t_bits_a": t_bits_a}
        full = {"params": params, "batch_stats": variables["batch_stats"]}
        levels = derive_levels(space, params, variables["batch_stats"])
        assert (levels["s1_b1"]["bits_a"], levels["s2_b1"]["bits_a"]) == \
            ((0, 0) if bits[0] == 4 else (2, 1))
        arch, child_vars = export_child(space, full)
        assert (arch["s1_b1_bits_a"], arch["s2_b1_bits_a"]) == bits
        assert arch["s1_b1_bits_w"] == 32                    # every other gate still on
        child = build_model(space, arch)
        want = net.apply(full, x)                            # inference: the running ranges
        np.testing.assert_allclose(child.apply(child_vars, x), want, rtol=1e-5, atol=1e-5)


def test_bits_a_child_computes_what_the_superkernel_computes(trained):
    space, net, variables, x = trained
    rng = np.random.default_rng(4)
    for bits_a in range(3):   # eager on both sides: jit may round a quantizer's input differently
        levels = {"s1_b1": {"keep": 1, "mid": int(rng.integers(2)), "se": 1, "rank": bits_a % 2,
                            "bits": int(rng.integers(2)), "bits_a": bits_a},
                  "s2_b1": {"bits_a": bits_a % 2}}
        params = force_levels(space, variables["params"], levels, variables["batch_stats"])
        full = {"params": params, "batch_stats": variables["batch_stats"]}
        assert derive_levels(space, params, variables["batch_stats"]) == levels
        arch, child_vars = export_child(space, full)
        assert arch["s1_b1_bits_a"] == (4, 8, 32)[bits_a]
        child = build_model(space, arch)
        ref = init_variables(child, jax.random.key(1), (1, 8, 8, 1))
        assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(child_vars)
        want, _ = net.apply(full, x, train=True, mutable=["batch_stats"])
        got, _ = child.apply(child_vars, x, train=True, mutable=["batch_stats", "intermediates"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ cost term
def test_cost_trades_bits_a_and_is_the_metric_of_the_derived_arch(trained):
    space, _, variables, _ = trained
    params, stats = variables["params"], variables["batch_stats"]
    costs = SlotCosts.from_metric(space, "bops")
    plans = space_plan(space)

    @jax.jit
    def cost(p):
        return costs.expected([slot_gates(pl, p[pl.prefix], stats[pl.prefix]) for pl in plans])

    for bits_a in range(3):
        forced = force_levels(space, params, {"s1_b1": {"bits_a": bits_a}}, stats)
        arch = derive_arch(space, forced, stats)
        bops = sum(float(layer_costs(spec)["bops"]) for spec in space.block_specs(arch))
        assert float(cost(forced)) == pytest.approx(bops, rel=1e-5)
    grads = jax.jit(jax.grad(lambda p: jnp.log(cost(p))))(params)
    for prefix in ("s1_b1", "s2_b1"):
        assert np.all(np.asarray(grads[prefix]["t_bits_a"]) < 0)   # raising t lowers the cost


# ---------------------------------------------------------------------------------- check
def _mixed_without_fused(resolution: int) -> dict:
    """The shipped mixed space without its Fused-MBConv choice, at a small resolution."""
    from nas.space import spaces_dir

    d = yaml.safe_load((spaces_dir() / "mixed.yaml").read_text())
    for stage in d["stages"]:
        op = stage["knobs"].get("op")
        if isinstance(op, list):
            stage["knobs"] = {**stage["knobs"], "op": [o for o in op if o != "fused_mbconv"]}
    d["input"]["resolution"] = resolution
    return d


def test_check_passes_single_path_on_mixed_with_searched_bits_a(tmp_path, capsys):
    from nas.cli import main

    space = _mixed_without_fused(16)
    plans = space_plan(Space.from_dict(space, "mixed16"))
    assert all("bits_a" in p.ladders for p in plans)
    path = tmp_path / "sp.yaml"
    strategy = {"name": "single_path", "params": {"cost": "bops"}}
    path.write_text(yaml.safe_dump({"space": space, "data": "synthetic", "strategy": strategy}))
    assert main(["search", str(path), "--check"]) == 0, capsys.readouterr().err


def test_a_tiny_single_path_search_over_bits_a_runs_and_exports_its_child(tmp_path):
    from nas.data import load_data
    from nas.strategies.single_path import SinglePathParams
    from nas.strategies.single_path_run import SinglePathSetup, search
    from nas.training.checkpoint import load_trained
    from nas.training.trainer import TrainConfig

    space = Space.from_dict(ACT_BITS, "tests:sp_bits_a")
    setup = SinglePathSetup(space, load_data("synthetic", space, synthetic_size=48), None,
                            SlotCosts.from_metric(space, "bops"),
                            SinglePathParams(lam=5.0, cost="bops"), None,
                            TrainConfig(epochs=1, batch_size=8, learning_rate=3e-2))
    out = search(setup, tmp_path / "run")
    stats = out["variables"]["batch_stats"]
    assert np.all(np.asarray(stats["s1_b1"][RESIDUAL_STAT]) > 0)      # measured in training
    assert out["levels"] == derive_levels(space, out["variables"]["params"], stats)
    assert out["arch"] == derive_arch(space, out["variables"]["params"], stats)
    archfile, _, _, _ = load_trained(tmp_path / "run" / "child")
    assert archfile.arch == out["arch"]
