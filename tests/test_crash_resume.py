"""Crash and resume: the real CLI is SIGKILLed at random moments and restarted with the same
command; it must end with the same best Arch as an uninterrupted run, and history.jsonl must
hold every candidate exactly once, in the uninterrupted order.

Sample-based strategies (random, evolution, rl) run in subprocesses with a synthetic evaluator
(tests/crash_driver.py: accuracy as a function of the Arch, a short sleep per candidate), so the
kills land between, during and after evaluations and appends. The one-shot strategies train a
real (small) supernet and are killed after a checkpoint or mid-epoch.
"""

import json
import random
import sys
from pathlib import Path

import pytest
import yaml

from nas.history import History

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_driver import SyntheticEvaluator  # noqa: E402
from crash_helpers import after, count_lines, finish, kill_when, start_driver  # noqa: E402


SEARCH = {"space": "tiny", "seed": 4, "budget": 14, "batch": 3,
          "objective": {"metric": "macs", "target": 1.5e6}}
PARAMS = {"random": {}, "evolution": {"population": 4, "sample_size": 2}, "rl": {}}


@pytest.mark.parametrize("strategy", ["random", "evolution", "rl"])
def test_sample_based_search_killed_twice_ends_as_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                       strategy):
    import nas.training.evaluate
    from nas.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SEARCH, "strategy": {"name": strategy,
                                                          "params": PARAMS[strategy]}}))
    monkeypatch.setattr(nas.training.evaluate.CandidateEvaluator, "for_space",
                        classmethod(lambda cls, space, **kw: SyntheticEvaluator()))
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "whole"), "--json"]) == 0
    whole = History(tmp_path / "whole" / "history.jsonl").load()
    best_whole = json.loads((tmp_path / "whole" / "best_arch.json").read_text())["arch"]

    rng = random.Random(f"crash-{strategy}")
    wd = tmp_path / "split"
    hist = wd / "history.jsonl"
    args = ["--synthetic", "0.05", "search", str(cfg), "--workdir", str(wd), "--json"]
    first = rng.randint(2, 6)
    assert kill_when(start_driver(args), lambda: count_lines(hist) >= first)  # after N records
    second, delay = first + rng.randint(2, 5), rng.uniform(0.0, 0.08)
    killed = kill_when(start_driver(args), after(lambda: count_lines(hist) >= second, delay))
    summary, err = finish(args)  # the same command again
    assert killed and "ended without releasing" in err  # the dead run's lock was taken over

    records = History(hist).load()
    ids = [r["arch_id"] for r in records]
    assert len(ids) == len(set(ids)) == SEARCH["budget"]  # no duplicate, no lost record
    assert ids == [r["arch_id"] for r in whole]  # the same search as without the crashes
    assert [r["n"] for r in records] == list(range(SEARCH["budget"]))
    assert json.loads((wd / "best_arch.json").read_text())["arch"] == best_whole
    assert summary["best"]["arch"] == best_whole and summary["candidates"] == SEARCH["budget"]


SMALL = {"name": "crash_small", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
         "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 16},
         "stages": [{"channels": 8, "stride": 2, "knobs": {"kernel": [3, 5], "expand": [1, 3]}}]}
ONE_SHOT = {
    "fbnet": {"strategy": {"name": "fbnet", "params": {
        "epochs": 4, "warmup_epochs": 1, "batch_size": 64, "objective": "none"}}},
    "single_path": {"strategy": {"name": "single_path", "params": {"lam": 1.0, "cost": "bops"}},
                    "train": {"epochs": 5, "batch_size": 64}},
}


def _numbers(obj, prefix=""):
    """Flattens JSON into {path: value}, leaving out wall times and paths."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not any(w in k for w in ("seconds", "source", "workdir", "time", "best_arch",
                                        "child")):
                out.update(_numbers(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, list):
        return {k: v for i, x in enumerate(obj) for k, v in _numbers(x, f"{prefix}/{i}").items()}
    return {prefix: obj}


# fbnet and proxyless share one driver (strategies/oneshot_loop.py) and its checkpoints: fbnet
# stands for both here; tests/test_strategy_contract.py interrupts and resumes every strategy.
@pytest.mark.parametrize("strategy", ["fbnet", "single_path"])
def test_one_shot_search_killed_midway_ends_as_an_uninterrupted_run(tmp_path, capsys, strategy):
    from nas.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"space": SMALL, "data": "digits", "seed": 2,
                                   **ONE_SHOT[strategy]}))
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "whole"), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    rng = random.Random(f"crash-{strategy}")
    wd = tmp_path / "split"
    args = ["search", str(cfg), "--workdir", str(wd), "--json"]
    ckpts = wd / "checkpoints"
    def first_checkpoint():
        return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())

    assert kill_when(start_driver(args), after(first_checkpoint, rng.uniform(0.0, 0.15)))
    summary, err = finish(args)  # the same command resumes from the newest checkpoint
    assert "ended without releasing" in err

    assert summary["arch"] == whole["arch"] and summary["arch_id"] == whole["arch_id"]
    a, b = _numbers(whole), _numbers(summary)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        else:
            assert b[key] == a[key], key
    best = json.loads((wd / "best_arch.json").read_text())
    assert best["arch"] == whole["arch"]
    if strategy != "single_path":  # fbnet, proxyless: the final architecture logits
        alpha = json.loads((tmp_path / "whole" / "summary.json").read_text())["alpha"]
        again = json.loads((wd / "summary.json").read_text())["alpha"]
        for label in alpha:
            assert again[label] == pytest.approx(alpha[label], rel=1e-5, abs=1e-7), label


#: two searchable slots at 8x8 (16 Archs): the retraining is real but takes a second
RUN_SPACE = {"name": "crash_run", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
             "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 16},
             "stages": [{"channels": 8, "stride": 1, "knobs": {"kernel": [3, 5], "expand": [1, 3]}},
                        {"channels": 16, "stride": 2, "knobs": {"kernel": [3, 5], "expand": [1, 3]}}]}
PIPELINE = {"space": RUN_SPACE, "data": "digits", "seed": 4, "budget": 5, "batch": 3,
            "strategy": {"name": "evolution", "params": {"population": 3}},
            "objective": {"metric": "macs", "target": 20000},
            "retrain": {"top_k": 1, "train": {"epochs": 4, "batch_size": 64}},
            "distill": {"enabled": False},
            "export": {"formats": ["json"], "calibration": 0, "measure_latency": False}}


def test_nas_run_killed_in_search_and_in_retrain_ends_as_an_uninterrupted_run(tmp_path,
                                                                              monkeypatch):
    """`nas run` (synthetic search scores, real retraining) killed during the search and during
    the retraining of the winner; the same command finishes with the same winner, the same
    retrained accuracy and a history without duplicates."""
    import nas.training.evaluate
    from nas.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(PIPELINE))
    real = nas.training.evaluate.CandidateEvaluator.for_space
    monkeypatch.setattr(nas.training.evaluate.CandidateEvaluator, "for_space",
                        classmethod(lambda cls, space, **kw: SyntheticEvaluator(0, real(space,
                                                                                        **kw))))
    assert main(["run", str(cfg), "--workdir", str(tmp_path / "whole"), "--json"]) == 0
    whole = json.loads((tmp_path / "whole" / "stages" / "retrain.json").read_text())

    rng = random.Random("crash-run")
    wd = tmp_path / "split"
    args = ["--synthetic", "0.05", "run", str(cfg), "--workdir", str(wd), "--json"]
    hist = wd / "search" / "history.jsonl"
    assert kill_when(start_driver(args),
                     after(lambda: count_lines(hist) >= 2, rng.uniform(0, 0.05)))

    def retrain_checkpoint():
        return any(p.name.isdigit() for p in (wd / "retrain").glob("*/checkpoints/*"))

    assert kill_when(start_driver(args), after(retrain_checkpoint, rng.uniform(0.0, 0.2)))
    finish(args)

    ids = [r["arch_id"] for r in History(hist).load()]
    reference = History(tmp_path / "whole" / "search" / "history.jsonl").load()
    assert ids == [r["arch_id"] for r in reference]
    split = json.loads((wd / "stages" / "retrain.json").read_text())
    assert split["winner"] == whole["winner"]
    for a, b in zip(whole["candidates"], split["candidates"]):
        assert b["arch_id"] == a["arch_id"] and b["status"] == a["status"] == "ok"
        for key in ("val_accuracy", "test_accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert (wd / "export" / "export.json").exists() and (wd / "report.md").exists()
