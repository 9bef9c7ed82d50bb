"""Benchmark: RL and regularized evolution vs random search at the same candidate budget.

For each seed and strategy, runs ``nas.search.run_search`` on the tiny space and digits (real
trainer, short epochs) and reports the best validation accuracy among candidates that meet the
target T (and that candidate's test accuracy), mean and std over seeds. Candidates are trained
deterministically from (Arch, seed), so a memo in the driver shares results between strategies
that propose the same Arch under the same seed (random and evolution start from the same random
draws); every strategy still sees exactly the results it would get by training. ``--workers 2``
trains on Ray (two trials at a time); ``--workdir`` keeps the searches, and rerunning with the
same folder resumes them (the memo is refilled from their history.jsonl).

Run (the issue's setting: T = 0.05 ms on the ORT tiny table):
    python experiments/bench/strategy_comparison.py --budget 24 --epochs 2 --seeds 0,1,2 \
        --metric latency_ms --table latency_tables/onnxruntime-cpu/tiny.json --target 0.05

Without ``--target``, T is ``--target-quantile`` of the metric over 500 random Archs.
The strategies' settings are those of experiments/digits_{rl,evolution}.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("PJRT_NPROC", "1")


STRATEGY_PARAMS = {"rl": {"lr": 0.02, "entropy_weight": 0.1, "hidden": 64},
                   "evolution": {"population": 8, "sample_size": 3}}  # as in experiments/digits_*.yaml


class MemoExecutor:
    """Trains each (Arch, seed) once: results come from a memo (filled from earlier strategies'
    history.jsonl of the same seed) or from the wrapped executor, which trains only the rest.
    Results are deterministic per (Arch, seed), so every strategy still sees what training gives.
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
                self.memo[keys[i]] = outcome.value
        self.trained += len(todo)
        by_index = dict(zip(todo, fresh))
        out = [by_index.get(i) or Outcome("ok", self.memo[k], seconds=0.0) for i, k in enumerate(keys)]
        if on_result is not None:
            for i, outcome in enumerate(out):
                on_result(i, outcome)
        return out

    def close(self) -> None:
        """The wrapped executor is closed by main()."""


def memo_from_history(root: str, seed: int) -> dict:
    """Returns {arch_id: result} of the ok records of every search with this seed under root."""
    memo = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "history.jsonl")
        if not name.endswith(f"_{seed}") or not os.path.exists(path):
            continue
        for line in open(path):
            r = json.loads(line)
            if r["status"] == "ok":
                memo[r["arch_id"]] = {"accuracy": r["accuracy"], "val_accuracy": r["val_accuracy"],
                                      "test_accuracy": r["test_accuracy"], "latency_ms": r["latency_ms"],
                                      **r.get("cost", {})}
    return memo


def main() -> None:
    """Runs every (seed, strategy) search and prints the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--population", type=int, default=8, help="evolution's population")
    parser.add_argument("--workers", type=int, default=1, help="> 1: Ray executor with this many workers")
    parser.add_argument("--workdir", default=None, help="root folder (reusing one resumes the searches)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default="random,evolution,rl")
    parser.add_argument("--metric", default="macs", help="cost metric (latency_ms needs --table)")
    parser.add_argument("--table", default=None, help="latency table for metric latency_ms")
    parser.add_argument("--target", type=float, default=None, help="T (absolute, metric units)")
    parser.add_argument("--target-quantile", type=float, default=0.4,
                        help="without --target: T = this quantile of the metric over 500 random Archs")
    args = parser.parse_args()

    import numpy as np

    from nas.runs.config import parse_config
    from nas.training.evaluate import CandidateEvaluator
    from nas.executor import LocalExecutor, RayExecutor
    from nas.search import best_records, run_search
    from nas.space import Space

    space = Space.by_name("tiny")
    base = CandidateEvaluator.for_space(space, seed=0, latency_table=args.table)
    costs = [base.costs(space.sample(10_000 + i))[args.metric] for i in range(500)]
    target = args.target if args.target is not None else float(np.quantile(costs, args.target_quantile))
    share = float(np.mean(np.asarray(costs) <= target))
    print(f"strategy_comparison: tiny space, digits, budget {args.budget}, {args.epochs} epoch(s), "
          f"T = {target:.6g} {args.metric} ({share:.0%} of 500 random Archs meet it)", flush=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="nas-compare-")
    os.makedirs(root, exist_ok=True)
    inner = RayExecutor(workers=args.workers, retries=1) if args.workers > 1 else LocalExecutor()
    print(f"  workdir {root}; executor {type(inner).__name__} with {args.workers} worker(s)", flush=True)
    params = {**STRATEGY_PARAMS, "evolution": {**STRATEGY_PARAMS["evolution"], "population": args.population}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        memo = memo_from_history(root, seed)
        for name in args.strategies.split(","):
            loaded = parse_config({
                "space": "tiny", "seed": seed, "budget": args.budget, "batch": args.batch,
                "strategy": {"name": name, "params": params.get(name, {})},
                "objective": {"metric": args.metric, "target": target, "constraint": "soft"},
                "latency_table": args.table, "train": {"epochs": args.epochs}})
            evaluator = CandidateEvaluator.for_space(space, data="digits", seed=seed,
                                                     train={"epochs": args.epochs},
                                                     latency_table=loaded.latency_table)
            executor = MemoExecutor(space, inner, memo)
            start = time.perf_counter()
            result = run_search(loaded, os.path.join(root, f"{name}_{seed}"), evaluate=evaluator,
                                executor=executor)
            first = sorted(result.records, key=lambda r: r["n"])[:args.budget]  # a larger earlier run
            feasible = best_records(first, loaded.config.objective.build())[1]
            val = feasible["accuracy"] if feasible else 0.0
            test = feasible["test_accuracy"] if feasible else 0.0
            n_ok = sum(r["status"] == "ok" for r in first)
            rows.setdefault(name, []).append((val, test))
            print(f"  seed {seed} {name:<9} best val acc under T {val:.4f} (test {test:.4f}); "
                  f"{n_ok} ok, {executor.trained} trained now, {time.perf_counter() - start:.0f} s", flush=True)
    print("  strategy   best val acc under T, mean +- std over seeds   its test acc, mean +- std")
    summary = {}
    for name, vals in rows.items():
        v = [a for a, _ in vals]
        t = [b for _, b in vals]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        td = statistics.stdev(t) if len(t) > 1 else 0.0
        print(f"  {name:<9}  {statistics.mean(v):.4f} +- {sd:.4f}{'':<24}{statistics.mean(t):.4f} +- {td:.4f}")
        summary[name] = {"val_mean": statistics.mean(v), "val_std": sd, "test_mean": statistics.mean(t),
                         "test_std": td, "val_per_seed": v, "test_per_seed": t}
    inner.close()
    print(json.dumps({"budget": args.budget, "epochs": args.epochs, "target": target,
                      "metric": args.metric, "results": summary}))


if __name__ == "__main__":
    main()
