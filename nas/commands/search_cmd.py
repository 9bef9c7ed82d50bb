"""``nas search CONFIG --workdir W``: run or resume an architecture search."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``search`` command.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser(
        "search", help="run or resume an architecture search from a YAML config",
        description="Run the search a YAML config describes (strategy: random, evolution, rl). "
                    "Every evaluated candidate is appended to WORKDIR/history.jsonl; running the "
                    "same command again resumes without evaluating anything twice. The best "
                    "Arch is written to WORKDIR/best.json.",
        epilog="Example: nas search experiments/digits_rl.yaml --workdir runs/rl")
    p.add_argument("config", help="experiment config (YAML), e.g. experiments/digits_rl.yaml")
    p.add_argument("--workdir", required=True, help="output folder (resumed if it holds a search)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object as the last line (no progress bar)")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="train candidates on an existing Ray cluster (sets executor.kind: ray)")
    p.add_argument("--budget", type=int, help="override the config's candidate budget")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from nas.config import load_config
    from nas.errors import NasInputError
    from nas.search import run_search

    loaded = load_config(args.config)
    config = loaded.config
    if config.strategy.name == "single_path":  # Single-Path NAS: one superkernel, own loop
        from nas.strategies.single_path import print_summary, run_single_path
        summary = run_single_path(loaded, args.workdir, progress=not args.json)
        print(json.dumps(summary, default=str)) if args.json else print_summary(summary)
        return 0
    from nas.strategies import ONE_SHOT_PARAMS
    if config.strategy.name in ONE_SHOT_PARAMS:  # fbnet / proxyless: train a supernet, derive
        from nas.strategies.oneshot_loop import print_oneshot_summary, run_oneshot_search
        summary = run_oneshot_search(loaded, args.workdir, progress=not args.json)
        if args.json:
            print(json.dumps(summary))
        else:
            print_oneshot_summary(summary)
        return 0
    if args.ray_address:
        config.executor.kind = "ray"
        config.executor.address = args.ray_address
    if args.budget is not None:
        if args.budget < 1:
            raise NasInputError(f"{args.budget} is not allowed; expected an integer >= 1",
                                field="--budget")
        config.budget = args.budget
    result = run_search(loaded, args.workdir, progress=not args.json)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
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
    if summary["best"] is not None:
        print(f"  best Arch: {summary['workdir']}/best.json")
