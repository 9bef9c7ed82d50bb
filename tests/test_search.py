"""The search loop: budget, history, resume by replay, nothing evaluated twice."""

import json

import pytest

from nas.cli import main
from nas.runs.config import parse_config
from nas.errors import NasInputError
from nas.history import History
from nas.search import run_search
from nas.space import Space

SPACE = Space.by_name("tiny")


class SyntheticEvaluator:
    """Accuracy and MACs as made-up functions of the Arch; counts and optionally crashes."""

    def __init__(self, crash_after=None, fail_ids=()):
        self.calls = []
        self.crash_after = crash_after
        self.fail_ids = set(fail_ids)

    def __call__(self, arch, report=None):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")  # not an ordinary candidate error
        arch_id = SPACE.arch_id(arch)
        self.calls.append(arch_id)
        if arch_id in self.fail_ids:
            raise RuntimeError("candidate does not train")
        score = sum(v in (7, 6, True, 32) for v in arch.values()) / len(arch)
        return {"accuracy": 0.5 + 0.5 * score, "val_accuracy": 0.5 + 0.5 * score,
                "test_accuracy": 0.5, "macs": 1e6 * (1 + score)}


def _config(strategy="rl", budget=12, **extra):
    data = {"space": "tiny", "seed": 1, "budget": budget, "batch": 3,
            "strategy": {"name": strategy}, "objective": {"metric": "macs", "target": 1.5e6},
            **extra}
    return parse_config(data, "test.yaml")


@pytest.mark.parametrize("strategy", ["random", "evolution", "rl"])
def test_search_fills_the_budget_with_distinct_candidates(tmp_path, strategy):
    ev = SyntheticEvaluator()
    result = run_search(_config(strategy), tmp_path, evaluate=ev)
    records = History(tmp_path / "history.jsonl").load()
    assert len(records) == 12 == len(ev.calls) == len(set(ev.calls))
    assert [r["n"] for r in records] == list(range(12))
    assert {r["arch_id"] for r in records} == set(ev.calls)
    assert result.best["reward"] == max(r["reward"] for r in records)
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert SPACE.arch_id(best["arch"]) == result.best["arch_id"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["candidates"] == 12 and summary["statuses"] == {"ok": 12}
    feasible = result.best_feasible
    assert feasible["cost"]["macs"] <= 1.5e6


@pytest.mark.parametrize("strategy", ["evolution", "rl"])
def test_resume_after_a_crash_replays_and_matches_an_uninterrupted_run(tmp_path, strategy):
    whole = SyntheticEvaluator()
    run_search(_config(strategy), tmp_path / "whole", evaluate=whole)
    crashing = SyntheticEvaluator(crash_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_search(_config(strategy), tmp_path / "split", evaluate=crashing)
    assert len(History(tmp_path / "split" / "history.jsonl").load()) == 5
    rest = SyntheticEvaluator()
    run_search(_config(strategy), tmp_path / "split", evaluate=rest)
    assert not set(rest.calls) & set(crashing.calls)  # nothing evaluated twice
    assert crashing.calls + rest.calls == whole.calls  # the same search as without the crash
    ids = [r["arch_id"] for r in History(tmp_path / "split" / "history.jsonl").load()]
    assert ids == whole.calls
    # a finished search re-run evaluates nothing; a bigger budget continues it
    again = SyntheticEvaluator()
    run_search(_config(strategy), tmp_path / "split", evaluate=again)
    assert again.calls == []
    more = SyntheticEvaluator()
    run_search(_config(strategy, budget=15), tmp_path / "split", evaluate=more)
    assert len(more.calls) == 3 and not set(more.calls) & set(whole.calls)


def test_failed_candidates_are_recorded_with_their_error(tmp_path):
    probe = SyntheticEvaluator()
    run_search(_config("random", budget=4), tmp_path / "probe", evaluate=probe)
    ev = SyntheticEvaluator(fail_ids=probe.calls[1:2])
    result = run_search(_config("random", budget=4), tmp_path / "run", evaluate=ev)
    bad = [r for r in result.records if r["status"] == "error"]
    assert len(bad) == 1 and "candidate does not train" in bad[0]["error"]
    assert bad[0]["reward"] is None and len(result.records) == 4


def test_workdir_of_another_config_is_refused(tmp_path):
    run_search(_config("random", budget=2), tmp_path, evaluate=SyntheticEvaluator())
    with pytest.raises(NasInputError, match="another config"):
        run_search(_config("evolution", budget=2), tmp_path, evaluate=SyntheticEvaluator())


def test_cli_search_json(tmp_path, monkeypatch, capsys):
    import nas.search

    monkeypatch.setattr(nas.search.CandidateEvaluator, "for_space",
                        classmethod(lambda cls, space, **kw: SyntheticEvaluator()))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nbudget: 5\nstrategy: {name: evolution, params: {population: 3}}\n"
                   "objective: {metric: macs, target: 1.5e6, constraint: hard}\n")
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["candidates"] == 5 and summary["new"] == 5
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w"), "--budget", "6"]) == 0
    out = capsys.readouterr().out
    assert "6 candidates" in out and "1 evaluated now" in out and "best_arch.json" in out


# -------------------------------------------------- library entry point for one-shot strategies
def _pair_task_npz(folder):
    import numpy as np

    from nas.supernet.synthetic import pair_distance_task

    x, y = pair_distance_task(600, 0)
    np.savez(folder / "pairs.npz", x=x, y=y)
    return f"npz:{folder / 'pairs.npz'}"


@pytest.mark.parametrize("strategy,params", [
    ("fbnet", {"objective": "fbnet", "fbnet_beta": 20.0, "latency_scale": 1.0}),
    ("proxyless", {"objective": "proxyless", "lam": 1.0}),
])
def test_run_search_runs_one_shot_strategies_against_a_cost_metric(tmp_path, strategy, params):
    from nas.metrics import arch_metrics
    from nas.supernet.synthetic import KERNEL_TASK_SPACE

    space = Space.from_dict(KERNEL_TASK_SPACE)
    config = {"space": KERNEL_TASK_SPACE, "data": _pair_task_npz(tmp_path), "seed": 0,
              "strategy": {"name": strategy, "params": {
                  "epochs": 3, "warmup_epochs": 1, "arch_lr": 0.1, "batch_size": 50, **params}},
              "objective": {"metric": "params", "target": 1e6}}
    summary = run_search(parse_config(config, "oneshot.yaml"), tmp_path / "w").summary()
    # a huge weight on params: the fewest-parameter kernel, whatever the accuracy
    assert summary["arch"] == {"s1_b1_kernel": 3}
    assert summary["cost_metric"] == "params" and summary["meets_target"] is True
    assert summary["predicted_cost"] == arch_metrics(space, summary["arch"])["params"]
    best = json.loads((tmp_path / "w" / "best_arch.json").read_text())
    assert best["meta"]["predicted_cost"] == summary["predicted_cost"]
    assert best["meta"]["predicted_latency_ms"] is None  # no latency table: no latency claimed


def test_run_search_gives_single_path_the_objective_metric(tmp_path, monkeypatch):
    import nas.strategies.single_path_run as sp

    seen = []
    monkeypatch.setattr(sp, "run_single_path",
                        lambda loaded, workdir, progress=False: seen.append(loaded) or {"ok": 1})
    base = {"space": "tiny", "strategy": {"name": "single_path"}}
    out = run_search(parse_config({**base, "objective": {"metric": "size_bytes"}}, "s.yaml"), tmp_path)
    assert out.summary() == {"ok": 1}
    assert seen[-1].config.strategy.params["cost"] == "size_bits"
    explicit = {**base, "strategy": {"name": "single_path", "params": {"cost": "macs"}},
                "objective": {"metric": "bops"}}
    run_search(parse_config(explicit, "s.yaml"), tmp_path)
    assert seen[-1].config.strategy.params["cost"] == "macs"  # the strategy's own setting wins


def test_a_history_written_before_record_kinds_still_resumes(tmp_path):
    """Records without a ``kind`` (written by older runs) count as candidates: a resume over
    them evaluates nothing."""
    run_search(_config("evolution", budget=4), tmp_path, evaluate=SyntheticEvaluator())
    path = tmp_path / "history.jsonl"
    old = [{k: v for k, v in r.items() if k != "kind"} for r in History(path).load()]
    assert len(old) == 4 and all("kind" not in r for r in old)
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = SyntheticEvaluator()
    result = run_search(_config("evolution", budget=4), tmp_path, evaluate=again)
    assert again.calls == [] and len(result.records) == 4
    assert json.loads((tmp_path / "summary.json").read_text())["arch_id"] == result.best["arch_id"]
