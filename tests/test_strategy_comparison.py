"""experiments/bench/strategy_comparison.py's arithmetic (equal-cost candidate count, per-seed
win / tie / loss against random, the summary lines) and the property its ``--budgets`` relies
on: the first N candidates of a longer random / evolution / rl search are those of a search of
budget N (no strategy is told the budget)."""

import importlib.util
import math
from pathlib import Path

import pytest

from nas.executor import LocalExecutor
from nas.runs.config import parse_config
from nas.search import run_search
from nas.space import Space
from nas.training.evaluate import CandidateEvaluator

STATS_PATH = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "strategy_stats.py"


def _load_stats():
    spec = importlib.util.spec_from_file_location("strategy_stats", STATS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load_stats()


def test_equal_cost_count_is_the_candidates_that_fit_in_the_oneshot_time():
    assert stats.equal_cost_count(300.0, 14.0) == 21           # 21.4 -> 21, not rounded up
    assert stats.equal_cost_count(0.3, 0.1) == 3               # 2.9999999999999996 in floats
    assert stats.equal_cost_count(27.0, 28.0) == 1             # none fit: still one candidate
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="candidate_seconds"):
            stats.equal_cost_count(100.0, bad)


def test_mean_candidate_seconds_skips_failed_and_untimed_records():
    records = [{"status": "ok", "seconds": 10.0}, {"status": "ok", "seconds": 20.0},
               {"status": "error", "seconds": 99.0}, {"status": "ok", "seconds": 0.0}]
    assert stats.mean_candidate_seconds(records) == 15.0
    assert stats.mean_candidate_seconds([{"status": "error", "seconds": 3.0}]) is None


def test_first_candidates_follow_the_evaluation_order():
    records = [{"n": 2, "a": "c"}, {"n": 0, "a": "a"}, {"n": 1, "a": "b"}]
    assert [r["a"] for r in stats.first_candidates(records, 2)] == ["a", "b"]


def test_wins_are_strict_ties_apart_and_no_feasible_result_loses():
    pairs = [(0.9, 0.8), (0.8, 0.8), (0.7, 0.8), (None, 0.5), (0.1, None), (None, None)]
    assert stats.tally(pairs) == {"wins": 2, "ties": 2, "losses": 2, "n": 6}


def test_summary_compares_each_seed_with_random_of_the_same_budget_and_seed():
    rows = []
    for seed, (r20, r60, e20, e60) in enumerate([(0.80, 0.85, 0.80, 0.90),
                                                 (0.82, 0.84, 0.70, 0.84),
                                                 (0.81, 0.86, 0.90, 0.80)]):
        rows += [{"strategy": "random", "seed": seed, "budget": 20, "test": r20, "val": r20},
                 {"strategy": "random", "seed": seed, "budget": 60, "test": r60, "val": r60},
                 {"strategy": "evolution", "seed": seed, "budget": 20, "test": e20, "val": e20},
                 {"strategy": "evolution", "seed": seed, "budget": 60, "test": e60, "val": e60}]
        rows.append({"strategy": "spos", "seed": seed, "budget": 60, "test": [0.9, None, 0.8][seed],
                     "val": None, "equal_cost_n": 10 + seed, "eq_random_test": 0.8})
    lines = stats.summarize(rows, ["random", "evolution", "spos"], [20, 60], 60, ["spos"])
    by = {(ln["strategy"], ln["budget"]): ln for ln in lines}
    assert by[("evolution", 20)]["vs_random"] == {"wins": 1, "ties": 1, "losses": 1, "n": 3}
    assert by[("evolution", 60)]["vs_random"] == {"wins": 1, "ties": 1, "losses": 1, "n": 3}
    assert by[("random", 60)]["vs_random"] is None
    assert by[("evolution", 60)]["test"]["mean"] == pytest.approx((0.90 + 0.84 + 0.80) / 3)
    spos = by[("spos", 60)]
    assert spos["vs_equal_cost"] == {"wins": 1, "ties": 1, "losses": 1, "n": 3}
    assert (spos["test"]["k"], spos["test"]["n"]) == (2, 3)      # seed 1 had no feasible Arch
    assert spos["vs_random"] == {"wins": 1, "ties": 0, "losses": 2, "n": 3}
    assert spos["equal_cost_n"]["mean"] == 11
    text = stats.markdown_tables(lines, [r for r in rows if r["strategy"] == "spos"])
    assert "| evolution | 60 | 3 | 0.8467 +- 0.0503 |" in text
    assert any("spos (one-shot)" in line and "1/3 seeds" not in line and "2/3 seeds" in line
               for line in stats.bar_lines(lines))


def _fake_train(space, arch, report):
    """A deterministic accuracy per Arch (no training)."""
    tokens = space.encode(arch)
    acc = 0.5 + 0.4 * ((sum((i + 1) * t for i, t in enumerate(tokens)) % 17) / 17)
    return {"val_accuracy": acc, "test_accuracy": acc}


@pytest.mark.parametrize("name,params", [("random", {}),
                                         ("evolution", {"population": 4, "sample_size": 2}),
                                         ("rl", {"lr": 0.05, "hidden": 16})])
def test_the_first_n_candidates_of_a_longer_search_are_a_search_of_budget_n(tmp_path, name, params):
    space = Space.by_name("tiny")
    evaluator = CandidateEvaluator.for_space(space, train_fn=_fake_train)

    def arch_ids(budget):
        loaded = parse_config({"space": "tiny", "seed": 3, "budget": budget, "batch": 3,
                               "strategy": {"name": name, "params": params},
                               "objective": {"metric": "macs", "target": 3e6}})
        result = run_search(loaded, tmp_path / f"b{budget}", evaluate=evaluator,
                            executor=LocalExecutor())
        return [r["arch_id"] for r in sorted(result.records, key=lambda r: r["n"])]

    longer = arch_ids(14)
    assert len(set(longer)) == 14
    assert arch_ids(7) == longer[:7]     # 7 is not a multiple of the 3 proposals per round


def _load_runs():
    import sys

    spec = importlib.util.spec_from_file_location("strategy_runs",
                                                  STATS_PATH.parent / "strategy_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["strategy_runs"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_hard_constraint_variant_searches_the_same_strategy_on_the_hard_reward(tmp_path):
    """``evolution:hard`` = evolution with MnasNet's hard-constraint reward (alpha 0, beta -1) in
    its own runs folder; random and the one-shot strategies take no constraint."""
    from nas.errors import NasInputError

    runs = _load_runs()
    assert runs.check_strategy_names("random,evolution:hard,rl:soft,rl") == [
        "random", "evolution:hard", "rl:soft", "rl"]
    for bad in ("random:hard", "fbnet:hard", "evolution:strict", "tpe"):
        with pytest.raises(NasInputError) as e:
            runs.check_strategy_names(f"random,{bad}")
        assert e.value.field == "--strategies" and bad in e.value.message
    settings = {name: runs.strategy_settings(name, "macs", 3e6, 4, None)
                for name in ("evolution", "evolution:hard")}
    assert settings["evolution"] == settings["evolution:hard"]
    bench = runs.Bench("tiny", Space.by_name("tiny"), "digits", 1, 4, "macs", None, 3e6,
                       settings, (8, 2), tmp_path, None)
    hard = bench.config("evolution:hard", 0, 8).config
    soft = bench.config("evolution", 0, 8).config
    assert hard.strategy.name == soft.strategy.name == "evolution"
    assert (hard.objective.build().alpha, hard.objective.build().beta) == (0.0, -1.0)
    assert (soft.objective.build().alpha, soft.objective.build().beta) == (-0.07, -0.07)
    assert runs.run_folder("evolution:hard", 3) == "evolution-hard_3"
    assert runs.run_folder("evolution", 3) == "evolution_3"


def test_one_shot_records_say_which_derive_rule_read_their_arch():
    runs = _load_runs()
    assert runs.derive_rule("fbnet", {"derivation": {"changed": []}}) == "within_target"
    assert runs.derive_rule("proxyless", {"derivation": None}) == "argmax"  # no target: argmax
    assert runs.derive_rule("spos", {"derivation": {"changed": []}}) is None
