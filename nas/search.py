"""The search entry point :func:`run_search` for every strategy, and the sample-based loop.

The strategy registry (:mod:`nas.strategies.registry`) says each name's family. One-shot
strategies (fbnet, proxyless, single_path) are handed to their driver
(:func:`nas.strategies.oneshot_driver.run_oneshot_config`), against the config's
``objective.metric`` (latency from the table, or an exact cost table of params / MACs / BOPs /
size / energy, :mod:`nas.cost_table`).
Sample-based ones run ask -> executor.map(evaluate) -> tell -> history.jsonl, each candidate
trained from scratch or, with ``evaluation.mode: supernet``, scored on a trained supernet
(:mod:`nas.weight_sharing`); each record says which (``scored_by``). On a Ray executor the
driver loads a small data set once and the trials read it from Ray's object store
(:mod:`nas.ray_data`).

Every evaluated candidate is appended to ``WORKDIR/history.jsonl`` (fsync'd) as soon as its
batch returns. A search restarted on the same workdir *replays*: it runs the same deterministic
ask/tell sequence, answering every candidate already in the history from the record instead of
training it, so the strategy's state (RL controller, evolution population) is rebuilt exactly and
nothing is evaluated twice. The budget counts distinct candidates in the history; a candidate the
strategy proposes again is answered from the history for free.

With ``objective.limits`` (:mod:`nas.limits`) every new proposal's costs are computed first
(:func:`nas.training.evaluate.cost_function`, no training); one over a limit is never trained:
it gets a ``kind: "rejected"`` record (replayed like the others), the strategy is told it was
rejected (``Observation.rejected``), and the budget - which counts trained candidates - is not
used up.
A strategy whose last :data:`MAX_REJECTED_IN_A_ROW` proposals were all rejected is stopped with
one warning line (also the summary's ``stopped``).

Outputs in the workdir (the same files as every strategy's, :mod:`nas.strategies.outputs`):
``search.json`` (the config and its fingerprint; a different config is refused),
``history.jsonl`` (``kind: "candidate"`` and ``kind: "rejected"`` records), ``best_arch.json``
(the best Arch as an arch file, its metrics in meta), ``pareto.json`` (the non-dominated trained
candidates over accuracy and :func:`nas.strategies.registry.front_metrics`), ``summary.json``.
A ``best.json`` left by an older version is not read (best_arch.json is rebuilt from the history
at the end of every run).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.archfile import ArchFile
from nas.runs.config import LoadedConfig, SearchConfig
from nas.training.evaluate import CandidateEvaluator, cost_function
from nas.executor import Outcome, make_executor
from nas.history import History, make_record, record_value
from nas.limits import rejection_counts, violations, violations_text
from nas.objective import MnasObjective
from nas.ray_data import share_with_trials
from nas.space import Space, resolve_space
from nas.strategies.base import Observation
from nas.strategies.oneshot_driver import OneShotSearchResult, run_oneshot_config
from nas.strategies.outputs import (BEST_ARCH_FILE, CANDIDATE, HISTORY_FILE, PARETO_FILE, REJECTED,
                                    candidate_records, rejected_records, write_pareto,
                                    write_summary)
from nas.strategies.registry import entry, front_metrics, make_strategy
from nas.runs.workdir import claim_workdir

CONFIG_FILE = "search.json"
MAX_PROPOSALS_PER_CANDIDATE = 20  # stop if a strategy keeps proposing evaluated candidates
#: stop when this many proposals in a row were over objective.limits (a strategy that only
#: proposes Archs it may not train)
MAX_REJECTED_IN_A_ROW = 1000


@dataclasses.dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        records: every candidate record of the history (evaluation order).
        best: the ok record with the highest reward, or None.
        best_feasible: the ok record with the highest accuracy that meets the target, or None.
        new: candidates evaluated by this run (the rest came from the history).
        proposals: proposals asked in this run, replayed ones included.
        workdir: the workdir.
        strategy: the strategy's name.
        rejected: the records of candidates rejected for breaking ``objective.limits``
            (never trained, not counted in the budget).
        limits: the config's ``objective.limits``.
        stopped: why the search stopped before its budget (one line), or None.
        pareto: what pareto.json holds (:func:`nas.strategies.outputs.write_pareto`), or None.
    """

    records: list[dict]
    best: dict | None
    best_feasible: dict | None
    new: int
    proposals: int
    workdir: str
    strategy: str = ""
    rejected: list[dict] = dataclasses.field(default_factory=list)
    limits: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped: str | None = None
    pareto: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Returns the JSON-able summary written to summary.json and printed by --json.

        Returns:
            The common fields of every search summary (strategy, family, workdir, best_arch,
            arch_id, arch: of the best candidate, None when none is ok) and candidates (trained
            or tried), new, proposals, statuses, best, best_feasible, rejected (candidates over
            ``objective.limits``, never trained), rejected_by_limit ({metric: count}), limits,
            stopped (why it ended before its budget, or None), pareto ({file, objectives,
            compared, front: [{arch_id, accuracy, <cost>...}]}), and what the candidates trained
            on (:func:`devices_used`: devices, devices_by_node, platforms).
        """
        statuses: dict[str, int] = {}
        for r in self.records:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        best = self.best or {}
        return {"strategy": self.strategy, "family": "sample", "workdir": self.workdir,
                "best_arch": str(Path(self.workdir) / BEST_ARCH_FILE) if self.best else None,
                "arch_id": best.get("arch_id"), "arch": best.get("arch"),
                "candidates": len(self.records), "new": self.new,
                "proposals": self.proposals, "statuses": statuses, "best": _brief(self.best),
                "best_feasible": _brief(self.best_feasible), "rejected": len(self.rejected),
                "rejected_by_limit": rejection_counts(self.rejected), "limits": self.limits,
                "stopped": self.stopped, "pareto": self._pareto_brief(),
                **devices_used(self.records)}

    def _pareto_brief(self) -> dict[str, Any] | None:
        if self.pareto is None:
            return None
        names = [o["name"] for o in self.pareto["objectives"]]
        front = [{"arch_id": m["arch_id"], **{k: record_value(m, k) for k in names}}
                 for m in self.pareto["front"]]
        return {"file": str(Path(self.workdir) / PARETO_FILE), "objectives": names,
                "compared": self.pareto["compared"], "front": front}


def devices_used(records: list[dict]) -> dict[str, Any]:
    """Returns what the candidates of a search trained on, from their history records.

    Every candidate trains data-parallel on ``train.devices`` local devices (0: all of its
    machine's), so on one machine they all report the same count; under Ray, candidates on nodes
    with different device counts report different ones. ``devices`` is therefore the most any
    candidate used (the figure ``nas train`` / one-shot summaries give for their one run) and
    ``devices_by_node`` each node's count.

    Args:
        records: candidate records (those without ``devices``, e.g. written by older versions
            or by an evaluator that does not train, are left out).

    Returns:
        {"devices": the most local devices a candidate trained on (None: no record says),
        "devices_by_node": {host name: the most devices a candidate used there},
        "platforms": JAX platforms the candidates trained on, sorted (e.g. ["gpu"])}.
    """
    by_node: dict[str, int] = {}
    platforms: set[str] = set()
    for r in records:
        if r.get("devices") is None:
            continue
        node = str(r.get("node") or "unknown")
        by_node[node] = max(by_node.get(node, 0), int(r["devices"]))
        if r.get("platform"):
            platforms.add(str(r["platform"]))
    return {"devices": max(by_node.values(), default=None), "devices_by_node": by_node,
            "platforms": sorted(platforms)}


def _brief(record: dict | None) -> dict | None:
    """Returns the fields of a record shown in summaries."""
    if record is None:
        return None
    return {k: record.get(k) for k in ("arch_id", "reward", "accuracy", "test_accuracy",
                                        "latency_ms", "cost", "arch")}


def _record(n: int, space: Space, arch: Mapping, outcome: Outcome, objective: MnasObjective) -> dict:
    arch_id = space.arch_id(arch)
    status, error, reward = outcome.status, outcome.error, None
    if status in ("ok", "stopped"):
        try:
            reward = objective.reward(outcome.value)
        except (KeyError, ValueError, TypeError) as e:
            status, error = "error", f"cannot compute the reward: {e}"
    record = make_record(n, arch_id, arch, status, outcome.value, reward, outcome.seconds,
                         outcome.attempts, error)
    record["scored_by"] = (outcome.value or {}).get("scored_by", "train")
    record["kind"] = CANDIDATE
    return record


def default_evaluator(loaded: LoadedConfig, space: Space) -> Callable[..., dict]:
    """Returns what scores a candidate: training from scratch, or its supernet path.

    Raises:
        NasInputError: mode supernet with a supernet of another space or data set.
    """
    config = loaded.config
    ev = config.evaluation
    if ev.mode == "supernet":
        from nas.weight_sharing import SupernetScorer, check_compatible

        scorer = SupernetScorer(ev.supernet, ev.calibration_images, ev.eval_batch_size,
                                loaded.latency_table, prior=ev.prior, prior_archs=ev.prior_archs)
        check_compatible(scorer.load(), space, config.data, loaded.source)
        return scorer
    return CandidateEvaluator.for_space(space, data=config.data, train=dict(config.train),
                                        seed=config.seed, latency_table=loaded.latency_table)


def best_records(records: list[dict], objective: MnasObjective) -> tuple[dict | None, dict | None]:
    """Returns (highest-reward ok record, highest-accuracy ok record meeting the target)."""
    ok = [r for r in records if r["status"] == "ok" and r.get("reward") is not None]
    best = max(ok, key=lambda r: r["reward"], default=None)
    feasible = [r for r in ok if objective.feasible({**r.get("cost", {}), **r})]
    return best, max(feasible, key=lambda r: r["accuracy"], default=None)


def run_search(loaded: LoadedConfig, workdir: str | os.PathLike, *,
               evaluate: Callable[..., dict] | None = None, executor: Any = None,
               progress: bool = False) -> "SearchResult | OneShotSearchResult":
    """Runs (or resumes) the search a config describes, whatever its strategy.

    The registry entry's family decides: 'sample' strategies (random, evolution, rl, nsga2) run the
    ask/tell loop below; 'one_shot' ones (fbnet, proxyless, single_path) train their supernet
    and derive an Arch (:func:`nas.strategies.oneshot_driver.run_oneshot_config`). Both results
    have ``summary()``, and both write best_arch.json, summary.json and history.jsonl.

    Args:
        loaded: the validated config (:func:`nas.runs.config.load_config`).
        workdir: output folder; an existing search there is resumed.
        evaluate: ``fn(arch, report) -> result`` (sample-based only; default: a
            :class:`CandidateEvaluator` that trains with the config's settings and predicts
            latency from its table, or with ``evaluation.mode: supernet`` a
            :class:`nas.weight_sharing.SupernetScorer`).
        executor: an executor (default: built from the config; closed at the end if built here).
        progress: show a progress bar on stderr.

    Returns:
        The SearchResult (also written to summary.json and best_arch.json), or for a one-shot
        strategy the :class:`OneShotSearchResult`.

    Raises:
        NasInputError: bad config, or a workdir holding a search with another config.
    """
    config = loaded.config
    if entry(config.strategy.name, loaded.source).family == "one_shot":
        if evaluate is not None or executor is not None:
            raise ValueError("evaluate and executor apply to sample-based strategies only")
        return run_oneshot_config(loaded, workdir, progress)
    space = resolve_space(config.space, loaded.source)
    workdir = Path(workdir).resolve()
    if evaluate is None:  # before the claim: a bad supernet writes nothing
        evaluate = default_evaluator(loaded, space)
    claim = claim_workdir(workdir, config)  # flock on the workdir, held for this search
    history = History(workdir / HISTORY_FILE)
    earlier = history.load()
    cache = {r["arch_id"]: r for r in candidate_records(earlier)}
    rejected = {r["arch_id"]: r for r in rejected_records(earlier)}
    limits = dict(config.objective.limits)
    costs_of = cost_function(space, loaded.latency_table) if limits else None
    objective = config.objective.build()
    strategy = make_strategy(config.strategy.name, space, config.strategy.params,
                             metric=config.objective.metric)
    own_executor = executor is None  # built on first use: a finished search starts no Ray
    bar = _progress_bar(config.budget, len(cache), progress)
    state = strategy.init(config.seed)
    new = proposals = screened = streak = 0  # screened: proposals answered 'rejected'
    limit = MAX_PROPOSALS_PER_CANDIDATE * config.budget
    stopped = None
    trial_fn = None  # evaluate as the executor's trials get it (data shared on a Ray cluster)
    try:
        while len(cache) < config.budget:
            if proposals - screened >= limit:
                stopped = (f"stopped after {proposals} proposals: the strategy keeps proposing "
                           "candidates it has already seen")
                break
            if streak >= MAX_REJECTED_IN_A_ROW:
                stopped = (f"stopped after {proposals} proposals: the last {streak} were all over "
                           f"objective.limits ({_counts_text(rejected.values())}); {len(cache)} of "
                           f"{config.budget} candidates trained; loosen objective.limits or search "
                           "a space with smaller Archs")
                break
            state, asked = strategy.ask(state, config.proposals_per_round)
            proposals += len(asked)
            ids = [space.arch_id(p.arch) for p in asked]
            todo: dict[str, Any] = {}
            for p, arch_id in zip(asked, ids):
                if arch_id in cache or arch_id in todo:
                    streak = 0
                    continue
                if costs_of is not None and arch_id not in rejected:
                    costs = costs_of(p.arch)
                    broken = violations(costs, limits)
                    if broken:  # recorded now, never trained
                        rejected[arch_id] = _rejected_record(len(rejected), arch_id, p.arch,
                                                             costs, broken)
                        history.append(rejected[arch_id])
                if arch_id in rejected:
                    screened, streak = screened + 1, streak + 1
                    continue
                todo[arch_id] = p.arch
                streak = 0
            todo = dict(list(todo.items())[:config.budget - len(cache)])
            if todo:
                pending = list(todo.items())

                def record_outcome(index: int, outcome: Outcome) -> None:
                    arch_id, arch = pending[index]
                    record = _record(len(cache), space, arch, outcome, objective)
                    history.append(record)
                    cache[arch_id] = record
                    bar.update(1)
                    _postfix(bar, cache.values(), len(rejected))

                if executor is None:
                    executor = _executor_for(config)
                if trial_fn is None:  # the driver loads the data once, on first use
                    trial_fn = share_with_trials(evaluate, executor)
                executor.map(trial_fn, [arch for _, arch in pending], on_result=record_outcome)
                new += len(pending)
            state = strategy.tell(state, observations(asked, ids, cache, rejected))
        if stopped:
            sys.stderr.write(f"nas: warning: {stopped}\n")
    finally:
        bar.close()
        if own_executor and executor is not None:
            executor.close()
    final = history.load()
    records = candidate_records(final)
    best, feasible = best_records(records, objective)
    front = write_pareto(workdir, records, front_metrics(
        config.strategy.name, config.strategy.params, config.objective.metric,
        bool(loaded.latency_table)))
    result = SearchResult(records, best, feasible, new, proposals, str(workdir),
                          config.strategy.name, rejected_records(final), limits, stopped, front)
    if best is not None:  # before the summary that names it
        meta = {k: best.get(k) for k in ("arch_id", "reward", "accuracy", "val_accuracy",
                                         "test_accuracy", "latency_ms", "cost")}
        meta["source"] = f"nas search ({config.strategy.name}), {workdir}"
        meta["strategy"] = config.strategy.name
        ArchFile(space, best["arch"], meta).save(workdir / BEST_ARCH_FILE)
    write_summary(workdir, result.summary())
    claim.release()
    return result


def _rejected_record(n: int, arch_id: str, arch: Mapping, costs: Mapping[str, Any],
                     broken: list) -> dict:
    """Returns the history record of a candidate rejected for breaking objective.limits.

    Args:
        n: its position among the search's rejected records (0-based).
        arch_id, arch: the candidate.
        costs: its costs (:func:`nas.training.evaluate.cost_function`).
        broken: the :class:`nas.limits.Violation` s.
    """
    record = make_record(n, arch_id, arch, "rejected", costs, seconds=0.0, attempts=0,
                         error=f"over objective.limits: {violations_text(broken)}")
    record["kind"] = REJECTED
    record["violations"] = [v.to_dict() for v in broken]
    return record


def observed_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Returns what a strategy is told of a history record: accuracy, latency_ms and costs
    (those the record has)."""
    names = ("accuracy", "latency_ms", *(record.get("cost") or {}))
    values = {k: record_value(record, k) for k in names}
    return {k: v for k, v in values.items() if v is not None}


def observations(asked: list, ids: list[str], cache: Mapping[str, dict],
                 rejected: Mapping[str, dict]) -> list[Observation]:
    """Returns the Observations of one ask: trained candidates with their reward, rejected ones
    flagged (reward None), in ask order; proposals neither trained nor rejected are left out."""
    out = []
    for p, arch_id in zip(asked, ids):
        if arch_id in cache:
            out.append(Observation(p, cache[arch_id].get("reward"),
                                   metrics=observed_metrics(cache[arch_id])))
        elif arch_id in rejected:
            out.append(Observation(p, None, rejected=True,
                                   metrics=observed_metrics(rejected[arch_id])))
    return out


def _counts_text(records) -> str:
    counts = rejection_counts(records)
    return ", ".join(f"{m} {n}" for m, n in counts.items()) or "none"


def _executor_for(config: SearchConfig):
    """Returns the executor the config's executor section describes."""
    ex = config.executor
    early = (ex.grace_epochs, int(config.train.get("epochs", 30))) if ex.early_stopping else None
    return make_executor(ex.kind, ex.address, ex.workers, ex.cpus_per_trial, ex.retries, early,
                         ex.gpus_per_trial, ex.storage)


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


def _postfix(bar: Any, records, rejected: int = 0) -> None:
    rewards = [r["reward"] for r in records if r.get("reward") is not None]
    extra = {"rejected": rejected} if rejected else {}
    if rewards:
        bar.set_postfix(best=f"{max(rewards):.4f}", **extra)
