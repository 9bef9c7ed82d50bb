"""The driver of the one-shot family: a config -> its supernet trained -> the derived Arch.

:func:`run_oneshot_config` runs every ``family: "one_shot"`` strategy of the registry against
the config's ``objective.metric``. The registry entry's ``supernet`` picks the trainer:
``"paths"`` (fbnet, proxyless: :func:`nas.strategies.oneshot_loop.run_oneshot`, differentiating
the expected latency from the latency table, or the expected cost of another metric from an
exact :func:`nas.cost_table.objective_table`) or ``"superkernel"`` (single_path:
:func:`nas.strategies.single_path_run.run_single_path`, with the metric's per-layer ``cost``
unless its params set one). Both write ``best_arch.json``, ``summary.json`` and epoch records in
``history.jsonl`` (:mod:`nas.strategies.outputs`).

With ``objective.limits`` the derived Arch is checked against them (:func:`check_derived_arch`):
one over a limit is reported in one warning line, moved from ``best_arch.json`` to
``over_limits_arch.json`` (nothing downstream takes it for the search's result) and the summary
says ``meets_limits: false`` with the ``limit_violations``. spos's Arch is its largest
sub-network (it learns no Arch), checked the same way; its warning points to ``nas specialize``.

Example:
    >>> summary = run_oneshot_config(load_config("experiments/digits_fbnet.yaml"), "runs/fb").summary()
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.runs.config import LoadedConfig
from nas.cost_table import objective_table
from nas.data import load_data
from nas.latency.table import LatencyTable
from nas.limits import violations, violations_text
from nas.space import resolve_space
from nas.strategies import single_path_run, spos_run
from nas.strategies.oneshot_loop import run_oneshot
from nas.strategies.outputs import BEST_ARCH_FILE, write_summary
from nas.strategies.registry import entry
from nas.strategies.single_path import METRIC_COST
from nas.supernet.derive_within import relative_excess
from nas.runs.workdir import claim_workdir, lock_workdir
from nas.safe_write import write_atomic
from nas.training.evaluate import cost_function

#: where a derived Arch over objective.limits is kept instead of best_arch.json
OVER_LIMITS_FILE = "over_limits_arch.json"
#: the fix a limit warning names for strategies that learn the Arch (fbnet, proxyless, single_path)
LEARNED_ARCH_FIX = "weigh the cost more (strategy.params) or loosen the limits"
#: ... and for spos, whose Arch is the largest sub-network: the search happens on the supernet
SPOS_FIX = ("spos keeps the largest sub-network; find one within the limits on this supernet "
            "with 'nas specialize --supernet WORKDIR --table T --target MS' or a search with "
            "evaluation: {mode: supernet, supernet: WORKDIR}")


@dataclasses.dataclass
class OneShotSearchResult:
    """What a one-shot search (fbnet, proxyless, single_path) produced.

    Attributes:
        data: the JSON-able summary (also in summary.json): workdir, strategy, family, arch,
            arch_id, best_arch, cost metric, predicted cost and latency, target and whether it
            is met, search seconds, and the strategy's own fields (distribution, alpha, ...).
    """

    data: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Returns the summary printed by ``nas search --json``."""
        return dict(self.data)


def run_oneshot_config(loaded: LoadedConfig, workdir: str | os.PathLike,
                       progress: bool = False) -> OneShotSearchResult:
    """Runs (or resumes) a one-shot search against the config's objective metric.

    Args:
        loaded: a config whose strategy is of the one-shot family.
        workdir: output folder (resumed when it holds this search's checkpoints).
        progress: show a progress bar.

    Returns:
        The OneShotSearchResult.
    """
    config = loaded.config
    strategy = entry(config.strategy.name, loaded.source)
    metric = config.objective.metric
    if not strategy.learns_arch:  # spos: a supernet trained for scoring its sub-networks
        summary = spos_run.run_spos(loaded, workdir, progress=progress)
        return OneShotSearchResult(check_derived_arch(loaded, workdir, summary, fix=SPOS_FIX))
    if strategy.supernet == "superkernel":
        run = loaded
        params = config.strategy.params
        # setup_from_config maps the metric to the cost too (single_path.effective_params);
        # writing it into the config keeps the search.json of earlier runs resumable
        if metric in METRIC_COST and metric != "latency_ms" and "cost" not in params:
            section = config.strategy.model_copy(update={"params": {
                **config.strategy.params, "cost": METRIC_COST[metric][0]}})
            run = dataclasses.replace(loaded,
                                      config=config.model_copy(update={"strategy": section}))
        summary = single_path_run.run_single_path(run, workdir, progress=progress)
    else:
        summary = run_paths_config(loaded, workdir, progress)
    return OneShotSearchResult(check_derived_arch(loaded, workdir, summary))


def check_derived_arch(loaded: LoadedConfig, workdir: str | os.PathLike,
                       summary: Mapping[str, Any], fix: str = LEARNED_ARCH_FIX) -> dict[str, Any]:
    """Checks a one-shot search's derived Arch against ``objective.limits``.

    Within all limits, the summary gains ``limits``, ``limit_costs`` and ``meets_limits: true``.
    Over one, it also gets ``limit_violations`` ([{metric, value, limit}]), ``best_arch: None``
    and ``over_limits_arch`` (best_arch.json is moved there), and one warning line names the
    broken limits. summary.json is rewritten either way; without limits nothing changes.

    Args:
        loaded: the config.
        workdir: the search's workdir (holding best_arch.json and summary.json).
        summary: the search's summary (``strategy``, ``arch``, ``arch_id``, ``best_arch``).
        fix: what the warning tells the user to do when the Arch breaks a limit.

    Returns:
        The summary, with the fields above.
    """
    limits = dict(loaded.config.objective.limits)
    if not limits:
        return dict(summary)
    space = resolve_space(loaded.config.space, loaded.source)
    costs = cost_function(space, loaded.latency_table)(summary["arch"])
    broken = violations(costs, limits)
    wd = Path(workdir).resolve()
    out = {**summary, "limits": limits, "limit_costs": {m: costs[m] for m in limits},
           "meets_limits": not broken, "limit_violations": [v.to_dict() for v in broken]}
    with lock_workdir(wd):  # re-entrant: a caller holding the workdir keeps it
        moved = wd / OVER_LIMITS_FILE
        if broken:
            if (wd / BEST_ARCH_FILE).exists():
                write_atomic(moved, (wd / BEST_ARCH_FILE).read_bytes())
                (wd / BEST_ARCH_FILE).unlink()
            out.update(best_arch=None, over_limits_arch=str(moved))
            sys.stderr.write(f"nas: warning: {summary['strategy']}: the derived Arch "
                             f"{summary['arch_id']} breaks objective.limits: "
                             f"{violations_text(broken)}; not written to {BEST_ARCH_FILE} (kept as "
                             f"{moved}); {fix}\n")
        else:
            moved.unlink(missing_ok=True)
        write_summary(wd, out)
    return out


def run_paths_config(loaded: LoadedConfig, workdir: str | os.PathLike,
                     progress: bool = False) -> dict[str, Any]:
    """Runs (or resumes) a 'paths' one-shot search (fbnet, proxyless) of a config.

    Args:
        loaded: the config.
        workdir: output folder.
        progress: show a progress bar.

    Returns:
        The summary (also written to summary.json).
    """
    config = loaded.config
    name, metric = config.strategy.name, config.objective.metric
    space = resolve_space(config.space, loaded.source)
    params = entry(name, loaded.source).parse_params(config.strategy.params, loaded.source)
    if progress:
        params = params.model_copy(update={"progress": True})
    table = objective_table(space, metric, loaded.latency_table)
    latency = table if metric == "latency_ms" else (
        LatencyTable.load(loaded.latency_table, space) if loaded.latency_table else None)
    data = load_data(config.data, space, seed=config.seed)
    wd = Path(workdir).resolve()
    with claim_workdir(wd, config):  # flock + search.json, held for the search
        result = run_oneshot(space, data, name, params, table, wd, config.seed,
                             cost_metric=metric, latency=latency,
                             bounds=arch_bounds(loaded, space, table))
        cost = result["predicted_cost"]
        target = config.objective.target
        summary = {k: v for k, v in result.items() if k != "history"}
        summary.update({
            "workdir": str(wd), "target": target,
            "meets_target": None if target is None or cost is None else cost <= target,
            "target_ms": target if metric == "latency_ms" else None,
            "search_seconds": round(result["search_seconds"], 2),
            "best_arch": str(wd / BEST_ARCH_FILE)})
        write_summary(wd, summary)
    return summary


def arch_bounds(loaded: LoadedConfig, space: Any,
                table: Any) -> Callable[[Mapping[str, Any]], float] | None:
    """Returns ``excess(arch)`` over the config's ``objective.target`` and ``objective.limits``.

    Args:
        loaded: the config.
        space: its Space.
        table: the objective metric's table (what the target is measured by), or None.

    Returns:
        A function that is 0 for an Arch within the target (of ``objective.metric``, when a
        table predicts it) and every limit, else the summed relative excess
        (:func:`nas.supernet.derive_within.relative_excess`); None when nothing bounds the Arch.
    """
    target, limits = loaded.config.objective.target, dict(loaded.config.objective.limits)
    if target is not None and table is None:
        target = None
    if target is None and not limits:
        return None
    costs = cost_function(space, loaded.latency_table) if limits else None

    def excess(arch: Mapping[str, Any]) -> float:
        total = 0.0
        if target is not None:
            total += relative_excess({"target": table.predict(arch)}, {"target": target})
        if costs is not None:
            total += relative_excess(costs(arch), limits)
        return total

    return excess


def print_summary(summary: Mapping[str, Any]) -> None:
    """Prints a one-shot search summary for people (any one-shot strategy)."""
    lat = summary.get("predicted_latency_ms")
    text = "" if lat is None else f", predicted latency {lat:.4f} ms"
    if summary.get("target_ms") is not None:
        text += f" (target {summary['target_ms']} ms: {'met' if summary['meets_target'] else 'NOT met'})"
    cost, metric = summary.get("predicted_cost"), summary.get("cost_metric")
    if cost is not None and metric not in (None, "latency_ms"):
        text += f", {metric} {cost:.4g}"
    accuracy = summary.get("val_accuracy")
    if accuracy is not None:
        text += f"; supernet val accuracy {accuracy:.4f}"
    print(f"{summary['strategy']}: derived Arch {summary['arch_id']}{text}; search "
          f"{summary['search_seconds']:.1f} s; workdir {summary['workdir']}")
    child = summary.get("child")
    extra = f"  (its weights, cut from the superkernel: {child})" if child else ""
    if summary.get("meets_limits") is False:
        print(f"  over objective.limits ({violations_text(summary['limit_violations'])}): no best "
              f"Arch; the derived one is in {summary['over_limits_arch']}")
        return
    if summary.get("meets_limits"):
        extra += "  (within objective.limits)"
    derivation = summary.get("derivation")
    if derivation and derivation["changed"]:
        state = "within" if derivation["feasible"] else "still over (the closest found)"
        print(f"  the most probable Arch {derivation['argmax_arch_id']} was over the target/"
              f"limits; {len(derivation['changed'])} label(s) changed to be {state} them "
              f"(log-probability -{derivation['log_prob_drop']:.3f}; strategy.params.derive: "
              "argmax keeps the most probable)")
    print(f"  best Arch: {summary['best_arch']}{extra}")
    scoring = summary.get("scoring")  # spos: a supernet made for scoring candidates
    if scoring:
        print(f"  score candidates on it: evaluation: {{mode: {scoring['mode']}, "
              f"supernet: {scoring['supernet']}}}")
