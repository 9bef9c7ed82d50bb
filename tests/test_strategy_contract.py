"""The contract every registered strategy keeps, parametrized over the strategy registry.

Each strategy runs on a 4-Arch space at 8x8 with tiny budgets, is interrupted right after its
second history.jsonl record (sample-based: the second evaluated candidate; one-shot: the second
supernet epoch), and is then run again on the same workdir. The rerun must resume (nothing
evaluated or trained twice beyond the interrupted epoch) and every strategy must end with the
same output files: best_arch.json (an arch file nas.archfile.load_arch reads), summary.json
(the common fields) and history.jsonl (candidate records, or one epoch record per epoch).

Sample-based strategies score candidates with a synthetic evaluator (the search machinery is
under test, not training); one-shot strategies train their real (tiny) supernet.
"""

import json

import pytest

from nas.archfile import load_arch
from nas.runs.config import parse_config
from nas.errors import NasInputError
from nas.history import History
from nas.search import run_search
from nas.space import Space
from nas.strategies import oneshot_loop, registry, single_path_run, spos_run
from nas.strategies.outputs import candidate_records, epoch_records, json_default

SPACE = {"name": "contract", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
         "stem": {"channels": 8, "kernel": 3, "stride": 1}, "head": {"channels": 16},
         "stages": [{"channels": 8, "stride": 2, "knobs": {"kernel": [3, 5], "expand": [1, 3]}}]}
BUDGET = 4  # sample-based: every Arch of the space
EPOCHS = 3  # one-shot
INTERRUPT_AFTER = 2  # history records
ONE_SHOT_PARAMS = {"epochs": EPOCHS, "warmup_epochs": 1, "batch_size": 64, "objective": "none"}
CONFIGS = {
    "fbnet": {"strategy": {"name": "fbnet", "params": ONE_SHOT_PARAMS}},
    "proxyless": {"strategy": {"name": "proxyless", "params": ONE_SHOT_PARAMS}},
    "single_path": {"strategy": {"name": "single_path", "params": {"lam": 1.0}},
                    "train": {"epochs": EPOCHS, "batch_size": 64}},
    "spos": {"strategy": {"name": "spos", "params": {"random_subnets": 0}},
             "train": {"epochs": EPOCHS, "batch_size": 64}},
}
COMMON_SUMMARY_FIELDS = ("strategy", "family", "workdir", "best_arch", "arch_id", "arch")


def _config(name):
    base = {"space": SPACE, "data": "digits", "seed": 3, "budget": BUDGET, "batch": 1,
            "objective": {"metric": "macs"}}
    return parse_config({**base, **CONFIGS.get(name, {"strategy": {"name": name}})}, "c.yaml")


class Evaluator:
    """Synthetic scores of an Arch (sample-based strategies); records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, arch, report=None):
        self.calls.append(Space.from_dict(SPACE).arch_id(arch))
        score = (arch["s1_b1_kernel"] + arch["s1_b1_expand"]) / 8
        return {"accuracy": score, "val_accuracy": score, "test_accuracy": score,
                "macs": 1000.0 * score}


class Interrupt:
    """Counts history writes and raises KeyboardInterrupt right after the `limit`-th."""

    def __init__(self, limit=None):
        self.limit, self.writes = limit, 0

    def wrap(self, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.writes += 1
            if self.limit is not None and self.writes >= self.limit:
                raise KeyboardInterrupt("simulated interruption")
            return out
        return wrapped


def _run(name, workdir, interrupt, evaluate):
    """Runs the search with every history write counted (and maybe interrupted)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(History, "append", interrupt.wrap(History.append))
        for module in (oneshot_loop, single_path_run, spos_run):
            mp.setattr(module, "write_epoch_record", interrupt.wrap(module.write_epoch_record))
        sample = registry.entry(name).family == "sample"
        return run_search(_config(name), workdir, evaluate=evaluate if sample else None)


@pytest.fixture(scope="module", params=registry.names())
def run(request, tmp_path_factory):
    """One strategy, interrupted after its second history record and run again."""
    name = request.param
    workdir = tmp_path_factory.mktemp(name)
    first, second = Evaluator(), Evaluator()
    with pytest.raises(KeyboardInterrupt):
        _run(name, workdir, Interrupt(INTERRUPT_AFTER), first)
    interrupted = History(workdir / "history.jsonl").load()
    resumed = Interrupt()
    summary = _run(name, workdir, resumed, second).summary()
    return {"name": name, "workdir": workdir, "summary": summary, "interrupted": interrupted,
            "resumed_writes": resumed.writes, "calls": (first.calls, second.calls)}


def test_the_registry_lists_every_strategy_once_with_its_family():
    assert registry.names() == ["evolution", "fbnet", "nsga2", "proxyless", "random", "rl",
                                "single_path", "spos"]
    assert registry.names("sample") == ["evolution", "nsga2", "random", "rl"]
    assert registry.names(supernet="paths") == ["fbnet", "proxyless"]
    for name in registry.names():
        e = registry.entry(name)
        assert e.name == name and e.family in ("sample", "one_shot")
        assert (e.supernet is None) == (e.family == "sample")
        assert isinstance(registry.parse_params(name, {}), e.params)
    with pytest.raises(NasInputError) as err:
        registry.entry("annealing", "x.yaml")
    assert err.value.field == "strategy.name" and "single_path" in err.value.message


def test_the_interrupted_run_resumes_instead_of_starting_over(run):
    assert len(run["interrupted"]) == INTERRUPT_AFTER
    if registry.entry(run["name"]).family == "sample":
        first, second = run["calls"]
        assert len(first) == INTERRUPT_AFTER and len(second) == BUDGET - INTERRUPT_AFTER
        assert not set(first) & set(second)  # nothing evaluated twice
    else:  # at most the interrupted epoch is trained again, never the first one
        assert 1 <= run["resumed_writes"] <= EPOCHS - INTERRUPT_AFTER + 1


def test_every_strategy_writes_the_same_output_files(run):
    wd, name = run["workdir"], run["name"]
    assert (wd / "best_arch.json").is_file() and (wd / "summary.json").is_file()
    summary = json.loads((wd / "summary.json").read_text())
    assert summary == json.loads(json.dumps(run["summary"], default=json_default))
    for field in COMMON_SUMMARY_FIELDS:
        assert summary[field] is not None, field
    assert summary["strategy"] == name and summary["family"] == registry.entry(name).family
    assert summary["best_arch"] == str(wd / "best_arch.json")
    best = load_arch(wd / "best_arch.json")
    assert best.space.arch_id(best.arch) == summary["arch_id"] and best.arch == summary["arch"]
    assert best.meta["strategy"] == name
    assert not (wd / "best.json").exists() and not (wd / "result.json").exists()


def test_history_holds_each_candidate_or_epoch_exactly_once(run):
    records = History(run["workdir"] / "history.jsonl").load()
    space = Space.from_dict(SPACE)
    for r in records:
        assert space.arch_id(space.validate(r["arch"])) == r["arch_id"]
    if registry.entry(run["name"]).family == "sample":
        ids = [r["arch_id"] for r in candidate_records(records)]
        assert len(ids) == len(set(ids)) == BUDGET == len(records)
        assert {r["kind"] for r in records} == {"candidate"}
    else:
        epochs = epoch_records(records)
        assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1)) and epochs == records
        assert candidate_records(records) == []  # a sample-based replay never sees them
        assert epochs[-1]["arch_id"] == run["summary"]["arch_id"]
        for r in epochs:
            assert r["strategy"] == run["name"] and r["cost_metric"] == "macs"
            assert r["predicted_cost"] > 0 and r["metrics"]
