"""nas specialize: one trained spos supernet, one constrained evolution and exported Arch per
device table (Once-for-All), optionally ranked by an MLP accuracy predictor."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from nas.archfile import load_arch
from nas.cli import main
from nas.data import load_data
from nas.latency.build import keys_to_measure
from nas.latency.precision import RULES
from nas.latency.table import LatencyTable, new_table_data
from nas.runs.config import parse_config
from nas.search import run_search
from nas.single_path.plan import levels_to_arch
from nas.single_path.subnets import arch_levels
from nas.space import Space
from nas.specialize.devices import load_devices, supernet_record
from nas.specialize.evolution import EvolutionSettings, constrained_evolution
from nas.specialize.genome import SubnetGenome
from nas.specialize.predictor import MlpPredictor, rank_check, split_held_out
from nas.specialize.run import SpecializeOptions, specialize
from nas.training.checkpoint import load_trained
from nas.weight_sharing import SupernetScorer, path_accuracy

#: Three 8-channel slots that can skip, each with kernel 3/5/7 and expand 2/4: 7 distinct
#: sub-networks per slot, 343 in all.
THREE_SLOTS = {
    "name": "spec_three", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 0},
    "stages": [{"channels": 8, "stride": 1, "repeats": 3,
                "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5, 7], "expand": [2, 4]}}]}
#: The supernet of the end-to-end tests: 5 x 4 = 20 sub-networks at digits' 8x8.
TWO_SLOTS = {
    "name": "spec_two", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 16},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5], "expand": [2, 4]}},
        {"channels": 16, "stride": 2, "repeats": 1,
         "knobs": {"op": "mbconv", "kernel": [3, 5], "expand": [2, 4]}}]}
FIXED_MS = 0.001  # stem, head and a skip in the constructed tables


def make_table(space, ms_of_layer, device="test", path=None):
    """A complete table (onnxruntime rule, no calibration: predict = plain sum) whose entry of
    each layer is ``ms_of_layer(spec)`` (stem, head and skips: FIXED_MS); saved when `path`."""
    backend = {"name": "onnxruntime", "precision_rule": RULES["onnxruntime"], "versions": {},
               "device": device}
    data = new_table_data(space, backend, {"cpu_model": "test", "threads": 1, "batch": 1,
                                           "date": "2026-01-01"})
    table = LatencyTable(data, space, str(path) if path else "<test>")
    for key, spec in keys_to_measure(space, table.rule).items():
        ms = FIXED_MS if spec.op in ("stem", "head", "skip") else ms_of_layer(spec)
        data["entries"][key] = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "n": 1}
    data["complete"] = True
    if path:
        table.save(path)
    return table


def kernel_heavy(spec):
    return 0.01 + 0.02 * [3, 5, 7].index(spec.kernel) + 0.002 * (spec.expand == 4)


def expand_heavy(spec):
    return 0.01 + 0.002 * [3, 5, 7].index(spec.kernel) + 0.02 * (spec.expand == 4)


def known_accuracy(gs):
    """A fake supernet score, additive over slots: a kept layer 0.3, each kernel level 0.2,
    the wide expansion 0.25."""
    def score_many(genomes):
        out = []
        for genome in genomes:
            total = 0.0
            for levels in gs.levels(genome).values():
                if levels["keep"]:
                    total += 0.3 + 0.2 * levels["kernel"] + 0.25 * levels["mid"]
            out.append(total)
        return out
    return score_many


def every_subnetwork(gs):
    """Every distinct canonical genome, slot by slot (a skipped slot's other ladders moot)."""
    per_slot, start = [], 0
    top = tuple(n - 1 for _, _, n in gs.genes)
    for plan in gs.plans:
        width = len(plan.ladders)
        options = set()
        for combo in plan.grid():
            trial = list(top)
            trial[start:start + width] = [combo[name] for name in plan.ladders]
            options.add(gs.canonical(tuple(trial))[start:start + width])
        per_slot.append(sorted(options))
        start += width
    return [sum(parts, ()) for parts in itertools.product(*per_slot)]


def contained(space, arch):
    return levels_to_arch(space, SubnetGenome(space).plans,
                          arch_levels(space, SubnetGenome(space).plans, arch)) == arch


# --------------------------------------------------------------- the search, fake scores
def test_two_tables_with_different_relative_costs_give_their_known_best_archs():
    space = Space.from_dict(THREE_SLOTS, "tests:spec_three")
    gs = SubnetGenome(space)
    score = known_accuracy(gs)
    tables = {"kernel": make_table(space, kernel_heavy), "expand": make_table(space, expand_heavy)}
    # by construction: a kernel-heavy device affords kernel 3 / expand 4 in every slot (0.012
    # each), an expand-heavy one kernel 7 / expand 2 (0.014 each); skipping a slot never pays
    targets = {"kernel": 2 * FIXED_MS + 3 * 0.012 + 1e-4, "expand": 2 * FIXED_MS + 3 * 0.014 + 1e-4}
    expected = {"kernel": {"kernel": 3, "expand": 4}, "expand": {"kernel": 7, "expand": 2}}
    everything = every_subnetwork(gs)
    assert len(everything) == 7 ** 3
    settings = EvolutionSettings(population=16, generations=12, seed=0)
    found = {}
    for name, table in tables.items():
        lat = {g: table.predict(gs.arch(g)) for g in everything}
        feasible = [g for g in everything if lat[g] <= targets[name]]
        best = max(feasible, key=lambda g: score([g])[0])
        assert sorted(score(feasible))[-2] < score([best])[0]          # a unique optimum
        want = {f"s1_b{i}_{k}": v for i in (1, 2, 3) for k, v in expected[name].items()}
        assert {k: gs.arch(best)[k] for k in want} == want              # the hand-derived one
        result = constrained_evolution(gs, table.predict, targets[name], score, settings)
        assert result.best.genome == best, name
        assert result.proposals < len(everything)                      # it searched, not listed
        assert all(c.latency_ms <= targets[name] for c in result.candidates.values())
        assert result.fastest_ms == pytest.approx(min(lat.values()))
        assert contained(space, result.best.arch)
        found[name] = result.best.arch_id
    assert found["kernel"] != found["expand"]


def test_a_target_at_the_fastest_sub_network_is_met_and_one_below_it_is_not():
    space = Space.from_dict(THREE_SLOTS, "tests:spec_three")
    gs = SubnetGenome(space)
    table = make_table(space, kernel_heavy)
    fastest = constrained_evolution(gs, table.predict, 1e-9, known_accuracy(gs),
                                    EvolutionSettings(population=4, generations=1))
    assert fastest.best is None and not fastest.candidates       # nothing meets it: no search
    # only sub-networks at the fastest's latency qualify (random draws almost never hit one):
    # the walk from the fastest finds them, the best of them is kept
    tight = constrained_evolution(gs, table.predict, fastest.fastest_ms, known_accuracy(gs),
                                  EvolutionSettings(population=4, generations=3))
    assert tight.best.latency_ms == pytest.approx(fastest.fastest_ms)
    at_fastest = [g for g in every_subnetwork(gs)
                  if table.predict(gs.arch(g)) <= fastest.fastest_ms]
    assert tight.best.score == max(known_accuracy(gs)(at_fastest))


def test_mutation_and_crossover_only_propose_sub_networks_the_supernet_contains():
    space = Space.by_name("tiny")
    gs = SubnetGenome(space)
    rng = np.random.default_rng(0)
    a, b = gs.sample(rng), gs.sample(rng)
    for child in [gs.mutate(a, rng, 0.1) for _ in range(10)] + [gs.crossover(a, b, rng)]:
        assert child == gs.canonical(child)
        assert contained(space, gs.arch(child))
    assert all(gs.mutate(a, rng, 0.0) != a for _ in range(10))   # always a different Arch


# ------------------------------------------------------------------------------ predictor
def test_the_mlp_predictor_ranks_held_out_sub_networks_and_a_shuffled_fit_does_not():
    space = Space.from_dict(THREE_SLOTS, "tests:spec_three")
    gs = SubnetGenome(space)
    score = known_accuracy(gs)
    pool = every_subnetwork(gs)
    rng = np.random.default_rng(1)
    picked = [pool[i] for i in rng.permutation(len(pool))[:150]]
    y = np.asarray(score(picked)) + rng.normal(0, 0.02, len(picked))   # a noisy supernet
    train, held = split_held_out(len(picked), 0.2, seed=0)
    assert not set(train) & set(held) and len(held) == 30 and len(train) == 120
    x = gs.features(picked)
    assert np.all(x.sum(axis=1) == len(gs.genes))                 # one-hot per gene
    good = MlpPredictor.fit(x[train], y[train], seed=0)
    check = rank_check(good.predict(x[held]), y[held])
    assert check["kendall_tau"] > 0.7 and check["spearman"] > 0.85, check
    shuffled = MlpPredictor.fit(x[train], rng.permutation(y[train]), seed=0)
    assert abs(rank_check(shuffled.predict(x[held]), y[held])["kendall_tau"]) < 0.35


# ------------------------------------------------------ a trained spos supernet, the CLI
@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specialize")
    config = {"space": TWO_SLOTS, "data": "digits", "seed": 0, "objective": {"metric": "params"},
              "strategy": {"name": "spos", "params": {"random_subnets": 0}},
              "train": {"epochs": 1, "batch_size": 100, "learning_rate": 0.01, "warmup_epochs": 0}}
    run_search(parse_config(config, "spos.yaml"), folder / "supernet")
    space = supernet_record(folder / "supernet").space
    make_table(space, kernel_heavy, "kernelheavy (test)", folder / "kernel.json")
    make_table(space, expand_heavy, "expandheavy (test)", folder / "expand.json")
    return folder


@pytest.fixture(scope="module")
def cli_run(supernet):
    """Three devices: kernel-heavy, expand-heavy, and kernel-heavy again with a target below
    its fastest sub-network."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    argv = ["specialize", "--supernet", str(supernet / "supernet"), "--out",
            str(supernet / "out"), "--population", "8", "--generations", "4", "--json"]
    for table, target in (("kernel", 0.06), ("expand", 0.06), ("kernel", 0.01)):
        argv += ["--table", str(supernet / f"{table}.json"), "--target", str(target)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_each_device_gets_the_most_accurate_sub_network_that_meets_its_target(supernet, cli_run):
    rc, out, err = cli_run
    assert rc == 2                                   # one device could not be met
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--target" in lines[0] and "onnxruntime-kernelheavy-2" in lines[0]
    assert "give a target >=" in lines[0]
    summary = json.loads(out.strip())
    assert [d["device"] for d in summary["devices"]] == [
        "onnxruntime-kernelheavy", "onnxruntime-expandheavy", "onnxruntime-kernelheavy-2"]
    sn = SupernetScorer(str(supernet / "supernet")).load()
    data = load_data(sn.data, sn.space, seed=sn.seed)
    gs = SubnetGenome(sn.space)
    everything = every_subnetwork(gs)
    assert len(everything) == 20
    scores = {g: path_accuracy(sn, gs.arch(g), data)["val"] for g in everything}
    for d in summary["devices"][:2]:
        table = LatencyTable.load(d["table"], sn.space)
        feasible = [g for g in everything if table.predict(gs.arch(g)) <= d["target_ms"]]
        assert 1 < len(feasible) < len(everything)
        best = min(feasible, key=lambda g: (-scores[g], table.predict(gs.arch(g)),
                                            sn.space.arch_id(gs.arch(g))))
        assert d["met"] and d["arch"] == gs.arch(best), d["device"]
        assert d["latency_ms"] == pytest.approx(table.predict(d["arch"]))
        assert d["latency_ms"] <= d["target_ms"]
        assert d["val_accuracy"] == pytest.approx(scores[best])
        assert contained(sn.space, d["arch"])
    unmet = summary["devices"][2]
    assert not unmet["met"] and "arch" not in unmet and unmet["fastest_ms"] > 0.01
    assert not (supernet / "out" / unmet["device"]).exists()


def test_each_device_folder_holds_its_arch_child_weights_and_summary(supernet, cli_run):
    summary = json.loads(cli_run[1].strip())
    assert json.loads((supernet / "out" / "specialize.json").read_text())["devices"] == \
        summary["devices"]
    sn = SupernetScorer(str(supernet / "supernet")).load()
    data = load_data(sn.data, sn.space, seed=sn.seed)
    for d in summary["devices"][:2]:
        folder = supernet / "out" / d["device"]
        assert json.loads((folder / "specialize.json").read_text())["arch_id"] == d["arch_id"]
        af = load_arch(folder / "arch.json")
        assert af.arch == d["arch"]
        assert af.meta["latency_ms"] == pytest.approx(d["latency_ms"])
        assert af.meta["val_accuracy"] == pytest.approx(d["val_accuracy"])
        assert af.meta["target_ms"] == d["target_ms"] and af.meta["table"] == d["table"]
        assert (folder / "child" / "arch.json").exists()
    # the child weights, recalibrated as the score was: the child classifies as it was scored
    d = summary["devices"][0]
    trained_af, model, variables, _ = load_trained(supernet / "out" / d["device"] / "child")
    assert trained_af.arch == d["arch"]
    logits = model.apply(variables, data.x_val, train=False)
    assert np.mean(np.argmax(logits, -1) == data.y_val) == pytest.approx(d["val_accuracy"])


def test_the_predictor_is_fitted_on_supernet_scores_and_its_picks_are_rechecked(supernet, tmp_path):
    record = supernet_record(supernet / "supernet")
    devices = load_devices([str(supernet / "expand.json")], [0.06], record.space)
    options = SpecializeOptions(EvolutionSettings(population=8, generations=3), predictor="mlp",
                                predictor_archs=16, recheck=3)
    summary = specialize(record, devices, tmp_path / "out", options)
    p = summary["predictor"]
    assert p["kind"] == "mlp" and p["train"] + p["held_out"] == 16 and p["held_out"] >= 2
    assert p["kendall_tau"] is None or -1 <= p["kendall_tau"] <= 1
    d = summary["devices"][0]
    assert summary["supernet_scored"] <= 16 + 3      # the fit's sub-networks + the rechecks
    sn = SupernetScorer(str(supernet / "supernet")).load()
    data = load_data(sn.data, sn.space, seed=sn.seed)
    assert d["val_accuracy"] == pytest.approx(path_accuracy(sn, d["arch"], data)["val"])
    assert d["predicted_accuracy"] is not None and d["latency_ms"] <= 0.06


def test_the_macs_prior_averages_percentiles_of_a_fixed_reference():
    from nas.specialize.prior import MacsPrior

    prior = MacsPrior(reference_scores=[0.2, 0.4, 0.4, 0.8], reference_macs=[10, 20, 30, 40])
    # mid-rank percentiles: below all 0, above all 1, a tie counts half
    got = prior.combine([0.1, 0.4, 0.9, 0.4], [5, 20, 50, 45])
    np.testing.assert_allclose(got, [0.0, 0.5 * (0.5 + 0.375), 1.0, 0.5 * (0.5 + 1.0)])
    # a sub-network's score does not depend on what else is scored with it
    alone = [prior.combine([a], [m])[0] for a, m in zip([0.1, 0.4, 0.9, 0.4], [5, 20, 50, 45])]
    np.testing.assert_allclose(alone, got)
    # equal accuracy: the larger network ranks first; equal size: the more accurate
    assert prior.combine([0.4], [35])[0] > prior.combine([0.4], [15])[0]
    assert prior.combine([0.5], [20])[0] > prior.combine([0.3], [20])[0]
    with pytest.raises(ValueError):
        MacsPrior([0.1, 0.2], [1])


def test_with_the_macs_prior_each_device_gets_the_best_combined_score(supernet, tmp_path):
    from nas.metrics import arch_metrics

    record = supernet_record(supernet / "supernet")
    devices = load_devices([str(supernet / "kernel.json"), str(supernet / "expand.json")],
                           [0.065, 0.06], record.space)
    options = SpecializeOptions(EvolutionSettings(population=16, generations=4), prior="macs",
                                prior_archs=12)
    summary = specialize(record, devices, tmp_path / "out", options)
    sn = SupernetScorer(str(supernet / "supernet")).load()
    data = load_data(sn.data, sn.space, seed=sn.seed)
    gs = SubnetGenome(sn.space)
    everything = every_subnetwork(gs)
    val = {g: path_accuracy(sn, gs.arch(g), data)["val"] for g in everything}
    macs = {g: arch_metrics(sn.space, gs.arch(g))["macs"] for g in everything}
    by_id = {sn.space.arch_id(gs.arch(g)): g for g in everything}
    reference = [by_id[i] for i in summary["prior"]["reference_arch_ids"]]
    assert len(set(reference)) == 12

    def percentile(values, v):   # share below + half the share equal, counted here by hand
        return (sum(x < v for x in values) + 0.5 * sum(x == v for x in values)) / len(values)

    combined = {g: 0.5 * (percentile([val[r] for r in reference], val[g])
                          + percentile([macs[r] for r in reference], macs[g])) for g in everything}
    picks = []
    for d in summary["devices"]:
        table = LatencyTable.load(d["table"], sn.space)
        feasible = [g for g in everything if table.predict(gs.arch(g)) <= d["target_ms"]]
        best = min(feasible, key=lambda g: (-combined[g], table.predict(gs.arch(g)),
                                            sn.space.arch_id(gs.arch(g))))
        assert d["arch"] == gs.arch(best), d["device"]
        assert d["score"] == pytest.approx(combined[best]) and d["macs"] == macs[best]
        assert d["val_accuracy"] == pytest.approx(val[best])
        picks.append(best)
    # the test can tell ranking by the prior from ranking by accuracy: at the kernel-heavy
    # device's target the accuracy-only pick is another, smaller network
    table = LatencyTable.load(summary["devices"][0]["table"], sn.space)
    feasible = [g for g in everything if table.predict(gs.arch(g)) <= 0.065]
    by_accuracy = min(feasible, key=lambda g: (-val[g], table.predict(gs.arch(g))))
    assert by_accuracy != picks[0] and macs[by_accuracy] < macs[picks[0]]
    assert load_arch(tmp_path / "out" / summary["devices"][0]["device"] / "arch.json").meta[
        "scored_by"] == "supernet + MACs prior"


def _error(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_naming_the_flag_and_the_fix(supernet, tmp_path, capsys):
    sn = str(supernet / "supernet")
    table = str(supernet / "kernel.json")
    base = ["specialize", "--out", str(tmp_path / "o")]
    line = _error(base + ["--supernet", str(tmp_path / "nope"), "--table", table, "--target", "1"],
                  capsys)
    assert "--supernet" in line and "nas search" in line
    other = tmp_path / "random_search"
    other.mkdir()
    (other / "search.json").write_text(json.dumps({"config": {
        "strategy": {"name": "random"}, "space": "tiny"}}))
    line = _error(base + ["--supernet", str(other), "--table", table, "--target", "1"], capsys)
    assert "--supernet" in line and "'random'" in line and "spos" in line
    line = _error(base + ["--supernet", sn, "--table", "latency_tables/jax-cpu/tiny.json",
                          "--target", "1"], capsys)
    assert "--table" in line and "'tiny'" in line and "spec_two" in line
    line = _error(base + ["--supernet", sn, "--table", table, "--table", table, "--target", "1",
                          "--target", "2", "--target", "3"], capsys)
    assert "--target" in line and "one per --table" in line
    line = _error(base + ["--supernet", sn, "--table", table, "--target", "1", "--prior", "macs",
                          "--prior-archs", "1"], capsys)
    assert "--prior-archs" in line and ">= 2" in line
    line = _error(base + ["--supernet", sn, "--table", table, "--target", "-1"], capsys)
    assert "--target" in line and "positive" in line
    line = _error(base + ["--supernet", sn, "--table", table, "--target", "0.001"], capsys)
    assert "--target" in line and "no sub-network" in line and "give a target >=" in line
    assert not (tmp_path / "o").exists()
