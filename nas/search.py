"""The sample-based search loop: ask -> executor.map(evaluate) -> tell -> history.jsonl.

Every evaluated candidate is appended to ``WORKDIR/history.jsonl`` (fsync'd) as soon as its
batch returns. A search restarted on the same workdir *replays*: it runs the same deterministic
ask/tell sequence, answering every candidate already in the history from the record instead of
training it, so the strategy's state (RL controller, evolution population) is rebuilt exactly and
nothing is evaluated twice. The budget counts distinct candidates in the history; a candidate the
strategy proposes again is answered from the history for free.

Outputs in the workdir: ``search.json`` (the config and its fingerprint; a different config is
refused), ``history.jsonl``, ``best.json`` (the best Arch as an arch file, its metrics in meta),
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.archfile import ArchFile
from nas.config import LoadedConfig, SearchConfig
from nas.errors import NasInputError
from nas.evaluate import CandidateEvaluator
from nas.executor import Outcome, make_executor
from nas.history import History, make_record
from nas.objective import MnasObjective
from nas.space import Space
from nas.strategies import Observation, make_strategy

HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "search.json"
BEST_FILE = "best.json"
SUMMARY_FILE = "summary.json"
MAX_PROPOSALS_PER_CANDIDATE = 20  # stop if a strategy keeps proposing evaluated candidates


@dataclasses.dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        records: every history record (evaluation order).
        best: the ok record with the highest reward, or None.
        best_feasible: the ok record with the highest accuracy that meets the target, or None.
        new: candidates evaluated by this run (the rest came from the history).
        proposals: proposals asked in this run, replayed ones included.
        workdir: the workdir.
    """

    records: list[dict]
    best: dict | None
    best_feasible: dict | None
    new: int
    proposals: int
    workdir: str

    def summary(self) -> dict[str, Any]:
        """Returns the JSON-able summary written to summary.json and printed by --json."""
        statuses: dict[str, int] = {}
        for r in self.records:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        return {"workdir": self.workdir, "candidates": len(self.records), "new": self.new,
                "proposals": self.proposals, "statuses": statuses, "best": _brief(self.best),
                "best_feasible": _brief(self.best_feasible)}


def _brief(record: dict | None) -> dict | None:
    """Returns the fields of a record shown in summaries."""
    if record is None:
        return None
    return {k: record.get(k) for k in ("arch_id", "reward", "accuracy", "test_accuracy",
                                        "latency_ms", "cost", "arch")}


def resolve_space(space: str | Mapping[str, Any], source: str | None = None) -> Space:
    """Returns the Space a config names (shipped name, YAML path or inline definition)."""
    try:
        if isinstance(space, str):
            return Space.by_name(space)
        return Space.from_dict(space, f"{source}: space" if source else "space")
    except NasInputError as e:
        raise NasInputError(e.message, e.source or source, f"space.{e.field}" if e.field else "space") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _claim_workdir(workdir: Path, config: SearchConfig) -> None:
    """Writes search.json, or checks that the workdir's search used the same config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG_FILE
    fingerprint = config.fingerprint()
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            raise NasInputError("not a search record; delete it or use a new --workdir", str(path)) from None
        if old != fingerprint:
            raise NasInputError("the workdir holds a search with another config (space, data, "
                                "strategy, objective, seed or train differ); use a new --workdir "
                                "or the same config", str(path), "fingerprint")
    _write_json_atomic(path, {"fingerprint": fingerprint, "config": config.model_dump()})


def _record(n: int, space: Space, arch: Mapping, outcome: Outcome, objective: MnasObjective) -> dict:
    arch_id = space.arch_id(arch)
    status, error, reward = outcome.status, outcome.error, None
    if status in ("ok", "stopped"):
        try:
            reward = objective.reward(outcome.value)
        except (KeyError, ValueError, TypeError) as e:
            status, error = "error", f"cannot compute the reward: {e}"
    return make_record(n, arch_id, arch, status, outcome.value, reward, outcome.seconds,
                       outcome.attempts, error)


def best_records(records: list[dict], objective: MnasObjective) -> tuple[dict | None, dict | None]:
    """Returns (highest-reward ok record, highest-accuracy ok record meeting the target)."""
    ok = [r for r in records if r["status"] == "ok" and r.get("reward") is not None]
    best = max(ok, key=lambda r: r["reward"], default=None)
    feasible = [r for r in ok if objective.feasible({**r.get("cost", {}), **r})]
    return best, max(feasible, key=lambda r: r["accuracy"], default=None)


def run_search(loaded: LoadedConfig, workdir: str | os.PathLike, *,
               evaluate: Callable[..., dict] | None = None, executor: Any = None,
               progress: bool = False) -> SearchResult:
    """Runs (or resumes) a sample-based search.

    Args:
        loaded: the validated config (:func:`nas.config.load_config`).
        workdir: output folder; an existing search there is resumed.
        evaluate: ``fn(arch, report) -> result`` (default: a :class:`CandidateEvaluator` that
            trains with the config's settings and predicts latency from its table).
        executor: an executor (default: built from the config; closed at the end if built here).
        progress: show a progress bar on stderr.

    Returns:
        The SearchResult (also written to summary.json and best.json).

    Raises:
        NasInputError: bad config, or a workdir holding a search with another config.
    """
    config = loaded.config
    space = resolve_space(config.space, loaded.source)
    workdir = Path(workdir).resolve()
    _claim_workdir(workdir, config)
    history = History(workdir / HISTORY_FILE)
    records = history.load()
    cache = {r["arch_id"]: r for r in records}
    objective = config.objective.build()
    strategy = make_strategy(config.strategy.name, space, config.strategy.params)
    if evaluate is None:
        evaluate = CandidateEvaluator.for_space(space, data=config.data, train=dict(config.train),
                                                seed=config.seed, latency_table=loaded.latency_table)
    own_executor = executor is None  # built on first use: a finished search starts no Ray
    bar = _progress_bar(config.budget, len(cache), progress)
    state = strategy.init(config.seed)
    new = proposals = 0
    limit = MAX_PROPOSALS_PER_CANDIDATE * config.budget
    try:
        while len(cache) < config.budget and proposals < limit:
            state, asked = strategy.ask(state, config.proposals_per_round)
            proposals += len(asked)
            ids = [space.arch_id(p.arch) for p in asked]
            todo: dict[str, Any] = {}
            for p, arch_id in zip(asked, ids):
                if arch_id not in cache and arch_id not in todo:
                    todo[arch_id] = p.arch
            todo = dict(list(todo.items())[:config.budget - len(cache)])
            if todo:
                pending = list(todo.items())

                def record_outcome(index: int, outcome: Outcome) -> None:
                    arch_id, arch = pending[index]
                    record = _record(len(cache), space, arch, outcome, objective)
                    history.append(record)
                    cache[arch_id] = record
                    bar.update(1)
                    _postfix(bar, cache.values())

                if executor is None:
                    executor = _executor_for(config)
                executor.map(evaluate, [arch for _, arch in pending], on_result=record_outcome)
                new += len(pending)
            observations = [Observation(p, cache[i].get("reward")) for p, i in zip(asked, ids) if i in cache]
            state = strategy.tell(state, observations)
        if proposals >= limit and len(cache) < config.budget:
            sys.stderr.write(f"nas: warning: stopped after {proposals} proposals: the strategy keeps "
                             "proposing candidates it has already seen\n")
    finally:
        bar.close()
        if own_executor and executor is not None:
            executor.close()
    records = history.load()
    best, feasible = best_records(records, objective)
    result = SearchResult(records, best, feasible, new, proposals, str(workdir))
    _write_json_atomic(workdir / SUMMARY_FILE, result.summary())
    if best is not None:
        meta = {k: best.get(k) for k in ("arch_id", "reward", "accuracy", "val_accuracy",
                                         "test_accuracy", "latency_ms", "cost")}
        meta["source"] = f"nas search ({config.strategy.name}), {workdir}"
        ArchFile(space, best["arch"], meta).save(workdir / BEST_FILE)
    return result


def _executor_for(config: SearchConfig):
    """Returns the executor the config's executor section describes."""
    ex = config.executor
    early = (ex.grace_epochs, int(config.train.get("epochs", 30))) if ex.early_stopping else None
    return make_executor(ex.kind, ex.address, ex.workers, ex.cpus_per_trial, ex.retries, early)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="search", unit="cand", file=sys.stderr,
                dynamic_ncols=True)


def _postfix(bar: Any, records) -> None:
    rewards = [r["reward"] for r in records if r.get("reward") is not None]
    if rewards:
        bar.set_postfix(best=f"{max(rewards):.4f}")
