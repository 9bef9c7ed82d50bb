"""Benchmark: do the search strategies find better networks than random search? (issue 18, 4)

For every seed, on one space and data set, with one cost target T:

* **Sample-based** (random, evolution, rl; settings of experiments/digits_<name>.yaml): a search
  of ``--budget`` candidates, each trained from scratch ``--epochs`` epochs. Result of a seed =
  the test accuracy of its best *feasible* candidate (cost metric <= T), picked by validation
  accuracy. ``--budgets 20,60`` also reports the first 20 candidates of the same run: for all
  three that is exactly a run of 20 (none of them is told the budget: random draws from
  (seed, round), evolution and rl depend only on what they were told so far, and the search
  loop trains proposals in order), so no extra training.
* **One-shot** (fbnet, proxyless, single_path, spos): the supernet search (its yaml's epochs,
  or ``--oneshot-epochs``); spos = the uniform-sampling supernet, then a constrained evolution
  over its sub-networks (every member meets T; supernet validation accuracy; as ``nas
  specialize``). The derived Arch is trained from scratch exactly like a candidate; its result
  is its test accuracy if it meets T, else none. It is compared with an **equal-cost random
  search**: N = floor(W / c) (at least 1) candidates of the same seed's random search, where W =
  the one-shot search's wall seconds (supernet training incl. data loading, XLA compiles,
  per-epoch scoring and checkpoints, + derive) and c = the mean wall seconds of one of the
  random search's first ``--budget`` candidates (training incl. its own XLA compile +
  evaluation; no persistent compile cache on either side, so compile time counts on both;
  both run on one core: the driver and every Ray trial are single-threaded). The random search
  is extended to N candidates when N > budget.

Reward: the sample-based searches maximize MnasNet's soft reward (alpha = beta = -0.07, as in
the digits yamls), under which a candidate at 2 T loses only ~5% of its reward; evolution and
rl may then spend their budget over T, where nothing counts here. ``evolution:hard`` /
``rl:hard`` run them on the hard-constraint reward (alpha = 0, beta = -1: no bonus under T, the
reward falls in proportion over it) - the reward that matches what this benchmark measures.
random's proposals do not depend on the reward, so one random search serves both.

Per strategy (and budget): mean +- std over seeds of the result, seeds with a feasible result,
and the fraction of seeds in which it beats random (strictly greater test accuracy; ties
counted apart; no feasible result loses): against random at the same budget, and for one-shot
strategies against the equal-cost random search's best.

Candidates are deterministic per (Arch, seed): a memo shares trainings between the searches of
a seed (runs/*_<seed>/history.jsonl). Results go to ``--workdir``/results.jsonl, one row per
(strategy, seed, budget); rerunning with the same --workdir resumes (finished rows are kept,
searches replay their history, a finished one-shot search is read from its
comparison_oneshot.json; one interrupted mid-way is restarted so its time is one whole run). A
workdir refuses other settings (space, data, epochs, metric, T, ...). The markdown tables go to
stdout and ``--out`` (default WORKDIR/comparison.md), everything as JSON next to it (.json).

Full run (2 CPU cores, two Ray trials at a time; candidates trained 3 epochs as in the digits
yamls; several hours per data set, see below), digits then a Fashion-MNIST subset
(``python experiments/data/mnist_subset.py DIR --train 3000 --test 1000 --out fashion3k.npz``):
    python experiments/bench/strategy_comparison.py --data digits --space tiny \
        --strategies random,evolution,rl,fbnet,proxyless,single_path,spos \
        --seeds 0,1,2,3,4 --budget 60 --budgets 20,60 --epochs 3 --workers 2 \
        --workdir runs/compare_digits
    python experiments/bench/strategy_comparison.py --data npz:fashion3k.npz --space tiny \
        --strategies random,evolution,rl,fbnet,proxyless,single_path,spos \
        --seeds 0,1,2,3,4 --budget 60 --budgets 20,60 --epochs 3 --workers 2 \
        --workdir runs/compare_fashion
Cost: about 170 distinct candidates per seed (random 60, evolution and rl ~55 new each; the
memo answers the rest) at c seconds each, halved by the two workers, plus the one-shot searches
on one core (supernet epochs of the yamls: fbnet 16, proxyless 16, single_path 10, spos 40 +
its evolution over ~500 sub-networks; ~20-30 minutes per seed on digits). The smoke measured c
~28 s at 1 epoch on digits, mostly XLA compile, on a busy machine.

Smoke (correctness only: tiny, 1 epoch, 1 seed, short supernets; ~6 minutes on a busy machine):
    python experiments/bench/strategy_comparison.py --budget 4 --epochs 1 --seeds 0 \
        --strategies random,evolution,fbnet,spos --oneshot-epochs 2 --spos-evolution 8,2 \
        --workdir /tmp/compare_smoke

Default metric latency_ms on latency_tables/onnxruntime-cpu/<space>.json (the one-shot
settings in the yamls are tuned for it); T =
``--target`` or the ``--target-quantile`` of the metric over 500 random Archs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nas.single_thread import single_thread_env  # noqa: E402  (imports no JAX)

os.environ.update(single_thread_env())  # before JAX starts: the driver runs on one thread

import strategy_stats as stats  # noqa: E402
from strategy_runs import (ONESHOT, PATHS, ROOT, SAMPLE, Bench, best_feasible,  # noqa: E402
                           check_strategy_names, memo_from_history, run_oneshot, run_sample,
                           split_variant, strategy_settings, train_derived)

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "settings.json"


def parse_args(argv=None) -> argparse.Namespace:
    """Returns the command line's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits, npz:PATH (MNIST-format), mnist:DIR...")
    p.add_argument("--space", default="tiny", help="a shipped space name or a YAML path")
    p.add_argument("--strategies", default="random,evolution,rl,fbnet,proxyless,single_path,spos",
                   help="comma-separated; evolution:hard / rl:hard search the hard-constraint reward")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--budget", type=int, default=60, help="candidates per sample-based search")
    p.add_argument("--budgets", default=None,
                   help="budgets reported from the same runs, e.g. 20,60 (each <= --budget)")
    p.add_argument("--epochs", type=int, default=3,
                   help="from-scratch epochs of every candidate (digits yamls: 3)")
    p.add_argument("--batch", type=int, default=4, help="candidates proposed per round")
    p.add_argument("--population", type=int, default=8, help="evolution's population")
    p.add_argument("--oneshot-epochs", type=int, default=None,
                   help="supernet epochs of every one-shot strategy (default: its yaml's)")
    p.add_argument("--spos-evolution", default="32,20",
                   help="population,generations of spos's search over sub-networks")
    p.add_argument("--rederive", action="store_true",
                   help="re-read the Arch of fbnet / proxyless searches finished under the old "
                        "argmax rule with today's (within T; nothing retrained) and redo their rows")
    p.add_argument("--workers", type=int, default=1, help="> 1: Ray executor with this many workers")
    p.add_argument("--workdir", default=None, help="results and searches (reuse to resume)")
    p.add_argument("--out", default=None, help="markdown report (default WORKDIR/comparison.md)")
    p.add_argument("--metric", default="latency_ms", help="cost metric of the target T")
    p.add_argument("--table", default=None,
                   help="latency table (default latency_tables/onnxruntime-cpu/<space>.json)")
    p.add_argument("--target", type=float, default=None, help="T (absolute, metric units)")
    p.add_argument("--target-quantile", type=float, default=0.4,
                   help="without --target: T = this quantile of the metric over 500 random Archs")
    return p.parse_args(argv)


def int_list(text: str, flag: str) -> list[int]:
    """Returns the comma-separated integers of a flag.

    Raises:
        NasInputError: not a list of integers >= 0.
    """
    from nas.errors import NasInputError

    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise NasInputError(f"{text!r} is not allowed; give comma-separated integers >= 0, "
                            "e.g. 0,1,2", field=flag)
    return values


def check_options(args: argparse.Namespace) -> dict:
    """Checks the options; returns {strategies, seeds, budgets, spos_evolution}.

    Raises:
        NasInputError: the first bad option (one line naming it).
    """
    from nas.errors import NasInputError

    names = check_strategy_names(args.strategies)
    if args.budget < 1 or args.epochs < 1 or args.batch < 1:
        raise NasInputError("--budget, --epochs and --batch must be >= 1", field="--budget")
    budgets = int_list(args.budgets, "--budgets") if args.budgets else [args.budget]
    if max(budgets) > args.budget or min(budgets) < 1:
        raise NasInputError(f"{args.budgets!r} is not allowed; every budget must be 1..--budget "
                            f"({args.budget})", field="--budgets")
    evolution = int_list(args.spos_evolution, "--spos-evolution")
    if len(evolution) != 2 or evolution[0] < 2:
        raise NasInputError(f"{args.spos_evolution!r} is not allowed; give population,"
                            "generations (population >= 2), e.g. 32,20", field="--spos-evolution")
    order = ["random"] + [s for s in dict.fromkeys(names) if s != "random"]  # random: the baseline
    return {"strategies": order, "seeds": int_list(args.seeds, "--seeds"),
            "budgets": sorted(set(budgets)), "spos_evolution": tuple(evolution)}


def make_bench(args: argparse.Namespace, options: dict, root: Path, log) -> Bench:
    """Resolves space, data, table and T, checks the workdir's settings, starts the executor.

    Raises:
        NasInputError: unknown space, unreadable data, no table for latency_ms, or a workdir
            holding results of other settings.
    """
    import numpy as np

    from nas.data import load_data
    from nas.ray_data import absolute_spec
    from nas.errors import NasInputError
    from nas.executor import LocalExecutor, RayExecutor
    from nas.space import resolve_space
    from nas.training.evaluate import cost_function

    space = resolve_space(args.space)
    space_arg = str(Path(args.space).resolve()) if args.space.endswith((".yaml", ".yml")) \
        else args.space
    table = args.table
    if table is None and args.metric == "latency_ms":
        default = ROOT / "latency_tables" / "onnxruntime-cpu" / f"{space.name}.json"
        if not default.exists():
            raise NasInputError(f"no shipped onnxruntime table for space {space.name!r}; give "
                                "--table PATH or another --metric (e.g. macs)", field="--table")
        table = str(default)
    table = str(Path(table).resolve()) if table else None
    spec = absolute_spec(args.data)  # the same files from any folder (split options kept)
    data = load_data(spec, space, seed=0)  # one clear line for bad data, before any search
    log(f"data {spec}: {len(data.x_train)} train / {len(data.x_val)} val / "
        f"{0 if data.x_test is None else len(data.x_test)} test images (seed 0 split)")
    costs_of = cost_function(space, table)
    costs = [costs_of(space.sample(10_000 + i))[args.metric] for i in range(500)]
    target = args.target if args.target is not None else \
        float(np.quantile(costs, args.target_quantile))
    settings = {name: strategy_settings(name, args.metric, target, args.population,
                                        args.oneshot_epochs) for name in options["strategies"]}
    record = {"space": space_arg, "data": spec, "epochs": args.epochs, "batch": args.batch,
              "metric": args.metric, "table": table, "target": target,
              "spos_evolution": list(options["spos_evolution"]),
              "settings": {k: list(v) for k, v in settings.items()}}
    check_settings(root, record)
    inner = RayExecutor(workers=args.workers, retries=1, compile_cache=None) \
        if args.workers > 1 else LocalExecutor()
    share = float(np.mean(np.asarray(costs) <= target))
    log(f"space {space.name}, T = {target:.6g} {args.metric} ({share:.0%} of 500 random Archs "
        f"meet it), candidates {args.epochs} epoch(s), {type(inner).__name__} with "
        f"{args.workers} worker(s), workdir {root}")
    return Bench(space_arg, space, spec, args.epochs, args.batch, args.metric, table, target,
                 settings, options["spos_evolution"], root / "runs", inner)


def check_settings(root: Path, record: dict) -> None:
    """Writes WORKDIR/settings.json, or checks that the workdir's results share its settings
    (each strategy's own settings may be added: a strategy not run before).

    Raises:
        NasInputError: a setting differs (names it).
    """
    from nas.errors import NasInputError

    path = root / SETTINGS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        mine = json.loads(json.dumps(record))
        for key, value in mine.items():
            if key == "settings":
                differ = [k for k, v in value.items() if k in old[key] and old[key][k] != v]
                if differ:
                    raise NasInputError(f"the workdir holds results with other {differ[0]} "
                                        "settings; use a new --workdir", str(path), "settings")
                old[key].update(value)
            elif old.get(key) != value:
                raise NasInputError(f"the workdir holds results with {key} {old.get(key)!r}, not "
                                    f"{value!r}; use a new --workdir or the same settings",
                                    str(path), key)
        record = old
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def load_rows(path: Path) -> dict[tuple, dict]:
    """Returns {(strategy, seed, budget): row} of results.jsonl (the last row of a key wins)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["strategy"], row["seed"], row["budget"])] = row
    return rows


def append_row(path: Path, rows: dict, row: dict) -> None:
    """Appends one result row to results.jsonl (and to `rows`)."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    rows[(row["strategy"], row["seed"], row["budget"])] = row


def sample_rows(bench: Bench, name: str, seed: int, records: list, budgets: list) -> list[dict]:
    """Returns the rows of one sample-based search: the best feasible candidate among its first
    N, for every budget N."""
    rows = []
    for n in budgets:
        first = stats.first_candidates(records, n)
        best = best_feasible(bench, first)
        rows.append({"strategy": name, "seed": seed, "budget": n, "family": "sample",
                     "val": best and best["accuracy"], "test": best and best["test_accuracy"],
                     "arch_id": best and best["arch_id"],
                     "cost": best and (best.get("cost") or {}).get(bench.metric, best.get(bench.metric)),
                     "candidates": len(first), "ok": sum(r["status"] == "ok" for r in first),
                     "candidate_seconds": stats.mean_candidate_seconds(first)})
    return rows


def oneshot_row(bench: Bench, name: str, seed: int, budget: int, memo: dict, log,
                rederive: bool = False) -> dict:
    """Runs (or reads) a one-shot search, trains its Arch from scratch and compares it with the
    equal-cost random search of the same seed; returns its row (``rederive``: fbnet / proxyless
    searches finished under the old argmax rule are re-derived, see
    :func:`strategy_runs.rederive`)."""
    from nas.training.evaluate import cost_function

    info = run_oneshot(bench, name, seed, log, rederive_paths=rederive)
    row = {"strategy": name, "seed": seed, "budget": budget, "family": "one_shot",
           "derive_rule": info.get("derive_rule", "argmax" if name in PATHS else None),
           "derived_arch_id": info["arch_id"], "oneshot_seconds": info["oneshot_seconds"],
           "supernet_seconds": info["supernet_seconds"], "derive_seconds": info["derive_seconds"],
           "derive": info.get("derive"), "val": None, "test": None, "meets_target": False}
    if info["arch"] is not None:
        costs = cost_function(bench.space, bench.table)(info["arch"])
        record = train_derived(bench, seed, info["arch"], memo)
        row.update(derived_cost=costs[bench.metric], meets_target=bench.objective().feasible(costs),
                   derived_val=record["val_accuracy"], derived_test=record["test_accuracy"],
                   derived_status=record["status"], derived_seconds=record["seconds"])
        if row["meets_target"] and record["status"] == "ok":
            row.update(val=record["val_accuracy"], test=record["test_accuracy"])
    random_run, _ = run_sample(bench, "random", seed, budget, memo)
    row["candidate_seconds"] = stats.mean_candidate_seconds(
        stats.first_candidates(random_run.records, budget))
    row["equal_cost_n"] = stats.equal_cost_count(row["oneshot_seconds"], row["candidate_seconds"])
    n = row["equal_cost_n"]
    random_run, trained = run_sample(bench, "random", seed, max(budget, n), memo)
    eq = best_feasible(bench, stats.first_candidates(random_run.records, n))
    row.update(eq_random_val=eq and eq["accuracy"], eq_random_test=eq and eq["test_accuracy"],
               eq_random_arch_id=eq and eq["arch_id"], eq_random_trained_now=trained)
    return row


def run_all(args: argparse.Namespace, options: dict, bench: Bench, rows: dict, path: Path, log):
    """Runs every missing (seed, strategy) and appends its rows."""
    budgets = options["budgets"]
    for seed in options["seeds"]:
        memo = memo_from_history(bench.runs, seed)
        for name in options["strategies"]:
            start = time.perf_counter()
            if split_variant(name)[0] in SAMPLE:
                if all((name, seed, b) in rows for b in budgets):
                    continue
                result, trained = run_sample(bench, name, seed, args.budget, memo)
                new = sample_rows(bench, name, seed, result.records, budgets)
                for row in new:
                    append_row(path, rows, row)
                last = new[-1]
                log(f"  seed {seed} {name:<11} best feasible @{last['budget']}: val "
                    f"{_f(last['val'])} test {_f(last['test'])}; {last['ok']} ok, {trained} "
                    f"trained now, {time.perf_counter() - start:.0f} s")
                continue
            done = rows.get((name, seed, args.budget))
            if done is not None and not (args.rederive and name in PATHS
                                         and done.get("derive_rule") != "within_target"):
                continue
            try:
                row = oneshot_row(bench, name, seed, args.budget, memo, log, args.rederive)
            except Exception as e:  # noqa: BLE001 - one failing search must not lose the others
                log(f"  seed {seed} {name}: FAILED ({type(e).__name__}: {e}); not recorded, a "
                    "rerun retries it")
                continue
            append_row(path, rows, row)
            log(f"  seed {seed} {name:<11} derived {row['derived_arch_id']} meets T "
                f"{row['meets_target']}: scratch val {_f(row.get('derived_val'))} test "
                f"{_f(row.get('derived_test'))}; one-shot {row['oneshot_seconds']:.0f} s = "
                f"{row['equal_cost_n']} candidates of {row['candidate_seconds']:.1f} s; "
                f"equal-cost random best test {_f(row['eq_random_test'])}; "
                f"{time.perf_counter() - start:.0f} s")


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def report(args: argparse.Namespace, options: dict, bench: Bench, rows: dict, out: Path) -> str:
    """Writes the markdown report to `out` and the JSON next to it; returns the markdown."""
    wanted = [r for (name, seed, _), r in sorted(rows.items(), key=lambda kv: str(kv[0]))
              if name in options["strategies"] and seed in options["seeds"]]
    oneshot = [s for s in options["strategies"] if s in ONESHOT]
    lines = stats.summarize(wanted, options["strategies"], options["budgets"], args.budget, oneshot)
    per_seed = sorted((r for r in wanted if r["strategy"] in oneshot and r["budget"] == args.budget),
                      key=lambda r: (r["strategy"], r["seed"]))
    head = (f"Strategy comparison: space {bench.space.name}, data {bench.data}, T = "
            f"{bench.target:.6g} {bench.metric}, candidates trained {bench.epochs} epoch(s), "
            f"seeds {options['seeds']}, budget {args.budget}\n\n")
    text = head + stats.markdown_tables(lines, per_seed) + "\n" + \
        "\n".join(f"- {line}" for line in stats.bar_lines(lines)) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"space": bench.space.name, "data": bench.data, "metric": bench.metric,
         "target": bench.target, "epochs": bench.epochs, "budget": args.budget,
         "budgets": options["budgets"], "seeds": options["seeds"], "summary": lines,
         "rows": wanted}, indent=1, default=str))
    return text


def main(argv=None) -> int:
    """Runs the benchmark; returns the exit status (2: bad input, one line on stderr)."""
    from nas.errors import NasInputError

    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"strategy_comparison: {line}", flush=True)

    bench = None
    try:
        options = check_options(args)
        root = Path(args.workdir or tempfile.mkdtemp(prefix="nas-compare-")).resolve()
        bench = make_bench(args, options, root, log)
        path = root / RESULTS_FILE
        rows = load_rows(path)
        run_all(args, options, bench, rows, path, log)
        out = Path(args.out).resolve() if args.out else root / "comparison.md"
        print(report(args, options, bench, rows, out), flush=True)
        log(f"report {out} (and {out.with_suffix('.json')})")
    except NasInputError as e:
        sys.stderr.write(f"strategy_comparison: error: {e.one_line()}\n")
        return 2
    finally:
        if bench is not None:
            bench.inner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
