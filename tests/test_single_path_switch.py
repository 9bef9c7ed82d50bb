"""Single-Path NAS searches a choice between two operators that do not nest (MBConv vs
Fused-MBConv, the shipped mixed space's stages 2-3): the op switch's plan, its superkernel (both
branches, the op gate selects one), derive / export, the cost term, the CLI check on mixed and a
tiny search."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from nas.errors import NasInputError
from nas.metrics import layer_costs
from nas.model import build_model, init_variables
from nas.single_path.cost import SlotCosts
from nas.single_path.export import derive_arch, derive_levels, export_child, force_levels
from nas.single_path.gates import slot_gates
from nas.single_path.plan import space_plan
from nas.space import Space

from single_path_helpers import SMALL, trained_once

#: A mixed-like slot at 16x16: MBConv or Fused-MBConv or skip, with kernel, expand x width,
#: weight and activation bit-widths and rank nested inside each operator.
SWITCH = {
    "name": "sp_switch", "input": {"resolution": 16, "channels": 3}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu6"},
    "head": {"channels": 16, "act": "relu6", "dropout": 0.0},
    "defaults": {"act": "relu6", "se_ratio": 0.25},
    "stages": [{"channels": 8, "stride": 1, "repeats": 1,
                "knobs": {"op": ["mbconv", "fused_mbconv", "skip"], "kernel": [3, 5],
                          "expand": [2, 4], "width": [0.5, 1.0], "bits_w": [8, 32],
                          "bits_a": [8, 32], "rank": [None, 0.5]}}]}


@pytest.fixture(scope="module")
def trained():
    """The space, its network and variables after one training batch (BatchNorm moments,
    running ranges, the bits_a residual statistics of both branches), plus the batch."""
    space = Space.from_dict(SWITCH, "tests:sp_switch")
    x = jax.random.normal(jax.random.key(7), (2, 16, 16, 3))
    net, variables = trained_once(space, x)
    return space, net, variables, x


# ----------------------------------------------------------------------------------- plan
def test_operators_that_do_not_nest_make_an_op_switch_of_two_branches():
    plan = space_plan(Space.from_dict(SWITCH, "tests:sp_switch"))[0]
    assert plan.ladders["op"].values == ("mbconv", "fused_mbconv")     # listed order
    assert [b.base_op for b in plan.branches] == ["mbconv", "fused_mbconv"]
    assert set(plan.ladders) == {"keep", "op", "mid", "kernel", "rank", "bits", "bits_a"}
    for branch in plan.branches:        # every other knob nests inside each operator
        assert set(branch.ladders) == set(plan.ladders) - {"op"} and not branch.branches
    assert plan.spec({"op": 0, "keep": 1}).op == "mbconv"
    assert plan.spec({"op": 1, "keep": 1, "kernel": 0}).op == "fused_mbconv"
    assert plan.spec({"op": 1, "keep": 0}).op == "skip"
    assert plan.threshold_paths()[:2] == ["t_op", "mbconv/t_keep"]
    # DWSep inside an MBConv at expand 1 stays a nested segment switch; at expand 3 it is not
    # nested (other channels), so it becomes an op switch
    assert space_plan(Space.from_dict(SMALL))[0].branches == ()
    d = copy.deepcopy(SMALL)
    d["stages"][0]["knobs"]["expand"] = 3
    assert [b.base_op for b in space_plan(Space.from_dict(d))[0].branches] == ["mbconv", "dwsep"]


def test_three_operators_are_refused_in_one_line():
    d = copy.deepcopy(SWITCH)
    d["stages"][0]["knobs"]["op"] = ["mbconv", "fused_mbconv", "dwsep"]
    with pytest.raises(NasInputError, match="s1_b1_op.*single_path cannot search.*two operators"):
        space_plan(Space.from_dict(d))


# ------------------------------------------------------------------------ superkernel = child
def _with_t_op(params, t):
    params = dict(params)
    params["s1_b1"] = {**params["s1_b1"], "t_op": jnp.full((1,), t, jnp.float32)}
    return params


def test_extreme_op_thresholds_give_the_mbconv_and_the_fused_child_exactly(trained):
    space, net, variables, x = trained
    assert set(variables["params"]["s1_b1"]) == {"t_op", "mbconv", "fused_mbconv"}
    apply = jax.jit(net.apply)          # every other gate on: float weights and activations
    for t, op in ((1e3, "mbconv"), (-1e3, "fused_mbconv")):
        full = {"params": _with_t_op(variables["params"], t),
                "batch_stats": variables["batch_stats"]}
        arch, child_vars = export_child(space, full)
        assert arch["s1_b1_op"] == op
        assert (arch["s1_b1_kernel"], arch["s1_b1_expand"], arch["s1_b1_bits_w"]) == (5, 4, 32)
        child = build_model(space, arch)
        np.testing.assert_allclose(jax.jit(child.apply)(child_vars, x), apply(full, x),
                                   rtol=1e-5, atol=1e-5)
        kxk = {"mbconv": "dw", "fused_mbconv": "expand"}[op]           # the branch's own weights
        np.testing.assert_array_equal(child_vars["params"]["s1_b1"][kxk]["kernel"],
                                      full["params"]["s1_b1"][op][kxk]["kernel"])


def test_each_branch_nests_its_knobs_and_its_child_computes_what_the_superkernel_does(trained):
    space, net, variables, x = trained
    stats = variables["batch_stats"]
    # float activations (a jitted quantizer may round its input otherwise); int8 weights in one
    apply = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"])[0])
    for op in (0, 1):
        levels = {"s1_b1": {"op": op, "keep": 1, "mid": op, "kernel": 0, "rank": 1 - op,
                            "bits": op, "bits_a": 1}}
        params = force_levels(space, variables["params"], levels, stats)
        full = {"params": params, "batch_stats": stats}
        assert derive_levels(space, params, stats) == levels
        arch, child_vars = export_child(space, full)
        assert arch["s1_b1_op"] == ("mbconv", "fused_mbconv")[op] and arch["s1_b1_kernel"] == 3
        child = build_model(space, arch)
        ref = init_variables(child, jax.random.key(1), (1, 16, 16, 3))
        assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(child_vars)
        got = jax.jit(lambda v: child.apply(v, x, train=True, mutable=["batch_stats"])[0])
        np.testing.assert_allclose(got(child_vars), apply(full), rtol=1e-5, atol=1e-5)
    fused = params["s1_b1"]["fused_mbconv"]["expand"]["kernel"]            # [5, 5, 8, 32]
    m = child_vars["params"]["s1_b1"]["expand"]["kernel"].shape[-1]
    np.testing.assert_array_equal(child_vars["params"]["s1_b1"]["expand"]["kernel"],
                                  fused[1:4, 1:4, :, :m])                   # centre taps, first m


# ------------------------------------------------------------------------------ cost term
def test_cost_follows_the_op_decision_and_is_the_metric_of_the_derived_arch(trained):
    space, _, variables, _ = trained
    params, stats = variables["params"], variables["batch_stats"]
    costs = SlotCosts.from_metric(space, "bops")
    plan = space_plan(space)[0]

    def cost(p):
        return costs.expected([slot_gates(plan, p["s1_b1"], stats["s1_b1"])])

    cost_and_grads = jax.jit(jax.value_and_grad(lambda p: jnp.log(cost(p))))

    seen = []
    for op in (0, 1):
        forced = force_levels(space, params, {"s1_b1": {"op": op, "kernel": op}}, stats)
        arch = derive_arch(space, forced, stats)
        bops = sum(float(layer_costs(spec)["bops"]) for spec in space.block_specs(arch))
        log_cost, grads = cost_and_grads(forced)
        assert float(jnp.exp(log_cost)) == pytest.approx(bops, rel=1e-5)
        seen.append(bops)
        grads = grads["s1_b1"]
        assert float(grads["t_op"][0]) != 0.0               # the op gate sees the cost difference
        chosen, other = ("mbconv", "fused_mbconv")[op], ("fused_mbconv", "mbconv")[op]
        assert np.all(np.asarray(grads[chosen]["t_mid"]) < 0)       # the chosen branch's ladders
        assert np.all(np.asarray(grads[other]["t_mid"]) == 0)       # not the other's
    assert seen[0] != seen[1]
    lo, hi = costs.extremes()
    assert lo < min(seen) and max(seen) <= hi


# ------------------------------------------------------------------------ CLI check and run
def test_check_passes_single_path_on_the_shipped_mixed_space(tmp_path, capsys):
    from nas.cli import main

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": "mixed", "data": "synthetic",
                                    "strategy": {"name": "single_path", "params": {"cost": "bops"}}}))
    assert main(["search", str(path), "--check"]) == 0, capsys.readouterr().err
    plans = space_plan(Space.by_name("mixed"))
    assert sum(1 for p in plans if p.branches) == 5          # stages 2-3: mbconv | fused_mbconv


def test_a_one_step_search_with_the_op_switch_trains_and_exports_its_child(tmp_path):
    from nas.data import load_data
    from nas.strategies.single_path import SinglePathParams
    from nas.strategies.single_path_run import SinglePathSetup, search
    from nas.training.checkpoint import load_trained
    from nas.training.trainer import TrainConfig

    d = copy.deepcopy(SWITCH)        # float, full rank: a cheaper compile, the same op switch
    d["stages"][0]["knobs"].update(bits_w=32, bits_a=32, rank=None)
    space = Space.from_dict(d, "tests:sp_switch_float")
    setup = SinglePathSetup(space, load_data("synthetic", space, synthetic_size=16), None,
                            SlotCosts.from_metric(space, "bops"),
                            SinglePathParams(lam=1.0, cost="bops"), None,
                            TrainConfig(epochs=1, batch_size=8, learning_rate=1e-2))
    out = search(setup, tmp_path / "run")
    params, stats = out["variables"]["params"], out["variables"]["batch_stats"]
    assert out["arch"] == derive_arch(space, params, stats)
    assert out["history"][-1]["decision/s1_b1_op"] in (0.0, 1.0, 2.0)
    assert set(out["gates"]["s1_b1"]) >= {"op", "mbconv/kernel", "fused_mbconv/kernel"}
    archfile, _, child_vars, _ = load_trained(tmp_path / "run" / "child")
    assert archfile.arch == out["arch"]
