"""``nas search CONFIG --workdir W``: run or resume an architecture search."""

from __future__ import annotations

import argparse
import json

from nas.runs.workdir import add_resume_flag, locked_command


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``search`` command.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser(
        "search", help="run or resume an architecture search from a YAML config",
        description="Run the search a YAML config describes (strategy: random, evolution, rl, "
                    "nsga2, fbnet, proxyless, single_path or spos). Every strategy writes WORKDIR/"
                    "best_arch.json (the best Arch), WORKDIR/summary.json and WORKDIR/"
                    "history.jsonl (sample-based: one record per evaluated candidate; one-shot: "
                    "one per supernet epoch, with the Arch derived after it); running the same "
                    "command again resumes without evaluating anything twice.",
        epilog="Example: nas search experiments/digits_rl.yaml --workdir runs/rl")
    p.add_argument("config", help="experiment config (YAML), e.g. experiments/digits_rl.yaml")
    p.add_argument("--workdir", help="output folder (resumed if it holds a search); required "
                                     "unless --check")
    p.add_argument("--check", action="store_true",
                   help="only validate: the config, its space, latency table and data set; "
                        "writes nothing (exit 0: all good, 2: the first problem, one line)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object as the last line (no progress bar)")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="train candidates on an existing Ray cluster (sets executor.kind: ray)")
    p.add_argument("--budget", type=int, help="override the config's candidate budget")
    p.add_argument("--smoke", action="store_true",
                   help="apply the config's smoke: overrides (a run of minutes; see extends:/smoke: in README)")
    p.add_argument("--no-drift-check", action="store_true",
                   help="skip the quick check that the latency table still fits this machine")
    add_resume_flag(p)
    p.set_defaults(func=_search_validated)


def _search_validated(args: argparse.Namespace) -> int:
    """Validates the config (and applies the command-line overrides) before the workdir is
    locked, so a bad config or a bad flag creates nothing."""
    from nas.runs.config import apply_cli_overrides, check_inputs, load_config
    from nas.errors import NasInputError

    loaded = load_config(args.config, smoke=args.smoke)
    if args.check:
        summary = check_inputs(loaded)
        print(json.dumps(summary) if args.json else f"{args.config}: ok ({json.dumps(summary)})")
        return 0
    if not args.workdir:
        raise NasInputError("missing; give --workdir DIR (or --check to only validate)",
                            field="--workdir")
    apply_cli_overrides(loaded.config, args.ray_address, args.budget)
    check_inputs(loaded, data=False)  # a bad space or latency table: exit 2 before any work
    drift_check(loaded, args.no_drift_check)
    args.loaded = loaded
    return locked_command("nas search", _search)(args)


def drift_check(loaded, no_drift_check: bool) -> None:
    """Warns (one line on stderr) when the config's latency table no longer fits this machine.

    Args:
        loaded: the validated config.
        no_drift_check: the ``--no-drift-check`` flag.
    """
    if not loaded.latency_table:
        return
    # here, not at the top: `nas --help` imports no JAX
    from nas.latency.check import warn_if_drifted
    from nas.space import resolve_space

    warn_if_drifted(loaded.latency_table, resolve_space(loaded.config.space, loaded.source),
                    no_drift_check)


def _search(args: argparse.Namespace) -> int:
    """Runs the validated search of ``args.loaded`` (any strategy) and prints its summary."""
    from nas.search import run_search  # here, not at the top: `nas --help` imports no JAX
    from nas.strategies.oneshot_driver import print_summary as print_oneshot_summary

    summary = run_search(args.loaded, args.workdir, progress=not args.json).summary()
    if args.json:
        print(json.dumps(summary, default=str))
    elif summary.get("family") == "one_shot":
        print_oneshot_summary(summary)
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary["statuses"].items()))
    print(f"{summary['candidates']} candidates ({statuses}); {summary['new']} evaluated now; "
          f"workdir {summary['workdir']}")
    for title, rec in (("best reward", summary["best"]), ("best under target", summary["best_feasible"])):
        if rec is None:
            print(f"  {title}: none")
            continue
        lat = rec.get("latency_ms")
        lat_text = f", latency {lat:.3f} ms" if lat is not None else ""
        test = rec.get("test_accuracy")
        test_text = f", test {test:.4f}" if test is not None else ""
        print(f"  {title}: {rec['arch_id']} reward {rec['reward']:.4f}, val accuracy "
              f"{rec['accuracy']:.4f}{test_text}{lat_text}")
    devices_line = device_use_text(summary)
    if devices_line:
        print(f"  {devices_line}")
    if summary["best_arch"] is not None:
        print(f"  best Arch: {summary['best_arch']}")
    for line in limits_and_front_lines(summary):
        print(f"  {line}")


def limits_and_front_lines(summary: dict, max_front: int = 10) -> list[str]:
    """Returns the lines on ``objective.limits`` (rejected candidates, an early stop) and the
    Pareto front of a sample-based search summary.

    Args:
        summary: :meth:`nas.search.SearchResult.summary`.
        max_front: front members listed at most (the rest are in pareto.json).

    Returns:
        Lines without indentation, e.g. ``'rejected before training: 7 (over objective.limits:
        size_bytes 7)'``, ``'Pareto front (accuracy, size_bytes): 3 of 12 in .../pareto.json'``
        and one line per front member.
    """
    lines = []
    if summary.get("limits"):
        counts = ", ".join(f"{m} {n}" for m, n in (summary.get("rejected_by_limit") or {}).items())
        limits = ", ".join(f"{m} <= {v:g}" for m, v in summary["limits"].items())
        lines.append(f"rejected before training: {summary.get('rejected', 0)} (limits {limits}"
                     + (f"; broken: {counts}" if counts else "") + ")")
    if summary.get("stopped"):
        lines.append(f"stopped early: {summary['stopped']}")
    pareto = summary.get("pareto")
    if pareto:
        names = pareto["objectives"]
        lines.append(f"Pareto front ({', '.join(names)}): {len(pareto['front'])} of "
                     f"{pareto['compared']} trained candidates, in {pareto['file']}")
        for m in pareto["front"][:max_front]:
            values = ", ".join(f"{k} {m[k]:.4f}" if k == "accuracy" else f"{k} {m[k]:.6g}"
                               for k in names if m.get(k) is not None)
            lines.append(f"  {m['arch_id']}: {values}")
        if len(pareto["front"]) > max_front:
            lines.append(f"  ... {len(pareto['front']) - max_front} more in pareto.json")
    return lines


def device_use_text(summary: dict) -> str | None:
    """Returns the summary's line on what the candidates trained on, e.g. 'devices: 1 per
    candidate (cpu)' (several nodes: each one's count), or None when no candidate said.

    Args:
        summary: a sample-based search summary (:meth:`nas.search.SearchResult.summary`).
    """
    if summary.get("devices") is None:
        return None
    platforms = "/".join(summary.get("platforms") or []) or "unknown platform"
    text = f"devices: {summary['devices']} per candidate ({platforms})"
    by_node = summary.get("devices_by_node") or {}
    if len(by_node) > 1:
        text = (f"devices: up to {summary['devices']} per candidate ({platforms}; by node: "
                + ", ".join(f"{node} {n}" for node, n in sorted(by_node.items())) + ")")
    return text
