"""Single-Path NAS searches FBNet-style candidate blocks (the shipped fbnet_cifar space): the
candidates become nested ladders (keep or a skip-projection op switch, a mid ladder whose lowest
level is the group-2 block, kernel), the superkernel computes the exported child at hard gates
(group-2 blocks with their channel shuffle included), the cost term is the derived Arch's cost,
and ``nas search --check`` passes single_path on fbnet_cifar. On a small fbnet-like space
(8x8, two layers: an identity skip and a skip projection); fbnet_cifar itself only plans."""

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
from nas.single_path.export import derive_arch, export_child, force_levels
from nas.single_path.gates import slot_gates
from nas.single_path.groups import shuffle_permutation
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import levels_to_arch, max_arch, space_plan
from nas.single_path.subnets import arch_levels
from nas.space import Space
from nas.strategies.single_path import decision_metrics

from single_path_helpers import fake_table

#: FBNet's candidates at expansions 1 (plain and group-2) and 3, kernels 3 and 5, and skip.
CANDIDATES = {
    "k3_e1": {"op": "mbconv", "kernel": 3, "expand": 1},
    "k3_e1_g2": {"op": "mbconv", "kernel": 3, "expand": 1, "groups": 2},
    "k3_e3": {"op": "mbconv", "kernel": 3, "expand": 3},
    "k5_e1": {"op": "mbconv", "kernel": 5, "expand": 1},
    "k5_e1_g2": {"op": "mbconv", "kernel": 5, "expand": 1, "groups": 2},
    "k5_e3": {"op": "mbconv", "kernel": 5, "expand": 3},
    "skip": {"op": "skip"}}
#: Layer 1 keeps its shape (skip = identity), layer 2 changes it (skip = 1x1 conv, stride 2).
FB_SMALL = {
    "name": "sp_fbnet_small", "input": {"resolution": 8, "channels": 3}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "act": "relu", "dropout": 0.0},
    "defaults": {"act": "relu", "skip_projection": True},
    "stages": [{"channels": 8, "stride": 1, "repeats": 1, "candidates": CANDIDATES},
               {"channels": 12, "stride": 2, "repeats": 1, "candidates": CANDIDATES}]}
BIG = 1e3   # a threshold far beyond any norm: the gate is off (-BIG: on)


def small_space(definition=None) -> Space:
    return Space.from_dict(definition or FB_SMALL, "tests:sp_fbnet_small")


@pytest.fixture(scope="module")
def trained():
    """The small space, its network and variables after one training batch, plus the batch."""
    space = small_space()
    x = jax.random.normal(jax.random.key(7), (4, 8, 8, 3))
    net = SinglePathNetwork(space)
    variables = init_single_path(net, jax.random.key(0, impl="unsafe_rbg"))  # compiles fast
    run = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))
    variables = {"params": variables["params"], "batch_stats": run(variables)[1]["batch_stats"]}
    return space, variables, x, lambda v: run(v)[0]


# ----------------------------------------------------------------------------------- plan
def test_fbnet_cifar_candidates_become_nested_ladders_and_name_every_block():
    space = Space.by_name("fbnet_cifar")
    plans = space_plan(space)
    switches = [p.prefix for p in plans if p.branches]
    assert switches == ["s2_b1", "s3_b1", "s4_b1", "s5_b1", "s6_b1", "s7_b1"]  # shape changes
    names = set(space.choices("s1_b1_block"))
    for plan in plans:
        slot = plan.slot
        body = plan.branch("mbconv") if plan.branches else plan
        c = slot.cin
        assert [v[0] for v in body.ladders["mid"].values] == [c, c, 3 * c, 6 * c]
        assert body.mid_groups == (2, 1, 1, 1) and body.kernel_sizes == (3, 5)
        if plan.branches:
            assert plan.ladders["op"].values == ("skip", "mbconv")
            assert plan.branch("skip").ladders == {}                 # a 1x1 conv: no ladder
            assert plan.spec({"op": 0}).op == "skip_proj"
            named = set(plan.branch("skip").block_names.values()) | set(body.block_names.values())
        else:
            assert list(plan.ladders) == ["keep", "mid", "kernel"]
            named = set(plan.block_names.values())
        assert named == names                                        # every candidate, once
    bottom = {p.prefix: {n: 0 for n in p.ladders} for p in plans}
    g2 = {p.prefix: {"keep": 1, "op": 1, "mid": 0, "kernel": 1} for p in plans}
    e1 = {p.prefix: {"keep": 1, "op": 1, "mid": 1, "kernel": 0} for p in plans}
    archs = [max_arch(space, plans)] + [levels_to_arch(space, plans, lv) for lv in (bottom, g2, e1)]
    assert [set(a.values()) for a in archs] == [{"k5_e6"}, {"skip"}, {"k5_e1_g2"}, {"k3_e1"}]
    for arch in archs:   # and back: the sub-network levels of an Arch (spos scoring)
        assert levels_to_arch(space, plans, arch_levels(space, plans, arch)) == arch


def test_candidates_that_do_not_nest_are_refused_in_one_line():
    d = copy.deepcopy(FB_SMALL)           # k5 at expansion 3 missing: not a product
    del d["stages"][0]["candidates"]["k5_e3"]
    with pytest.raises(NasInputError, match=r"s1_b1_block.*not a product.*'expand': 3.*'kernel': 5"):
        space_plan(small_space(d))
    d = copy.deepcopy(FB_SMALL)           # group-2 convs above the lowest channel count
    d["stages"][0]["candidates"] = {**CANDIDATES, "k3_e3": {**CANDIDATES["k3_e3"], "groups": 2}}
    with pytest.raises(NasInputError, match="s1_b1_block.*grouped 1x1 convs nest only at the lowest"):
        space_plan(small_space(d))


# ------------------------------------------------------------------------ superkernel = child
def _with_thresholds(params, values):
    """Every slot's thresholds (an op switch's branches' too) set to `values[ladder]`."""
    def walk(tree):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out[key] = walk(value)
            elif key.startswith("t_"):
                out[key] = jnp.asarray(values[key[2:]], jnp.float32) * jnp.ones_like(value)
            else:
                out[key] = value
        return out
    return {k: walk(v) if k.startswith("s") else v for k, v in params.items()}


def _child_output(space, arch, child_vars, x):
    child = build_model(space, arch)
    ref = init_variables(child, jax.random.key(1), (1, 8, 8, 3))
    assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(child_vars)
    return jax.jit(lambda v: child.apply(v, x, train=True, mutable=["batch_stats"])[0])(child_vars)


@pytest.mark.parametrize("thresholds,blocks", [
    ({"keep": BIG, "op": BIG, "mid": BIG, "kernel": BIG}, ("skip", "skip")),          # smallest
    ({"keep": -BIG, "op": -BIG, "mid": -BIG, "kernel": -BIG}, ("k5_e3", "k5_e3")),    # largest
    ({"keep": -BIG, "op": -BIG, "mid": [BIG, -BIG], "kernel": -BIG}, ("k5_e1_g2",) * 2),
    ({"keep": BIG, "op": -BIG, "mid": [-BIG, BIG], "kernel": BIG}, ("skip", "k3_e1")),
], ids=["smallest", "largest", "g2", "e1"])
def test_extreme_thresholds_give_the_exact_child(trained, thresholds, blocks):
    space, variables, x, apply = trained
    full = {"params": _with_thresholds(variables["params"], thresholds),
            "batch_stats": variables["batch_stats"]}
    arch, child_vars = export_child(space, full)
    assert (arch["s1_b1_block"], arch["s2_b1_block"]) == blocks
    np.testing.assert_allclose(_child_output(space, arch, child_vars, x), apply(full),
                               rtol=1e-5, atol=1e-5)
    sk, child = full["params"]["s2_b1"], child_vars["params"].get("s2_b1", {})
    if blocks[1] == "skip":            # the skip projection is the switch's own 1x1 conv
        assert space.block_specs(arch)[2].op == "skip_proj"
        np.testing.assert_array_equal(child["conv"]["kernel"], sk["skip"]["conv"]["kernel"])
    if blocks[1].endswith("_g2"):      # diagonal blocks; the shuffle's permutation after it
        w1, w2 = sk["mbconv"]["expand"]["kernel"][0, 0], sk["mbconv"]["project"]["kernel"][0, 0]
        perm = shuffle_permutation(8, 2)
        np.testing.assert_array_equal(child["expand"]["kernel"][0, 0],
                                      np.concatenate([w1[:4, :4], w1[4:8, 4:8]], axis=1))
        np.testing.assert_array_equal(child["project"]["kernel"][0, 0],
                                      np.concatenate([w2[perm[:4], :6], w2[perm[4:], 6:]], axis=1))
        np.testing.assert_array_equal(child["dw"]["kernel"][..., 0, :],
                                      sk["mbconv"]["dw"]["kernel"][..., 0, perm])


# ------------------------------------------------------------------------------ cost term
def test_cost_term_is_the_derived_archs_cost_and_the_group_gate_learns_from_it(trained):
    space, variables, _, _ = trained
    params, stats = variables["params"], variables["batch_stats"]
    plans = space_plan(space)
    table = fake_table(space)
    costs = {"macs": SlotCosts.from_metric(space, "macs"), "ms": SlotCosts.from_table(space, table)}

    def cost(p, which):
        return costs[which].expected([slot_gates(plan, p[plan.prefix], stats[plan.prefix])
                                      for plan in plans])

    grad = jax.jit(jax.grad(lambda p: cost(p, "macs")))
    cases = [({"keep": 1, "mid": 0, "kernel": 1}, {"op": 1, "mid": 0, "kernel": 0}),
             ({"keep": 1, "mid": 1, "kernel": 0}, {"op": 0}),
             ({"keep": 0}, {"op": 1, "mid": 2, "kernel": 1})]
    seen = set()
    for s1, s2 in cases:
        forced = force_levels(space, params, {"s1_b1": s1, "s2_b1": s2}, stats)
        arch = derive_arch(space, forced, stats)
        macs = sum(float(layer_costs(spec)["macs"]) for spec in space.block_specs(arch))
        assert float(cost(forced, "macs")) == pytest.approx(macs, rel=1e-6)
        assert float(cost(forced, "ms")) == pytest.approx(table.predict(arch), rel=1e-5)
        seen.add(macs)
        logged = decision_metrics(space, costs["macs"], forced, stats)
        assert logged["decision/s1_b1_block"] == list(CANDIDATES).index(arch["s1_b1_block"])
        if s1.get("keep") == 1:     # at g2 / e1 the group gate sees the cost difference
            assert float(grad(forced)["s1_b1"]["t_mid"][0]) != 0.0
    assert len(seen) == len(cases)
    g = grad(force_levels(space, params, {"s2_b1": {"op": 1}}, stats))["s2_b1"]
    assert float(g["t_op"][0]) != 0.0           # skip projection vs MBConv: a cost difference


# ---------------------------------------------------------------------------- CLI check
def test_check_passes_single_path_on_the_shipped_fbnet_cifar_space(tmp_path, capsys):
    from nas.cli import main

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({
        "space": "fbnet_cifar", "data": "synthetic",
        "latency_table": "latency_tables/jax-cpu/fbnet_cifar.json",
        "strategy": {"name": "single_path"}}))
    assert main(["search", str(path), "--check"]) == 0, capsys.readouterr().err
    space = Space.by_name("fbnet_cifar")
    from nas.latency.table import LatencyTable

    table = LatencyTable.load("latency_tables/jax-cpu/fbnet_cifar.json", space)
    costs = SlotCosts.from_table(space, table)          # every block of every slot is in it
    plans = space_plan(space)

    def top(plan):                                      # every gate on: the largest child
        if plan.branches:
            return {"op": jnp.ones((1,)), **{f"{b.base_op}/{n}": jnp.ones((l.gates,))
                                             for b in plan.branches for n, l in b.ladders.items()}}
        return {n: jnp.ones((l.gates,)) for n, l in plan.ladders.items()}

    assert float(costs.expected([top(p) for p in plans])) == pytest.approx(
        table.predict(max_arch(space, plans)), rel=1e-5)
