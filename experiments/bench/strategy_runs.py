"""The searches of experiments/bench/strategy_comparison.py: one per (strategy, seed).

* Sample-based strategies (random, evolution, rl) run ``nas.search.run_search`` with a
  :class:`MemoExecutor`: candidates are trained deterministically from (Arch, seed), so an Arch
  already trained under this seed by any search of the benchmark (its history.jsonl) is answered
  from that record instead of training it again; every strategy still sees what training gives.
* One-shot strategies (fbnet, proxyless, single_path, spos) run their supernet search, timed
  (:func:`run_oneshot`); spos then derives its Arch by a constrained evolution over the
  supernet's sub-networks (every member meets the target; scored by supernet validation
  accuracy, as ``nas specialize`` does, :func:`spos_derive`). The derived Arch is trained from
  scratch like any candidate (:func:`train_derived`).

Settings of each strategy come from ``experiments/digits_<name>.yaml`` (``strategy.params`` and,
for single_path / spos, the supernet's ``train`` section), with the benchmark's target and epochs.

Folders under the benchmark's ``runs/``: ``<name>_<seed>`` per search (``evolution-hard_<seed>``
for ``evolution:hard``), ``derived_<seed>`` (the
from-scratch trainings of derived Archs, a history.jsonl the memo reads too).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ONESHOT_FILE = "comparison_oneshot.json"  # a finished one-shot search's timing and derived Arch
SAMPLE = ("random", "evolution", "rl")
ONESHOT = ("fbnet", "proxyless", "single_path", "spos")
PATHS = ("fbnet", "proxyless")  # one-shot strategies that derive their Arch from logits
#: MnasNet reward constraints a sample-based strategy may name: 'evolution:hard' (default soft)
CONSTRAINTS = ("soft", "hard")


def split_variant(name: str) -> tuple[str, str | None]:
    """Returns (strategy, reward constraint or None) of a benchmark strategy name.

    Args:
        name: 'evolution', or 'evolution:hard' (the strategy searching MnasNet's hard-constraint
            reward).
    """
    base, _, constraint = name.partition(":")
    return base, constraint or None


def check_strategy_names(text: str) -> list[str]:
    """Returns the strategies of ``--strategies`` (comma-separated), checked.

    Raises:
        NasInputError: an unknown strategy, or a reward constraint on one that takes none (one
            line naming ``--strategies``).
    """
    from nas.errors import NasInputError

    known = SAMPLE + ONESHOT
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if split_variant(s)[0] not in known]
    if bad or not names:
        raise NasInputError(f"{bad or text!r} is not allowed; choose from {','.join(known)}",
                            field="--strategies")
    for name in names:
        base, constraint = split_variant(name)
        if constraint is not None and (base not in SAMPLE or base == "random"
                                       or constraint not in CONSTRAINTS):
            raise NasInputError(f"{name!r} is not allowed; only evolution and rl take a reward "
                                f"constraint ({'|'.join(CONSTRAINTS)}), e.g. evolution:hard "
                                "(random's proposals do not depend on the reward)",
                                field="--strategies")
    return names


def run_folder(name: str, seed: int) -> str:
    """Returns the folder name of a strategy's search under ``runs/`` ('evolution-hard_3')."""
    return f"{name.replace(':', '-')}_{seed}"


@dataclasses.dataclass
class Bench:
    """What every search of the benchmark shares.

    Attributes:
        space_arg: ``--space`` (a shipped name or a YAML path), as configs name it.
        space: the Space.
        data: the data spec (``digits``, ``npz:PATH``, ...).
        epochs: from-scratch epochs of every candidate (and of every derived Arch).
        batch: candidates proposed per ask/tell round (sample-based).
        metric, table, target: the cost metric, latency table (absolute path or None), T.
        settings: {strategy: (params, supernet train section or None)}.
        spos_evolution: (population, generations) of spos's search over sub-networks.
        runs: the folder of the searches.
        inner: the executor that really trains (local or Ray).
    """

    space_arg: str
    space: Any
    data: str
    epochs: int
    batch: int
    metric: str
    table: str | None
    target: float
    settings: dict[str, tuple[dict, dict | None]]
    spos_evolution: tuple[int, int]
    runs: Path
    inner: Any

    def config(self, name: str, seed: int, budget: int | None = None):
        """Returns the LoadedConfig of strategy `name`'s search under `seed`."""
        from nas.runs.config import parse_config

        params, train = self.settings[name]
        base, constraint = split_variant(name)
        body = {"space": self.space_arg, "data": self.data, "seed": seed,
                "strategy": {"name": base, "params": params},
                "objective": {"metric": self.metric, "target": self.target},
                "latency_table": self.table, "train": train or {"epochs": self.epochs}}
        if budget is not None:
            body.update(budget=budget, batch=self.batch)
            body["objective"]["constraint"] = constraint or "soft"
        return parse_config(body, f"strategy_comparison ({name})")

    def objective(self):
        """Returns the MnasObjective of every search (its ``feasible`` says whether a result
        meets T)."""
        return self.config("random", 0, 1).config.objective.build()

    def evaluator(self, seed: int):
        """Returns the from-scratch evaluator of every candidate under `seed`."""
        from nas.training.evaluate import CandidateEvaluator

        return CandidateEvaluator.for_space(self.space, data=self.data, seed=seed,
                                            train={"epochs": self.epochs},
                                            latency_table=self.table)


def strategy_settings(name: str, metric: str, target: float, population: int,
                      oneshot_epochs: int | None) -> tuple[dict, dict | None]:
    """Returns (strategy.params, supernet train section or None) of a strategy, read from
    experiments/digits_<name>.yaml and adapted to the benchmark.

    One-shot epochs: fbnet / proxyless ``params.epochs``, single_path / spos ``train.epochs``
    (`oneshot_epochs`, default the file's); warm-up epochs scale with them (fewer than the
    epochs). proxyless's target is T; single_path's cost is the metric's own per-layer cost.

    Raises:
        NasInputError: single_path with a metric it has no per-layer cost of.
    """
    from nas.errors import NasInputError
    from nas.runs.config import load_config
    from nas.strategies.single_path import METRIC_COST

    name = split_variant(name)[0]
    config = load_config(ROOT / "experiments" / f"digits_{name}.yaml").config
    params = dict(config.strategy.params)
    if name == "evolution":
        params["population"] = population
    if name in SAMPLE:
        return params, None
    train = dict(config.train) if name in ("single_path", "spos") else None
    holder = train if train is not None else params
    default = int(holder.get("epochs", 10))
    epochs = int(oneshot_epochs or default)
    holder["epochs"] = epochs
    if "warmup_epochs" in params:
        scaled = params["warmup_epochs"] * epochs / default
        params["warmup_epochs"] = min(type(params["warmup_epochs"])(round(scaled)), epochs - 1)
    if name == "proxyless" and ("target" in params or params.get("objective") == "hinge"):
        params["target"] = target
    if name == "single_path":
        if metric not in METRIC_COST:
            raise NasInputError(f"single_path cannot aim at a target of {metric}; use --metric "
                                f"one of {','.join(METRIC_COST)} or leave single_path out",
                                field="--strategies")
        params["cost"] = METRIC_COST[metric][0]  # the metric's own per-layer cost
    return params, train


class MemoExecutor:
    """Trains each (Arch, seed) once: results come from a memo (filled from earlier searches'
    history.jsonl of the same seed) or from the wrapped executor, which trains only the rest.

    A memo hit is answered with the result and the wall seconds of the training that produced
    it (what the candidate costs), so candidate times stay comparable whichever search trained
    an Arch first.

    Args:
        space: the Space.
        inner: the executor that trains.
        memo: {arch_id: (result, seconds)}, updated in place.
    """

    def __init__(self, space, inner, memo):
        self.space, self.inner, self.memo = space, inner, memo
        self.trained = 0

    def map(self, fn, items, on_result=None):
        """Like the executors' map: memoized items are answered without training."""
        from nas.executor import Outcome

        keys = [self.space.arch_id(a) for a in items]
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        fresh = self.inner.map(fn, [items[i] for i in todo]) if todo else []
        for i, outcome in zip(todo, fresh):
            if outcome.status == "ok":
                self.memo[keys[i]] = (outcome.value, outcome.seconds)
        self.trained += len(todo)
        by_index = dict(zip(todo, fresh))
        out = [by_index.get(i) or Outcome("ok", self.memo[k][0], seconds=self.memo[k][1])
               for i, k in enumerate(keys)]
        if on_result is not None:
            for i, outcome in enumerate(out):
                on_result(i, outcome)
        return out

    def close(self) -> None:
        """The wrapped executor is closed by the benchmark."""


def memo_from_history(runs: Path, seed: int) -> dict:
    """Returns {arch_id: (result, seconds)} of the ok candidate records of every search with
    this seed under `runs` (folders named ``*_<seed>``)."""
    from nas.history import History
    from nas.strategies.outputs import candidate_records

    memo = {}
    for folder in sorted(runs.glob(f"*_{seed}")):
        path = folder / "history.jsonl"
        if not path.exists():
            continue
        for r in candidate_records(History(path).load()):
            if r["status"] == "ok":
                value = {"accuracy": r["accuracy"], "val_accuracy": r["val_accuracy"],
                         "test_accuracy": r["test_accuracy"], "latency_ms": r["latency_ms"],
                         **r.get("cost", {})}
                memo[r["arch_id"]] = (value, float(r.get("seconds") or 0.0))
    return memo


def run_sample(bench: Bench, name: str, seed: int, budget: int, memo: dict):
    """Runs (or resumes, or extends to a larger budget) a sample-based search.

    Returns:
        (the SearchResult, candidates trained by this call).
    """
    from nas.search import run_search

    executor = MemoExecutor(bench.space, bench.inner, memo)
    result = run_search(bench.config(name, seed, budget), bench.runs / run_folder(name, seed),
                        evaluate=bench.evaluator(seed), executor=executor)
    return result, executor.trained


def best_feasible(bench: Bench, records: list[dict]) -> dict | None:
    """Returns the highest-val-accuracy ok record meeting T, or None."""
    from nas.search import best_records

    return best_records(records, bench.objective())[1]


def spos_derive(bench: Bench, workdir: Path, seed: int) -> tuple[dict | None, dict]:
    """Searches the spos supernet's sub-networks for the most accurate one meeting T.

    Once-for-All's constrained evolution (:func:`nas.specialize.evolution.constrained_evolution`)
    with the cost metric in place of a device latency; each sub-network scored by its supernet
    validation accuracy after BatchNorm recalibration (the test split is never seen).

    Returns:
        (the Arch, or None when no sub-network meets T; {"scored", "best_supernet_val"}).
    """
    from nas.data import load_data
    from nas.specialize.evolution import EvolutionSettings, constrained_evolution
    from nas.specialize.genome import SubnetGenome
    from nas.specialize.run import SupernetAccuracy, sandwich_ends
    from nas.training.evaluate import cost_function
    from nas.weight_sharing import SupernetScorer, path_accuracy

    sn = SupernetScorer(str(workdir)).load()
    data = load_data(sn.data, sn.space, seed=sn.seed)
    val_only = dataclasses.replace(data, x_test=None, y_test=None)
    gs = SubnetGenome(sn.space)
    accuracy = SupernetAccuracy(gs, lambda arch, _: path_accuracy(sn, arch, val_only))
    costs = cost_function(sn.space, bench.table)
    population, generations = bench.spos_evolution
    result = constrained_evolution(
        gs, lambda arch: costs(arch)[bench.metric], bench.target, accuracy.val_many,
        EvolutionSettings(population=population, generations=generations, seed=seed),
        seeds=sandwich_ends(gs))
    info = {"scored": accuracy.scored,
            "best_supernet_val": None if result.best is None else result.best.score}
    return (None if result.best is None else dict(result.best.arch)), info


def derive_rule(name: str, summary: dict) -> str | None:
    """Returns how a one-shot search's Arch was read from its supernet: 'within_target' (fbnet /
    proxyless: the most probable Arch within T, :mod:`nas.supernet.derive_within`), 'argmax'
    (their rule before it, kept by records written then) or None (single_path, spos)."""
    if name not in PATHS:
        return None
    return "within_target" if summary.get("derivation") else "argmax"


def rederive(bench: Bench, name: str, seed: int, info: dict, log) -> dict:
    """Re-reads the Arch of a finished fbnet / proxyless search with today's derive rule.

    The search resumes at its last checkpoint (nothing is trained). Its seconds stay those of
    the one whole run, which derived an Arch too: the new rule's greedy search costs ~0.1 s
    more on rank16; the resume's wall time (loading, mostly) is kept as ``rederive_seconds``.

    Returns:
        The updated record (also written to ``ONESHOT_FILE``).
    """
    from nas.search import run_search

    wd = bench.runs / f"{name}_{seed}"
    t0 = time.perf_counter()
    summary = run_search(bench.config(name, seed), wd).summary()
    seconds = time.perf_counter() - t0
    arch = summary.get("arch")
    out = {**info, "arch": arch, "arch_id": bench.space.arch_id(arch),
           "rederive_seconds": seconds, "derive_rule": derive_rule(name, summary), "rederived_from": info.get("arch_id"),
           "summary": {**info["summary"], "arch_id": summary.get("arch_id"),
                       "predicted_cost": summary.get("predicted_cost"),
                       "meets_target": summary.get("meets_target")}}
    log(f"  seed {seed} {name}: re-derived {info.get('arch_id')} -> {out['arch_id']} "
        f"({out['derive_rule']}, {seconds:.0f} s, nothing retrained)")
    (wd / ONESHOT_FILE).write_text(json.dumps(out, indent=1, default=str))
    return out


def run_oneshot(bench: Bench, name: str, seed: int, log, rederive_paths: bool = False) -> dict:
    """Runs a one-shot search (once: its result is kept in ``ONESHOT_FILE``), timed.

    Wall seconds = the search (data loading, XLA compiles, every supernet epoch with its
    per-epoch scoring, checkpoints) + the derive (spos: the evolution over sub-networks; the
    others derive inside their search). A folder left by an unfinished run is removed and the
    search restarted, so the time is always that of one whole run.

    Returns:
        {"arch" (None: spos found no sub-network meeting T), "arch_id", "supernet_seconds",
        "derive_seconds", "oneshot_seconds", "summary" (the search's brief), "derive" (spos)}.
    """
    from nas.search import run_search

    wd = bench.runs / f"{name}_{seed}"
    done = wd / ONESHOT_FILE
    if done.exists():
        info = json.loads(done.read_text())
        if rederive_paths and name in PATHS and info.get("derive_rule") != "within_target":
            return rederive(bench, name, seed, info, log)
        return info
    if wd.exists():
        log(f"  seed {seed} {name}: removing the unfinished run {wd} (restarted, so its wall "
            "time is of one whole run)")
        shutil.rmtree(wd)
    t0 = time.perf_counter()
    summary = run_search(bench.config(name, seed), wd).summary()
    supernet_seconds = time.perf_counter() - t0
    arch, derive = summary.get("arch"), None
    t1 = time.perf_counter()
    if name == "spos":
        arch, derive = spos_derive(bench, wd, seed)
    derive_seconds = time.perf_counter() - t1
    brief = {k: summary.get(k) for k in ("arch_id", "predicted_cost", "meets_target",
                                         "val_accuracy", "search_seconds")}
    out = {"arch": arch, "arch_id": None if arch is None else bench.space.arch_id(arch),
           "supernet_seconds": supernet_seconds, "derive_seconds": derive_seconds,
           "oneshot_seconds": supernet_seconds + derive_seconds, "summary": brief,
           "derive": derive, "derive_rule": derive_rule(name, summary)}
    done.write_text(json.dumps(out, indent=1, default=str))
    return out


def train_derived(bench: Bench, seed: int, arch: dict, memo: dict) -> dict:
    """Trains a derived Arch from scratch like every candidate (memoized per (Arch, seed)).

    The record joins ``runs/derived_<seed>/history.jsonl`` (read by later memos).

    Returns:
        The history record (accuracy = val_accuracy, test_accuracy, seconds, costs).
    """
    from nas.history import History, make_record

    executor = MemoExecutor(bench.space, bench.inner, memo)
    arch = bench.space.validate(arch)
    outcome = executor.map(bench.evaluator(seed), [arch])[0]
    history = History(bench.runs / f"derived_{seed}" / "history.jsonl")
    records = history.load()
    arch_id = bench.space.arch_id(arch)
    record = make_record(len(records), arch_id, arch, outcome.status, outcome.value, None,
                         outcome.seconds, outcome.attempts, outcome.error)
    if executor.trained and outcome.status == "ok":
        history.append(record)
    return record
