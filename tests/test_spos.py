"""strategy spos: uniform single-path sampling (SPOS) with the sandwich rule and in-place
distillation (BigNAS) over the single-path superkernel, and sub-networks scored on it with
per-sub-network BatchNorm recalibration (Once-for-All)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

from nas.blocks.layers import BN_MOMENTUM
from nas.errors import NasInputError
from nas.model import build_model
from nas.runs.config import parse_config
from nas.search import run_search
from nas.single_path.export import export_child
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import levels_to_arch, space_plan
from nas.single_path.scoring import SubnetEvaluator
from nas.single_path.subnets import (arch_levels, bottom_levels, gates_levels, network_gates,
                                     sample_gates, top_levels)
from nas.space import Space
from nas.strategies import registry
from nas.strategies.single_path import merge_thresholds, split_thresholds
from nas.strategies.spos import SposParams, make_sandwich_grads, step_subnets
from nas.supernet.synthetic import KERNEL_TASK_SPACE, pair_distance_task
from nas.training.distill import kd_loss
from nas.training.recalibrate import cleared_stats, recalibrated_stats
from nas.training.trainer import cross_entropy
from nas.weight_sharing import SupernetScorer, load_supernet

#: Two slots at 8x8, float activations: skip, expanded width, kernel and weight bits in the
#: first; SE and rank in the second.
MICRO = {
    "name": "spos_micro", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "act": "relu", "dropout": 0.0},
    "defaults": {"act": "relu", "se_ratio": 0.25},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5], "expand": [2, 4],
                   "bits_w": [8, 32]}},
        {"channels": 16, "stride": 2, "repeats": 1,
         "knobs": {"kernel": 3, "expand": 2, "se": [False, True], "rank": [None, 0.5]}}]}
LABEL_SMOOTHING = 0.1


def _batch(seed, n=16):
    rng = np.random.default_rng(seed)
    return {"x": jnp.asarray(rng.normal(size=(n, 8, 8, 1)), jnp.float32),
            "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32), "mask": jnp.ones(n)}


@pytest.fixture(scope="module")
def micro():
    space = Space.from_dict(MICRO, "tests:spos_micro")
    net = SinglePathNetwork(space)
    return space, net, init_single_path(net, jax.random.key(0, impl="unsafe_rbg"))  # compiles fast


# -------------------------------------------------------------------- sampling sub-networks
def test_uniform_sampling_covers_every_level_of_every_ladder_uniformly():
    space = Space.by_name("mixed")  # op switch (MBConv vs Fused-MBConv), skip, widths, SE,
    plans = space_plan(space)       # ranks, weight and activation bits
    draws = 2000
    gates = jax.jit(jax.vmap(lambda k: sample_gates(plans, k)))(
        jax.random.split(jax.random.key(1), draws))
    checked = 0
    for plan in plans:
        for key, g in gates[plan.prefix].items():
            g = np.asarray(g)
            assert set(np.unique(g)) <= {0.0, 1.0}
            levels = g.sum(axis=1).astype(int)
            assert np.all(g == (np.arange(g.shape[1]) < levels[:, None]))  # hard: a prefix on
            counts = np.bincount(levels, minlength=g.shape[1] + 1)
            assert counts.min() > 0, (plan.prefix, key, counts)
            assert chisquare(counts).pvalue > 1e-3, (plan.prefix, key, counts)
            checked += 1
    assert checked >= sum(len(p.ladders) for p in plans)
    # a draw decodes to an Arch of the space and back (a skipped layer's other levels are moot)
    for i in range(5):
        arch = levels_to_arch(space, plans, gates_levels(
            plans, jax.tree_util.tree_map(lambda a: a[i], gates)))
        assert levels_to_arch(space, plans, arch_levels(space, plans, arch)) == arch


def test_an_arch_maps_to_the_sub_network_of_its_channel_count():
    space = Space.by_name("tiny")
    plans = space_plan(space)
    arch = levels_to_arch(space, plans, top_levels(plans))
    pruned = dict(arch, s2_b1_expand=6, s2_b1_width=0.5)   # 16 * 6 * 0.5 = 16 * 3 * 1.0
    narrow = dict(arch, s2_b1_expand=3, s2_b1_width=1.0)
    assert arch_levels(space, plans, pruned) == arch_levels(space, plans, narrow)
    assert arch_levels(space, plans, pruned)["s2_b1"]["mid"] == 1  # of 24, 48, 96 channels
    assert arch_levels(space, plans, arch) == top_levels(plans)


def test_each_step_trains_the_largest_the_smallest_and_fresh_uniform_draws(micro):
    space = micro[0]
    plans = space_plan(space)
    params = SposParams(random_subnets=3)
    top, bottom = network_gates(plans, top_levels(plans)), network_gates(plans, bottom_levels(plans))
    drawn = set()
    for seed in range(4):
        subnets = step_subnets(plans, params, jax.random.key(seed))
        pick = lambda i: jax.tree_util.tree_map(lambda a: a[i], subnets.gates)  # noqa: E731
        assert gates_levels(plans, pick(0)) == gates_levels(plans, top)
        assert gates_levels(plans, pick(1)) == gates_levels(plans, bottom)
        drawn |= {json.dumps(gates_levels(plans, pick(i)), sort_keys=True) for i in (2, 3, 4)}
        np.testing.assert_array_equal(subnets.labels, [1, 0, 0, 0, 0])   # distilled
        np.testing.assert_array_equal(subnets.teacher, [1, 0, 0, 0, 0])
    assert len(drawn) >= 8  # 12 uniform draws over 64 sub-networks
    no_kd = step_subnets(plans, SposParams(inplace_distill=False, random_subnets=1),
                         jax.random.key(0))
    np.testing.assert_array_equal(no_kd.labels, [1, 1, 1])
    spos = step_subnets(plans, SposParams(sandwich=False, inplace_distill=False),
                        jax.random.key(0))
    np.testing.assert_array_equal(spos.labels, [1, 1])


def test_sandwich_gradients_sum_labels_for_the_largest_and_its_soft_predictions_for_the_rest(micro):
    """The reference: each sub-network's gradient on its own, the largest's on the labels, every
    other's on the largest's softmax(logits / T) held constant."""
    space, net, variables = micro
    plans = space_plan(space)
    params = SposParams(random_subnets=1, kd_temperature=2.0)
    weights, thresholds = split_thresholds(space, variables["params"])
    stats, batch, key = variables["batch_stats"], _batch(3), jax.random.key(5)
    got, _, metrics = jax.jit(make_sandwich_grads(net, space, params, LABEL_SMOOTHING))(
        weights, thresholds, stats, batch, key)

    def logits_of(w, gates):
        return net.apply({"params": merge_thresholds(w, thresholds), "batch_stats": stats},
                         batch["x"], train=True, gates=gates, mutable=["batch_stats"])[0]

    def soft(w, gates):
        return jax.nn.softmax(logits_of(w, gates) / 2.0)

    @jax.jit
    def grad_on(gates, target, on_labels):  # one sub-network: labels or fixed soft targets
        return jax.grad(lambda w: jnp.where(
            on_labels, cross_entropy(logits_of(w, gates), batch["y"], batch["mask"], LABEL_SMOOTHING),
            kd_loss(logits_of(w, gates), target, 2.0, batch["mask"])))(weights)

    @jax.jit
    def grad_unstopped(gates, teacher_gates):  # the mistake: the targets' gradient kept
        return jax.grad(lambda w: kd_loss(logits_of(w, gates), soft(w, teacher_gates), 2.0,
                                          batch["mask"]))(weights)

    def add(*trees):
        return jax.tree_util.tree_map(lambda *a: sum(a), *trees)

    gates = step_subnets(plans, params, key).gates
    subnet = [jax.tree_util.tree_map(lambda a, i=i: a[i], gates) for i in range(3)]
    target = jax.jit(soft)(weights, subnet[0])
    largest = grad_on(subnet[0], target, True)
    right = add(largest, *[grad_on(g, target, False) for g in subnet[1:]])
    on_labels = add(largest, *[grad_on(g, target, True) for g in subnet[1:]])
    unstopped = add(largest, *[grad_unstopped(g, subnet[0]) for g in subnet[1:]])

    def gap(x, y):
        return max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)))

    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(right)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert gap(got, on_labels) > 1e-3 and gap(got, unstopped) > 1e-3  # both mistakes show
    assert np.isfinite(float(metrics["loss"])) and float(metrics["count"]) == 16


def test_bad_params_are_one_line():
    with pytest.raises(NasInputError) as e:
        registry.parse_params("spos", {"sandwich": False}, "c.yaml")
    assert e.value.field == "strategy.params" and "inplace_distill needs sandwich" in e.value.message
    with pytest.raises(NasInputError) as e:
        registry.parse_params("spos", {"epochs": 3}, "c.yaml")
    assert e.value.field == "strategy.params.epochs"
    acts = dict(MICRO, stages=[{"channels": 8, "stride": 1, "knobs": {"act": ["relu", "hswish"]}}])
    with pytest.raises(NasInputError) as e:  # the spaces single_path refuses, in one line
        registry.entry("spos").check_space(Space.from_dict(acts))
    assert "spos trains the single-path superkernel: single_path cannot search" in e.value.message


# ---------------------------------------------------------- scoring with recalibrated BN
def test_a_scored_sub_network_is_its_exported_child_with_the_same_recalibrated_statistics(micro):
    space, net, variables = micro
    plans = space_plan(space)
    scorer = SubnetEvaluator(net)
    x_cal, x = _batch(10, 32)["x"], _batch(11, 12)["x"]
    levels = {"s1_b1": {"keep": 1, "mid": 0, "kernel": 1, "bits": 0},
              "s2_b1": {"se": 1, "rank": 0}}
    gates = network_gates(plans, levels)
    stats = scorer.recalibrate(variables, gates, x_cal)
    recalibrated = {"params": variables["params"], "batch_stats": stats}
    arch, child_vars = export_child(space, recalibrated, levels)
    assert arch_levels(space, plans, arch) == levels
    child = build_model(space, arch)
    want = jax.jit(child.apply)(child_vars, x)
    got = jax.jit(lambda v, x: net.apply(v, x, gates=gates))(recalibrated, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.predict(variables, gates, x_cal, x, 5),
                                  np.argmax(want, -1))
    # the child recalibrated standalone has the statistics cut from the superkernel's
    stats0 = cleared_stats(child_vars["batch_stats"])
    _, upd = jax.jit(lambda v, x: child.apply(v, x, train=True, mutable=["batch_stats"]))(
        {"params": child_vars["params"], "batch_stats": stats0}, x_cal)
    own = recalibrated_stats(stats0, upd["batch_stats"], BN_MOMENTUM)
    for a, b in zip(jax.tree_util.tree_leaves(own), jax.tree_util.tree_leaves(child_vars["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_recalibration_gives_each_sub_network_its_own_statistics(micro):
    space, net, variables = micro
    plans = space_plan(space)
    scorer = SubnetEvaluator(net)
    x_cal = _batch(10, 32)["x"]
    small = scorer.recalibrate(variables, network_gates(plans, bottom_levels(plans)), x_cal)
    large = scorer.recalibrate(variables, network_gates(plans, top_levels(plans)), x_cal)
    # the stem sees the same images in both; the head's input depends on the sub-network
    for name in ("mean", "var"):
        np.testing.assert_allclose(small["stem"]["bn"][name], large["stem"]["bn"][name], rtol=1e-5)
        assert not np.allclose(small["head"]["bn"][name], large["head"]["bn"][name], rtol=1e-2)
        assert not np.allclose(large["head"]["bn"][name],
                               variables["batch_stats"]["head"]["bn"][name], rtol=1e-2)
    # and they are the batch's own moments (here: the stem's, computed directly)
    conv = jax.lax.conv_general_dilated(
        x_cal, variables["params"]["stem"]["conv"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(large["stem"]["bn"]["mean"], conv.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(large["stem"]["bn"]["var"], conv.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-5)


# ------------------------------------------- a spos workdir scores candidates of a search
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A spos supernet trained on the pair task, where only the 7x7 kernel sees both pixels."""
    folder = tmp_path_factory.mktemp("spos")
    x, y = pair_distance_task(1400, 0)
    np.savez(folder / "pairs.npz", x=x, y=y)
    data = f"npz:{folder / 'pairs.npz'}"
    config = {"space": KERNEL_TASK_SPACE, "data": data, "seed": 0, "objective": {"metric": "params"},
              "strategy": {"name": "spos", "params": {"random_subnets": 0}},
              "train": {"epochs": 4, "batch_size": 50, "learning_rate": 0.01, "warmup_epochs": 0}}
    summary = run_search(parse_config(config, "spos.yaml"), folder / "supernet").summary()
    return folder, data, summary


def test_spos_writes_a_workdir_whose_largest_child_is_scored_like_the_supernet(task):
    folder, _, summary = task
    wd = folder / "supernet"
    assert summary["strategy"] == "spos" and summary["family"] == "one_shot"
    assert summary["arch"] == {"s1_b1_kernel": 7}  # derive: the largest sub-network
    assert summary["val_accuracy"] > 0.85 > summary["smallest_val_accuracy"], summary
    records = [json.loads(line) for line in (wd / "history.jsonl").open()]
    assert [r["epoch"] for r in records] == list(range(1, 5))
    last = records[-1]["metrics"]
    assert last["val_accuracy"] == pytest.approx(summary["val_accuracy"])
    assert last["smallest_val_accuracy"] == pytest.approx(summary["smallest_val_accuracy"])
    sn = load_supernet(wd)
    assert sn.kind == "superkernel" and sn.epochs == 4
    scorer = SupernetScorer(str(wd), calibration_images=512)
    assert scorer({"s1_b1_kernel": 7})["val_accuracy"] == pytest.approx(summary["val_accuracy"])


def test_supernet_mode_search_scores_candidates_on_a_spos_supernet(task, tmp_path):
    folder, data, _ = task
    config = {"space": KERNEL_TASK_SPACE, "data": data, "seed": 0, "budget": 3,
              "strategy": {"name": "random"}, "objective": {"metric": "params"},
              "evaluation": {"mode": "supernet", "supernet": str(folder / "supernet")}}
    result = run_search(parse_config(config, "random.yaml"), tmp_path / "random")
    records = [json.loads(line) for line in (tmp_path / "random" / "history.jsonl").open()]
    assert len(records) == 3 and {r["scored_by"] for r in records} == {"supernet"}
    scores = {r["arch"]["s1_b1_kernel"]: r["accuracy"] for r in records}
    assert scores[7] > max(scores[3], scores[5]) + 0.2, scores  # the needed kernel ranks first
    assert result.best["arch"] == {"s1_b1_kernel": 7}


def test_the_macs_prior_scores_a_candidate_against_a_fixed_uniform_sample(task, tmp_path):
    """evaluation.prior macs: accuracy = mean of the supernet accuracy's and the MACs'
    percentiles among the space's uniform reference Archs (here all three kernels), whatever
    else the search scores; the supernet accuracy stays in val_accuracy."""
    from nas.weight_sharing import prior_reference

    folder, data, _ = task
    wd = str(folder / "supernet")
    plain = SupernetScorer(wd, calibration_images=512)
    reference = prior_reference(plain.load().space, 3)
    assert sorted(a["s1_b1_kernel"] for a in reference) == [3, 5, 7]
    alone = {a["s1_b1_kernel"]: plain(a) for a in reference}
    val = {k: r["val_accuracy"] for k, r in alone.items()}
    macs = {k: r["macs"] for k, r in alone.items()}

    def percentile(values, v):
        return (sum(x < v for x in values) + 0.5 * sum(x == v for x in values)) / len(values)

    with_prior = SupernetScorer(wd, calibration_images=512, prior="macs", prior_archs=3)
    for k in (7, 3, 5):
        r = with_prior({"s1_b1_kernel": k})
        want = 0.5 * (percentile(val.values(), val[k]) + percentile(macs.values(), macs[k]))
        assert r["accuracy"] == pytest.approx(want) and r["val_accuracy"] == val[k]
        assert r["scored_by"] == "supernet + MACs prior"
    # in a search: the records say how they were scored, and the needed kernel still wins
    config = {"space": KERNEL_TASK_SPACE, "data": data, "seed": 0, "budget": 3,
              "strategy": {"name": "random"}, "objective": {"metric": "params"},
              "evaluation": {"mode": "supernet", "supernet": wd, "prior": "macs",
                             "prior_archs": 3}}
    result = run_search(parse_config(config, "random.yaml"), tmp_path / "random")
    records = [json.loads(line) for line in (tmp_path / "random" / "history.jsonl").open()]
    assert {r["scored_by"] for r in records} == {"supernet + MACs prior"}
    assert result.best["arch"] == {"s1_b1_kernel": 7}
