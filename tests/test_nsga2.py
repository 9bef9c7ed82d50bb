"""NSGA-II: non-dominated sorting, crowding distance, survivor selection on hand-made points; a
tiny nsga2 search writes a pareto.json that is exactly the front of what it trained."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from nas.cli import main
from nas.errors import NasInputError
from nas.metrics import arch_metrics
from nas.pareto import crowding_distance, dominates, non_dominated_sort, pareto_front
from nas.runs.config import parse_config
from nas.search import run_search
from nas.space import Space
from nas.strategies import make_strategy
from nas.strategies.base import Observation, Proposal
from nas.strategies.nsga2 import rank_and_crowding, select_survivors

TINY = Space.by_name("tiny")
INF = float("inf")


# ------------------------------------------------------------------------ the paper's pieces
def test_non_dominated_sort_finds_the_known_fronts():
    pts = [(1, 5), (2, 3), (3, 1), (2, 4), (4, 4), (5, 5), (3, 3), (2, 3)]
    # (2, 3) twice: equal points share a front; (2, 4) and (3, 3) only lose to front 0
    assert non_dominated_sort(pts) == [[0, 1, 2, 7], [3, 6], [4], [5]]
    three = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (0, 1, 1), (2, 2, 2)]
    assert non_dominated_sort(three) == [[0, 1, 2], [4], [3], [5]]  # (0,1,1) beats (1,1,1)
    assert non_dominated_sort([]) == []
    assert dominates((1, 2), (1, 3)) and not dominates((1, 2), (1, 2))
    assert not dominates((1, 3), (2, 2)) and not dominates((2, 2), (1, 3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)),
                min_size=1, max_size=20))
def test_each_front_is_the_pareto_front_of_what_the_earlier_ones_leave(pts):
    fronts = non_dominated_sort(pts)
    assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
    left = set(range(len(pts)))
    for front in fronts:
        expected = {i for i in left if not any(dominates(pts[j], pts[i]) for j in left)}
        assert set(front) == expected
        left -= expected
    # in two objectives the first front is pareto_front's (which keeps one of equal points)
    two = [(float(x), float(y)) for x, y, _ in pts]
    first = {two[i] for i in non_dominated_sort(two)[0]}
    assert first == {two[i] for i in pareto_front([(x, -y) for x, y in two])}


def test_crowding_distance_by_hand():
    pts = [(0, 10), (1, 6), (3, 3), (6, 0), (9, 9)]
    front = [0, 1, 2, 3]  # (9, 9) is another front: it must not enter the ranges
    d = crowding_distance(pts, front)
    # objective 1 (range 6): (1,6) gets (3-0)/6, (3,3) gets (6-1)/6; objective 2 (range 10):
    # (1,6) gets (10-3)/10, (3,3) gets (6-0)/10; the extremes are infinite
    assert d[0] == INF and d[3] == INF
    assert d[1] == pytest.approx(0.5 + 0.7) and d[2] == pytest.approx(5 / 6 + 0.6)
    assert crowding_distance(pts, [0, 3]) == [INF, INF]
    # an objective where the front is flat adds nothing; its extremes still count as boundary
    flat = [(0, 5), (1, 5), (3, 5), (4, 5)]
    d = crowding_distance(flat, [0, 1, 2, 3])
    assert d[1] == pytest.approx(3 / 4) and d[2] == pytest.approx(3 / 4)


def test_survivors_take_whole_fronts_then_the_least_crowded():
    #   front 0: (0, 4), (4, 0); front 1: (1, 5), (2, 4.9), (5, 1) - the middle one is crowded
    pts = [(0, 4), (4, 0), (1, 5), (2, 4.9), (5, 1), (6, 6)]
    ranks, distances = rank_and_crowding(pts)
    assert ranks == [0, 0, 1, 1, 1, 2]
    assert distances[3] < distances[2] == distances[4] == INF
    assert select_survivors(pts, 4) == [0, 1, 2, 4]
    assert select_survivors(pts, 2) == [0, 1] and select_survivors(pts, 9) == list(range(6))


def _obs(arch, accuracy, size):
    return Observation(Proposal(arch, tuple(TINY.encode(arch))), accuracy,
                       metrics={"accuracy": accuracy, "size_bytes": size})


def test_nsga2_keeps_the_population_the_selection_rule_gives():
    strategy = make_strategy("nsga2", TINY, {"objectives": ["size_bytes"], "population": 3})
    state, asked = strategy.ask(strategy.init(0), 6)
    archs = [p.arch for p in asked]
    # (accuracy, size): the first three are random; their children below
    state = strategy.tell(state, [_obs(archs[0], 0.9, 300), _obs(archs[1], 0.5, 100),
                                  _obs(archs[2], 0.4, 200)])
    assert [m.arch_id for m in state.population] == [TINY.arch_id(a) for a in archs[:3]]
    state, children = strategy.ask(state, 2)
    assert all(TINY.arch_id(c.arch) not in {m.arch_id for m in state.population} for c in children)
    # rejected and failed candidates never join; then 3 offspring trigger the (mu + lambda) step
    state = strategy.tell(state, [Observation(asked[3], None, rejected=True),
                                  Observation(asked[4], None)])
    assert state.offspring == ()
    state = strategy.tell(state, [_obs(archs[3], 0.95, 50), _obs(archs[4], 0.3, 400)])
    assert len(state.offspring) == 2 and len(state.population) == 3  # not a generation yet
    state = strategy.tell(state, [_obs(archs[5], 0.6, 90)])
    # front 0: 0.95@50 (dominates all); front 1: 0.9@300 and 0.6@90 - exactly 3 survive
    assert state.offspring == ()
    assert {m.arch_id for m in state.population} == {TINY.arch_id(archs[i]) for i in (0, 3, 5)}


# ------------------------------------------------------------------------- a whole search
class CostEvaluator:
    """Synthetic accuracy and the Arch's real costs."""

    def __init__(self):
        self.calls = []

    def __call__(self, arch, report=None):
        self.calls.append(TINY.arch_id(arch))
        m = arch_metrics(TINY, arch)
        jitter = 0.002 * (sum(map(ord, TINY.arch_id(arch))) % 10)
        accuracy = 0.6 + 0.3 * (m["macs"] / 3e6) ** 0.5 - jitter
        return {"accuracy": accuracy, "val_accuracy": accuracy, "test_accuracy": accuracy,
                **{k: m[k] for k in ("params", "macs", "bops", "size_bytes", "energy_mj")}}


def test_a_tiny_nsga2_search_writes_its_front_to_pareto_json(tmp_path, capsys):
    config = parse_config({"space": "tiny", "seed": 0, "budget": 12, "batch": 3,
                           "strategy": {"name": "nsga2", "params": {
                               "objectives": ["size_bytes", "macs"], "population": 4}},
                           "objective": {"metric": "macs"}}, "c.yaml")
    ev = CostEvaluator()
    result = run_search(config, tmp_path, evaluate=ev)
    assert len(ev.calls) == 12 == len(set(ev.calls))
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert [o["name"] for o in pareto["objectives"]] == ["accuracy", "size_bytes", "macs"]

    def point(r):
        return (-r["accuracy"], r["cost"]["size_bytes"], r["cost"]["macs"])

    front = [point(m) for m in pareto["front"]]
    others = [point(r) for r in result.records]
    assert pareto["compared"] == 12 and 1 <= len(front) < 12
    assert not any(dominates(a, b) for a in front for b in front)  # mutually non-dominated
    for p in others:  # every trained candidate is on the front or dominated by a member
        assert p in front or any(dominates(f, p) for f in front)
    ids = {r["arch_id"]: r for r in result.records}
    for m in pareto["front"]:
        assert ids[m["arch_id"]]["arch"] == m["arch"]
    summary = result.summary()["pareto"]
    assert summary["objectives"] == ["accuracy", "size_bytes", "macs"]
    assert [m["arch_id"] for m in summary["front"]] == [m["arch_id"] for m in pareto["front"]]


def test_every_sample_search_writes_pareto_json_and_the_cli_prints_the_front(tmp_path, monkeypatch,
                                                                             capsys):
    import nas.search

    monkeypatch.setattr(nas.search, "default_evaluator", lambda loaded, space: CostEvaluator())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nbudget: 5\nstrategy: {name: random}\n"
                   "objective: {metric: size_bytes, limits: {size_bytes: 150000}}\n")
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    pareto = json.loads((tmp_path / "w" / "pareto.json").read_text())
    assert [o["name"] for o in pareto["objectives"]] == ["accuracy", "size_bytes"]
    assert f"Pareto front (accuracy, size_bytes): {len(pareto['front'])} of 5" in out
    assert "rejected before training: " in out and "limits size_bytes <= 150000" in out
    for m in pareto["front"]:
        assert m["arch_id"] in out


def test_nsga2_objectives_are_checked():
    base = {"space": "tiny", "strategy": {"name": "nsga2"}}
    with pytest.raises(NasInputError) as e:  # the default objective is objective.metric
        parse_config(base, "c.yaml")
    assert e.value.field == "strategy.params.objectives" and "latency table" in e.value.message
    with pytest.raises(NasInputError) as e:
        parse_config({**base, "strategy": {"name": "nsga2", "params": {"objectives": ["speed"]}}})
    assert e.value.field == "strategy.params.objectives.0"
    with pytest.raises(NasInputError) as e:
        parse_config({**base, "strategy": {"name": "nsga2", "params": {
            "objectives": ["macs", "macs"]}}})
    assert "distinct" in e.value.message
    assert parse_config({**base, "objective": {"metric": "bops"}}).config.strategy.name == "nsga2"
