"""Reports: Pareto fronts, the candidates table, report.md / plots / TensorBoard of a workdir."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nas.history import History, make_record
from nas.pareto import pareto_front
from nas.runs.pipeline import stage_marker, write_json_atomic
from nas.runs.report import candidates_table, write_report
from nas.space import Space
from nas.strategies.outputs import epoch_record, write_epoch_record


def test_pareto_front_examples():
    pts = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (2.0, 0.93), (0.5, 0.80), (4.0, 0.97)]
    assert pareto_front(pts) == [4, 0, 1, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=25))
def test_pareto_front_is_exactly_the_non_dominated_set(raw):
    pts = [(float(c), float(a)) for c, a in raw]
    front = pareto_front(pts)

    def dominated(i):
        c, a = pts[i]
        return any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in pts)

    expected = {pts[i] for i in range(len(pts)) if not dominated(i)}
    assert {pts[i] for i in front} == expected
    assert len(front) == len(expected)  # one index per distinct point
    costs = [pts[i][0] for i in front]
    assert costs == sorted(costs)


def _fake_run(workdir):
    space = Space.by_name("tiny")
    history = History(workdir / "search" / "history.jsonl")
    archs = [space.sample(i) for i in range(4)]
    for n, arch in enumerate(archs):
        history.append(make_record(n, space.arch_id(arch), arch, "ok",
                                   {"accuracy": 0.9 + 0.01 * n, "latency_ms": 0.1 + 0.05 * n,
                                    "params": 1000 * (n + 1), "size_bytes": 4000 * (n + 1)},
                                   reward=0.8 + 0.02 * n, seconds=1.0))
    history.append(make_record(4, "broken", archs[0], "error", error="boom"))
    winner = space.arch_id(archs[3])
    cands = [{"arch_id": space.arch_id(a), "arch": a, "status": "ok", "val_accuracy": 0.95,
              "test_accuracy": 0.94, "latency_ms": 0.1, "cost": {"size_bytes": 100, "params": 10},
              "params": 10, "workdir": "x"} for a in archs[2:]]
    write_json_atomic(stage_marker(workdir, "search"), {"seconds": 1.0})
    write_json_atomic(stage_marker(workdir, "retrain"),
                      {"candidates": cands, "winner": winner, "seconds": 2.0})
    return winner


def test_report_of_a_partial_run(tmp_path):
    winner = _fake_run(tmp_path)
    info = write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert winner in text and "Export: not done yet." in text
    assert "accuracy_vs_latency.png" in text and "accuracy_vs_size.png" in text
    for p in info["plots"]:
        assert open(p, "rb").read(4) == b"\x89PNG"
    assert list((tmp_path / "tb").iterdir())
    assert info["winner"]["arch_id"] == winner
    # the table: best reward first, the winner starred, failures counted
    lines = info["table"].splitlines()
    assert lines[2].startswith("* " + winner[:12])
    assert "5 candidates evaluated (1 not ok)" in lines[-1]
    assert "Search: None, 5 candidates evaluated (4 ok)." in text  # no pipeline.json here
    # rebuilding does not duplicate TensorBoard event files
    write_report(tmp_path)
    assert len(list((tmp_path / "tb").iterdir())) == 1


def test_candidates_table_without_retrain():
    table = candidates_table([], None)
    assert "0 candidates evaluated" in table


def test_report_of_a_one_shot_run_names_the_strategy_and_derived_arch(tmp_path):
    space = Space.by_name("tiny")
    archs = [space.sample(i) for i in range(2)]
    ids = [space.arch_id(a) for a in archs]
    write_json_atomic(tmp_path / "pipeline.json", {"config": {"strategy": {"name": "single_path"}}})
    write_json_atomic(stage_marker(tmp_path, "search"), {
        "one_shot": True, "seconds": 3.0,
        "summary": {"arch_id": ids[0], "predicted_latency_ms": 0.0412, "search_seconds": 2.5},
        "candidates": [{"arch_id": i, "arch": a} for i, a in zip(ids, archs)]})
    cands = [{"arch_id": i, "arch": a, "status": "ok", "val_accuracy": 0.9 + 0.01 * n,
              "test_accuracy": 0.9, "latency_ms": 0.04, "reward": 0.8 + 0.1 * n, "params": 10,
              "workdir": "x"} for n, (i, a) in enumerate(zip(ids, archs))]
    write_json_atomic(stage_marker(tmp_path, "retrain"),
                      {"candidates": cands, "winner": ids[1], "seconds": 2.0})
    for epoch in (1, 2):  # the search's history holds epoch records, which are not candidates
        write_epoch_record(tmp_path / "search" / "history.jsonl", epoch_record(
            "single_path", space, epoch, archs[0], {"val_accuracy": 0.5}, predicted_cost=1.0))
    info = write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert (f"Search: single_path (one-shot), derived Arch `{ids[0]}`, predicted latency 0.0412 ms; "
            "2 Archs retrained") in text
    lines = info["table"].splitlines()
    assert lines[2].startswith("* " + ids[1][:12])  # best reward first, the winner starred
    assert "2 retrained candidates of a one-shot search" in lines[-1]
    assert "was over the target" not in text
    # an fbnet / proxyless Arch derived within the target: the report says what changed
    marker = json.loads(stage_marker(tmp_path, "search").read_text())
    marker["summary"]["derivation"] = {"argmax_arch_id": "abcdef123456", "changed": ["a", "b"],
                                       "feasible": True}
    write_json_atomic(stage_marker(tmp_path, "search"), marker)
    write_report(tmp_path)
    assert ("The most probable Arch `abcdef123456` was over the target/limits: 2 decision(s) "
            "changed to the most probable choices within them.") in (tmp_path / "report.md").read_text()
