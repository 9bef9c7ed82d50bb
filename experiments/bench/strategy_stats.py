"""Pure arithmetic of experiments/bench/strategy_comparison.py (no JAX, no training).

* :func:`first_candidates`: the first N candidates of a search, in evaluation order (the
  smaller budgets of ``--budgets`` read off one longer run);
* :func:`mean_candidate_seconds` and :func:`equal_cost_count`: how many from-scratch candidates
  cost as much as a one-shot search (its supernet training + derive wall seconds divided by the
  mean wall seconds of one candidate, rounded down, at least 1);
* :func:`outcome` / :func:`tally`: per-seed win / tie / loss of a strategy against random;
* :func:`mean_std`, :func:`summarize` and :func:`markdown_tables`: the report.

A "result" throughout is the test accuracy of a seed's best feasible candidate (picked by
validation accuracy), or None when no candidate of that seed met the target.

Example:
    >>> equal_cost_count(300.0, 14.0)
    21
    >>> tally([(0.9, 0.8), (0.8, 0.8), (None, 0.7)])
    {'wins': 1, 'ties': 1, 'losses': 1, 'n': 3}
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

WIN, TIE, LOSS = "win", "tie", "loss"


def first_candidates(records: Iterable[Mapping[str, Any]], n: int) -> list[dict]:
    """Returns the first `n` candidate records of a search, in evaluation order (field ``n``).

    Args:
        records: the search's candidate records (any order).
        n: how many.

    Returns:
        Up to `n` records, lowest ``n`` first.
    """
    return [dict(r) for r in sorted(records, key=lambda r: int(r["n"]))[:max(0, int(n))]]


def mean_candidate_seconds(records: Iterable[Mapping[str, Any]]) -> float | None:
    """Returns the mean wall seconds of one candidate evaluation.

    Only ``ok`` records with positive ``seconds`` count (a record answered from a cache without
    a known training time has 0).

    Args:
        records: candidate records (``status``, ``seconds``).

    Returns:
        The mean, or None when no record counts.
    """
    seconds = [float(r["seconds"]) for r in records
               if r.get("status") == "ok" and (r.get("seconds") or 0.0) > 0.0]
    return statistics.mean(seconds) if seconds else None


def equal_cost_count(oneshot_seconds: float, candidate_seconds: float) -> int:
    """Returns how many candidates fit in a one-shot search's wall time.

    ``floor(oneshot_seconds / candidate_seconds)``, at least 1 (a random search of zero
    candidates has no result to compare with).

    Args:
        oneshot_seconds: wall seconds of the one-shot search (supernet training + derive).
        candidate_seconds: mean wall seconds of one candidate's training and evaluation.

    Returns:
        The candidate count.

    Raises:
        ValueError: a non-positive or non-finite time.
    """
    for name, value in (("oneshot_seconds", oneshot_seconds),
                        ("candidate_seconds", candidate_seconds)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return max(1, int(math.floor(oneshot_seconds / candidate_seconds + 1e-9)))


def outcome(mine: float | None, theirs: float | None) -> str:
    """Returns 'win' (strictly greater), 'tie' or 'loss' of one seed's result against another's.

    No feasible result (None) loses against any result and ties with None.
    """
    if mine is None or theirs is None:
        return TIE if mine is None and theirs is None else (LOSS if mine is None else WIN)
    if mine > theirs:
        return WIN
    return TIE if mine == theirs else LOSS


def tally(pairs: Iterable[tuple[float | None, float | None]]) -> dict[str, int]:
    """Counts wins, ties and losses over (mine, theirs) pairs, one per seed.

    Returns:
        {"wins", "ties", "losses", "n"}.
    """
    counts = {WIN: 0, TIE: 0, LOSS: 0}
    for mine, theirs in pairs:
        counts[outcome(mine, theirs)] += 1
    return {"wins": counts[WIN], "ties": counts[TIE], "losses": counts[LOSS],
            "n": sum(counts.values())}


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """Returns {"mean", "std" (sample std; 0 for one value), "k" (values that are not None),
    "n" (all)}; mean and std are None when every value is None."""
    values = list(values)
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"mean": None, "std": None, "k": 0, "n": len(values)}
    std = statistics.stdev(known) if len(known) > 1 else 0.0
    return {"mean": statistics.mean(known), "std": std, "k": len(known), "n": len(values)}


def _pick(rows: Sequence[Mapping[str, Any]], strategy: str, budget: Any) -> dict[int, dict]:
    return {int(r["seed"]): dict(r) for r in rows
            if r["strategy"] == strategy and r["budget"] == budget}


def summarize(rows: Sequence[Mapping[str, Any]], strategies: Sequence[str],
              budgets: Sequence[int], budget: int, oneshot: Sequence[str]) -> list[dict]:
    """Aggregates per-seed rows into one line per (strategy, budget).

    Args:
        rows: per-seed result rows: ``strategy``, ``seed``, ``budget``, ``test``, ``val`` and,
            for one-shot strategies, ``eq_random_test`` and ``equal_cost_n``.
        strategies: strategy names, in report order.
        budgets: the budgets of the sample-based strategies.
        budget: the main budget (what one-shot results are compared with).
        oneshot: which of `strategies` are one-shot (one row per seed, keyed by `budget`).

    Returns:
        Lines {"strategy", "budget", "seeds", "test", "val" (:func:`mean_std`), "vs_random"
        (:func:`tally` against random's rows of the same budget and seed, None for random) and,
        one-shot only, "vs_equal_cost" (against the best of the equal-cost random search of
        the same seed), "equal_cost_n" (mean_std of the counts)}.
    """
    lines = []
    for name in strategies:
        for b in ([budget] if name in oneshot else budgets):
            mine = _pick(rows, name, b)
            if not mine:
                continue
            seeds = sorted(mine)
            line = {"strategy": name, "budget": b, "oneshot": name in oneshot, "seeds": seeds,
                    "test": mean_std(mine[s].get("test") for s in seeds),
                    "val": mean_std(mine[s].get("val") for s in seeds), "vs_random": None}
            if name != "random":
                random = _pick(rows, "random", b)
                line["vs_random"] = tally((mine[s].get("test"), random[s].get("test"))
                                          for s in seeds if s in random)
            if name in oneshot:
                line["vs_equal_cost"] = tally((mine[s].get("test"), mine[s].get("eq_random_test"))
                                              for s in seeds if mine[s].get("equal_cost_n"))
                line["equal_cost_n"] = mean_std(mine[s].get("equal_cost_n") for s in seeds)
                line["eq_random_test"] = mean_std(mine[s].get("eq_random_test") for s in seeds
                                                  if mine[s].get("equal_cost_n"))
            lines.append(line)
    return lines


def bar_lines(lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Returns one line per non-random strategy and budget saying how it fares against the
    issue's bar: sample-based ones against random's mean and per seed at the same budget,
    one-shot ones against the best of the equal-cost random search of each seed.

    Args:
        lines: :func:`summarize`'s lines.
    """
    random = {ln["budget"]: ln for ln in lines if ln["strategy"] == "random"}
    out = []
    for ln in lines:
        if ln["strategy"] == "random":
            continue
        mine = ln["test"]["mean"]
        if ln["oneshot"]:
            t, theirs = ln["vs_equal_cost"], ln["eq_random_test"]["mean"]
            if mine is None or theirs is None:
                average = "no mean to compare (" + ("no seed gave it a feasible Arch" if mine is None
                                                    else "the equal-cost random searches found "
                                                         "no feasible candidate") + ")"
            else:
                average = ("at least matches" if mine >= theirs else "is BELOW") + \
                    f" it on average ({mine:.4f} vs {theirs:.4f}, {mine - theirs:+.4f})"
            out.append(f"{ln['strategy']} (one-shot) vs the best of an equal-cost random search: "
                       f"{average}; matches or beats it in {t['wins'] + t['ties']}/{t['n']} seeds "
                       f"({t['wins']} strictly)")
            continue
        base = random.get(ln["budget"], {}).get("test", {}).get("mean")
        t = ln["vs_random"]
        if mine is None or base is None:
            average = "no mean to compare (no feasible candidate in any seed)"
        else:
            average = ("at least matches" if mine >= base else "is BELOW") + \
                f" random on average ({mine:.4f} vs {base:.4f}, {mine - base:+.4f})"
        out.append(f"{ln['strategy']} @ {ln['budget']} candidates: {average}; beats random in "
                   f"{t['wins']}/{t['n']} seeds ({t['ties']} ties)")
    return out


def _acc(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.4f} +- {stats['std']:.4f}"


def _tally_text(t: Mapping[str, int] | None) -> str:
    if not t or not t["n"]:
        return "-"
    return f"{t['wins']}/{t['n']} (ties {t['ties']})"


def _num(x: Any, fmt: str = "{:.4f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return fmt.format(x) if isinstance(x, float) else str(x)


def markdown_tables(lines: Sequence[Mapping[str, Any]],
                    oneshot_rows: Sequence[Mapping[str, Any]]) -> str:
    """Returns the report: the per-strategy summary table, then one row per one-shot search.

    Args:
        lines: :func:`summarize`'s lines.
        oneshot_rows: the per-seed rows of the one-shot strategies (``derived_arch_id``,
            ``derived_cost``, ``meets_target``, ``derived_val``, ``derived_test``,
            ``oneshot_seconds``, ``candidate_seconds``, ``equal_cost_n``, ``eq_random_val``,
            ``eq_random_test``).
    """
    out = ["| strategy | budget | seeds | best feasible test acc (mean +- std) | its val acc | "
           "seeds with a feasible result | beats random (same budget) | beats equal-cost random "
           "| equal-cost N (mean) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        eq = ln.get("equal_cost_n")
        out.append(f"| {ln['strategy']} | {'one-shot' if ln['oneshot'] else ln['budget']} | "
                   f"{len(ln['seeds'])} | {_acc(ln['test'])} | {_acc(ln['val'])} | "
                   f"{ln['test']['k']}/{ln['test']['n']} | {_tally_text(ln['vs_random'])} | "
                   f"{_tally_text(ln.get('vs_equal_cost'))} | "
                   f"{_num(eq['mean'] if eq else None, '{:.1f}')} |")
    if oneshot_rows:
        out += ["", "| one-shot | seed | derived Arch | cost | meets T | from scratch val / test | "
                "supernet + derive s | one candidate s | equal-cost N | equal-cost random best "
                "val / test | vs equal-cost random |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in oneshot_rows:
            result = outcome(r.get("test"), r.get("eq_random_test")) if r.get("equal_cost_n") else "-"
            out.append(
                f"| {r['strategy']} | {r['seed']} | {r.get('derived_arch_id') or '-'} | "
                f"{_num(r.get('derived_cost'), '{:.4g}')} | {_num(r.get('meets_target'))} | "
                f"{_num(r.get('derived_val'))} / {_num(r.get('derived_test'))} | "
                f"{_num(r.get('oneshot_seconds'), '{:.1f}')} | "
                f"{_num(r.get('candidate_seconds'), '{:.2f}')} | {_num(r.get('equal_cost_n'))} | "
                f"{_num(r.get('eq_random_val'))} / {_num(r.get('eq_random_test'))} | {result} |")
    return "\n".join(out) + "\n"
