"""Benchmark: RL and regularized evolution vs random search at the same candidate budget.

For each seed and strategy, runs ``nas.search.run_search`` on the tiny space and digits (real
trainer, short epochs) and reports the best validation accuracy among candidates that meet the
target T (and that candidate's test accuracy), mean and std over seeds. Candidates are trained
deterministically from (Arch, seed), so an in-process memo shares results between strategies
that propose the same Arch under the same seed (random and evolution start from the same random
draws); every strategy still sees exactly the results it would get by training.

Run:
    python experiments/bench/strategy_comparison.py --budget 16 --epochs 1 --seeds 0,1,2 \
        --metric macs --target-quantile 0.4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


class MemoEvaluator:
    """Wraps an evaluator with a memo keyed by Arch id (results are deterministic per seed)."""

    def __init__(self, space, evaluator, memo):
        self.space, self.evaluator, self.memo = space, evaluator, memo
        self.trained = 0

    def __call__(self, arch, report=None):
        key = self.space.arch_id(arch)
        if key not in self.memo:
            self.memo[key] = self.evaluator(arch, report)
            self.trained += 1
        return self.memo[key]


def main() -> None:
    """Runs every (seed, strategy) search and prints the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default="random,evolution,rl")
    parser.add_argument("--metric", default="macs", help="cost metric (latency_ms needs --table)")
    parser.add_argument("--table", default=None, help="latency table for metric latency_ms")
    parser.add_argument("--target-quantile", type=float, default=0.4,
                        help="T = this quantile of the metric over 500 random Archs")
    args = parser.parse_args()

    import numpy as np

    from nas.config import parse_config
    from nas.evaluate import CandidateEvaluator
    from nas.search import run_search
    from nas.space import Space

    space = Space.by_name("tiny")
    base = CandidateEvaluator.for_space(space, seed=0, latency_table=args.table)
    costs = [base.costs(space.sample(10_000 + i))[args.metric] for i in range(500)]
    target = float(np.quantile(costs, args.target_quantile))
    print(f"strategy_comparison: tiny space, digits, budget {args.budget}, {args.epochs} epoch(s), "
          f"T = {target:.6g} {args.metric} (quantile {args.target_quantile} of random Archs)")
    rows: dict[str, list[tuple[float, float]]] = {}
    root = tempfile.mkdtemp(prefix="nas-compare-")
    for seed in [int(s) for s in args.seeds.split(",")]:
        memo: dict = {}
        for name in args.strategies.split(","):
            loaded = parse_config({
                "space": "tiny", "seed": seed, "budget": args.budget, "batch": args.batch,
                "strategy": {"name": name},
                "objective": {"metric": args.metric, "target": target, "constraint": "soft"},
                "latency_table": args.table, "train": {"epochs": args.epochs}})
            evaluator = MemoEvaluator(space, CandidateEvaluator.for_space(
                space, data="digits", seed=seed, train={"epochs": args.epochs},
                latency_table=loaded.latency_table), memo)
            start = time.perf_counter()
            result = run_search(loaded, os.path.join(root, f"{name}_{seed}"), evaluate=evaluator)
            feasible = result.best_feasible
            val = feasible["accuracy"] if feasible else 0.0
            test = feasible["test_accuracy"] if feasible else 0.0
            n_ok = sum(r["status"] == "ok" for r in result.records)
            rows.setdefault(name, []).append((val, test))
            print(f"  seed {seed} {name:<9} best val acc under T {val:.4f} (test {test:.4f}); "
                  f"{n_ok} ok, {evaluator.trained} trained now, {time.perf_counter() - start:.0f} s")
    print("  strategy   best val acc under T (mean +- std over seeds)   its test acc")
    summary = {}
    for name, vals in rows.items():
        v = [a for a, _ in vals]
        t = [b for _, b in vals]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"  {name:<9}  {statistics.mean(v):.4f} +- {sd:.4f}{'':<27}{statistics.mean(t):.4f}")
        summary[name] = {"val_mean": statistics.mean(v), "val_std": sd, "test_mean": statistics.mean(t)}
    print(json.dumps({"budget": args.budget, "epochs": args.epochs, "target": target,
                      "metric": args.metric, "results": summary}))


if __name__ == "__main__":
    main()
