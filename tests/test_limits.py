"""Hard limits (``objective.limits``): candidates over a limit are never trained, recorded as
rejected, replayed exactly; one-shot derived Archs are checked; bad limits are one error line.

Sample-based searches score candidates with a synthetic evaluator (the search machinery is under
test, not training); the one-shot check trains one tiny FBNet supernet."""

import itertools
import json

import numpy as np
import pytest

import nas.search
from nas.cli import main
from nas.errors import NasInputError
from nas.history import History
from nas.metrics import arch_metrics
from nas.runs.config import parse_config
from nas.runs.pipeline import Pipeline
from nas.runs.report import write_report
from nas.search import run_search
from nas.space import Space, resolve_space
from nas.strategies.base import Observation
from nas.strategies.evolution import EvolutionParams, regularized_evolution
from nas.strategies.oneshot_driver import OVER_LIMITS_FILE, check_derived_arch
from nas.strategies.outputs import candidate_records, rejected_records
from nas.strategies.random import sample_proposal
from nas.strategies.rl import RLParams, reinforce

TINY = Space.by_name("tiny")


class Evaluator:
    """Synthetic accuracy of an Arch plus its real costs; records every call (= every training)."""

    def __init__(self, space, crash_after=None):
        self.space, self.calls, self.crash_after = space, [], crash_after

    def __call__(self, arch, report=None):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls.append(self.space.arch_id(arch))
        m = arch_metrics(self.space, arch)
        accuracy = 0.5 + 0.4 * (sum(map(ord, self.space.arch_id(arch))) % 100) / 100
        return {"accuracy": accuracy, "val_accuracy": accuracy, "test_accuracy": accuracy,
                **{k: m[k] for k in ("params", "macs", "bops", "size_bytes", "energy_mj")}}


def _all_archs(space):
    """Every distinct canonical Arch of a small space, by id."""
    archs = (space.decode(t) for t in itertools.product(*map(range, space.cardinalities())))
    return {space.arch_id(a): a for a in archs}


def _records(workdir):
    return History(workdir / "history.jsonl").load()


# ------------------------------------------------------------------ rejected before training
def test_candidates_over_a_limit_are_never_trained_and_recorded_as_rejected(tmp_path, micro_yaml):
    space = resolve_space(str(micro_yaml))
    archs = _all_archs(space)
    size = {i: arch_metrics(space, a)["size_bytes"] for i, a in archs.items()}
    limit = sorted(size.values())[len(size) // 2]  # about half the space is over it
    over = {i for i, s in size.items() if s > limit}
    within = set(archs) - over
    assert 0 < len(over) < len(archs)
    config = parse_config({"space": str(micro_yaml), "seed": 0, "budget": len(within), "batch": 2,
                           "strategy": {"name": "random"},
                           "objective": {"metric": "size_bytes", "limits": {"size_bytes": limit}}},
                          "c.yaml")
    ev = Evaluator(space)
    result = run_search(config, tmp_path, evaluate=ev)
    # every Arch within the limit trained once (the budget counts trained ones), none over it
    assert sorted(ev.calls) == sorted(within)
    records = _records(tmp_path)
    rejected = rejected_records(records)
    assert rejected and {r["arch_id"] for r in rejected} <= over
    assert len(candidate_records(records)) == len(within)
    for r in rejected:
        assert r["kind"] == r["status"] == "rejected" and r["accuracy"] is None
        assert r["violations"] == [{"metric": "size_bytes", "value": size[r["arch_id"]],
                                    "limit": limit}]
        assert "size_bytes" in r["error"] and r["cost"]["size_bytes"] == size[r["arch_id"]]
    assert [r["n"] for r in rejected] == list(range(len(rejected)))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary()))
    n = len(rejected)
    assert summary["rejected"] == n and summary["rejected_by_limit"] == {"size_bytes": n}
    assert summary["candidates"] == len(within) and summary["statuses"] == {"ok": len(within)}
    assert summary["limits"] == {"size_bytes": limit} and summary["stopped"] is None


@pytest.mark.parametrize("strategy", ["evolution", "rl", "nsga2"])
def test_a_resumed_search_with_rejected_records_replays_exactly(tmp_path, strategy):
    sizes = sorted(arch_metrics(TINY, TINY.sample(i))["size_bytes"] for i in range(60))
    data = {"space": "tiny", "seed": 2, "budget": 8, "batch": 3,
            "strategy": {"name": strategy, "params": {"population": 4} if strategy != "rl" else {}},
            "objective": {"metric": "size_bytes", "limits": {"size_bytes": sizes[30]}}}
    config = parse_config(data, "c.yaml")
    whole = Evaluator(TINY)
    run_search(config, tmp_path / "whole", evaluate=whole)
    crashing = Evaluator(TINY, crash_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "split", evaluate=crashing)
    rest = Evaluator(TINY)
    run_search(config, tmp_path / "split", evaluate=rest)
    assert crashing.calls + rest.calls == whole.calls  # nothing trained twice, same order

    def sequence(workdir):
        return [(r["kind"], r["arch_id"], r["n"]) for r in _records(workdir)]

    assert sequence(tmp_path / "split") == sequence(tmp_path / "whole")
    assert any(kind == "rejected" for kind, _, _ in sequence(tmp_path / "whole"))
    again = Evaluator(TINY)  # a finished search replays without training or rejecting anew
    before = sequence(tmp_path / "split")
    run_search(config, tmp_path / "split", evaluate=again)
    assert again.calls == [] and sequence(tmp_path / "split") == before


def test_a_strategy_that_only_proposes_rejected_archs_stops_with_one_line(tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(nas.search, "MAX_REJECTED_IN_A_ROW", 12)
    config = parse_config({"space": "tiny", "budget": 3, "batch": 4, "strategy": {"name": "random"},
                           "objective": {"metric": "macs", "limits": {"size_bytes": 1}}}, "c.yaml")
    ev = Evaluator(TINY)
    summary = run_search(config, tmp_path, evaluate=ev).summary()
    assert ev.calls == [] and summary["candidates"] == 0 and summary["rejected"] == 12
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the last 12 were all over objective.limits (size_bytes 12)" in err[0]
    assert "loosen objective.limits" in err[0] and summary["stopped"] in err[0]


def test_strategies_are_told_which_proposals_were_rejected():
    proposals = [sample_proposal(TINY, np.random.default_rng(i)) for i in range(3)]
    rejected = [Observation(p, None, rejected=True, metrics={"size_bytes": 1e9}) for p in proposals]
    evolution = regularized_evolution(TINY, EvolutionParams(population=2, sample_size=1))
    assert evolution.tell(evolution.init(0), rejected).population == ()  # never a parent
    # rl: a rejected proposal is a reward of rejected_reward (0: a policy step), or left out (None)
    learns = reinforce(TINY, RLParams())  # the default controller: compiled by other tests too
    state = learns.tell(learns.init(0), rejected)
    assert state.updates == 1 and float(state.baseline) == 0.0
    ignores = reinforce(TINY, RLParams(rejected_reward=None))
    assert ignores.tell(ignores.init(0), rejected).updates == 0


# ------------------------------------------------------------- pipeline and report with rejected
def test_pipeline_top_k_and_report_skip_rejected_candidates(tmp_path):
    config = parse_config({"space": "tiny", "budget": 4, "batch": 2, "strategy": {"name": "random"},
                           "objective": {"metric": "size_bytes", "limits": {"size_bytes": 150000}}},
                          "c.yaml")
    run_search(config, tmp_path / "search", evaluate=Evaluator(TINY))
    records = _records(tmp_path / "search")
    assert rejected_records(records)  # the tiny space has Archs over 150 kB
    top = Pipeline(config, tmp_path, progress=False).top_candidates()
    trained = {r["arch_id"] for r in candidate_records(records)}
    assert len(top) == 3 and {r["arch_id"] for r in top} <= trained
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    n = len(rejected_records(records))
    assert (f"Rejected before training: {n} candidates over objective.limits (size_bytes {n})"
            in text)
    assert "4 candidates evaluated (0 not ok)" in text and "## Pareto front" in text


# -------------------------------------------------------------------------------- one-shot
def test_a_one_shot_derived_arch_is_checked_against_the_limits(tmp_path, capsys):
    from test_search import _pair_task_npz

    from nas.supernet.synthetic import KERNEL_TASK_SPACE

    space = Space.from_dict(KERNEL_TASK_SPACE)
    small = arch_metrics(space, {"s1_b1_kernel": 3})["params"]
    base = {"space": KERNEL_TASK_SPACE, "data": _pair_task_npz(tmp_path), "seed": 0,
            "strategy": {"name": "fbnet", "params": {
                "epochs": 3, "warmup_epochs": 1, "arch_lr": 0.1, "batch_size": 50,
                "objective": "fbnet", "fbnet_beta": 20.0, "latency_scale": 1.0}},
            "objective": {"metric": "params", "target": 1e6, "limits": {"params": small}}}
    wd = tmp_path / "w"
    summary = run_search(parse_config(base, "oneshot.yaml"), wd).summary()
    assert summary["arch"] == {"s1_b1_kernel": 3}  # the fewest-parameter kernel: within
    assert summary["meets_limits"] is True and summary["limit_costs"] == {"params": small}
    assert (wd / "best_arch.json").exists() and not (wd / OVER_LIMITS_FILE).exists()
    capsys.readouterr()
    # the same derived Arch against a limit it breaks: said in one line, not the best Arch
    strict = parse_config({**base, "objective": {"metric": "params",
                                                 "limits": {"params": small - 1}}}, "oneshot.yaml")
    out = check_derived_arch(strict, wd, summary)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"breaks objective.limits: params {small} > {small - 1}" in err[0]
    assert out["meets_limits"] is False and out["best_arch"] is None
    assert out["limit_violations"] == [{"metric": "params", "value": small, "limit": small - 1}]
    assert not (wd / "best_arch.json").exists() and (wd / OVER_LIMITS_FILE).exists()
    assert json.loads((wd / "summary.json").read_text())["meets_limits"] is False
    # nas run would retrain only runner-ups within the limits; none here (one decision, 2 Archs)
    pipe = Pipeline(strict, tmp_path / "run", progress=False)
    with pytest.raises(NasInputError) as e:
        pipe.within_limits([{"s1_b1_kernel": 3}, {"s1_b1_kernel": 5}])
    assert e.value.field == "objective.limits"
    assert f"params {small} > {small - 1}" in e.value.message


def test_spos_checks_its_largest_sub_network_against_the_limits(tmp_path, monkeypatch, capsys):
    """spos learns no Arch; its result (the largest sub-network) is checked like a derived one,
    and the warning points to searching the supernet (nas specialize) instead."""
    from nas.archfile import ArchFile
    from nas.single_path.plan import max_arch, space_plan
    from nas.strategies import oneshot_driver, spos_run

    largest = max_arch(TINY, space_plan(TINY))
    size = arch_metrics(TINY, largest)["size_bytes"]

    def trained_spos(loaded, workdir, progress=False):  # the training is tested elsewhere
        ArchFile(TINY, largest, {}).save(workdir / "best_arch.json")
        return {"strategy": "spos", "arch": largest, "arch_id": TINY.arch_id(largest),
                "best_arch": str(workdir / "best_arch.json")}

    monkeypatch.setattr(spos_run, "run_spos", trained_spos)
    wd = tmp_path / "w"
    wd.mkdir()
    config = {"space": "tiny", "strategy": {"name": "spos"}, "objective": {"metric": "macs"}}
    loose = parse_config({**config, "objective": {"metric": "macs", "limits": {
        "size_bytes": size}}}, "spos.yaml")
    assert oneshot_driver.run_oneshot_config(loose, wd).summary()["meets_limits"] is True
    assert (wd / "best_arch.json").exists()
    strict = parse_config({**config, "objective": {"metric": "macs", "limits": {
        "size_bytes": size - 1}}}, "spos.yaml")
    capsys.readouterr()
    out = oneshot_driver.run_oneshot_config(strict, wd).summary()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spos keeps the largest sub-network" in err[0]
    assert "nas specialize --supernet" in err[0] and f"size_bytes {size} > {size - 1}" in err[0]
    assert out["meets_limits"] is False and out["best_arch"] is None
    assert not (wd / "best_arch.json").exists() and (wd / OVER_LIMITS_FILE).exists()


# ------------------------------------------------------------------------------ config errors
BASE = {"space": "tiny", "strategy": {"name": "random"}}


@pytest.mark.parametrize("limits, name, needle", [
    ({"latency": 0.05}, "latency", "unknown limit; limit one of"),
    ({"size_bytes": 0}, "size_bytes", "a limit is a positive number"),
    ({"params": -5}, "params", "remove it to leave the metric free"),
    ({"energy_mj": float("nan")}, "energy_mj", "positive number"),
    ({"macs": "many"}, "macs", "valid number"),
    ({"latency_ms": 0.05}, "latency_ms", "needs a latency table"),
])
def test_a_bad_limit_is_one_line_naming_it(limits, name, needle):
    with pytest.raises(NasInputError) as e:
        parse_config({**BASE, "objective": {"metric": "macs", "limits": limits}}, "c.yaml")
    assert e.value.field == f"objective.limits.{name}" and needle in e.value.message
    assert "\n" not in e.value.one_line()


def test_limits_validate_at_check_and_leave_old_fingerprints_alone(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nstrategy: {name: random}\nobjective: {metric: macs, limits: "
                   "{size_byte: 1e5}}\n")
    assert main(["search", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objective.limits.size_byte: unknown limit" in err[0]
    cfg.write_text("space: tiny\nstrategy: {name: random}\nobjective: {metric: macs, limits: "
                   "{size_bytes: 1e5}}\n")  # YAML reads 1e5 as text; the field takes it
    assert main(["search", str(cfg), "--check", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert checked["limits"] == {"size_bytes": 1e5}
    # a config without limits keeps the fingerprint it had before the field existed (the one old
    # workdirs hold; see test_workdir_lock for how they resume)
    assert parse_config({"space": "tiny", "strategy": {"name": "rl"}}).config.path_fingerprint() \
        == "f49e70590b82374b"
    limited = parse_config({**BASE, "objective": {"limits": {"params": 1e5}}}).config.fingerprint()
    assert limited != parse_config(BASE).config.fingerprint()
