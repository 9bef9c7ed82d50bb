"""Benchmark: wall time of training N digits candidates with 2 Ray workers vs 1.

Both runs train the same N Archs of the tiny space (real trainer, short epochs) as Ray Tune
trials in one Ray session with 2 CPUs; only ``max_concurrent_trials`` differs. Each trial is
pinned to a core of its own (every thread of its process), runs one XLA thread with
single-threaded compilation and one-thread BLAS pools (see nas/executor.py), so the 1-worker run
is one core and the 2-worker run is two. Each run gets a fresh, empty JAX compile cache (shared by
its own trials), so neither run profits from programs the other compiled. The 2-worker run goes
first, so OS file caches warmed by it favour the 1-worker run (the speedup is conservative).

Run (on a quiet machine; it takes several minutes):
    python experiments/bench/ray_scaling.py --candidates 40 --epochs 1

Prints per run: wall time, ok count, candidates/min, the cores the trials were pinned to, and the
median per-candidate train and trial times; then the speedup (target >= 1.7x) and the median
per-candidate time alone (1 worker) vs concurrent (2 workers). A last JSON line has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    """Runs the configurations and prints their wall times, the speedup and per-candidate times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default="2,1", help="worker counts to compare, in run order")
    parser.add_argument("--no-pin", action="store_true", help="do not pin trials to cores (to compare)")
    args = parser.parse_args()

    from nas.training.evaluate import CandidateEvaluator
    from nas.executor import RayExecutor, start_ray
    from nas.space import Space

    space = Space.by_name("tiny")
    archs, seen = [], set()
    rng_seed = args.seed
    while len(archs) < args.candidates:
        arch = space.sample(rng_seed)
        rng_seed += 1
        if space.arch_id(arch) not in seen:
            seen.add(space.arch_id(arch))
            archs.append(arch)
    evaluator = CandidateEvaluator.for_space(space, data="digits", seed=args.seed,
                                             train={"epochs": args.epochs, "batch_size": 64})
    start_ray(None, num_cpus=2)
    print(f"ray_scaling: {args.candidates} tiny-space candidates on digits, {args.epochs} epoch(s) "
          f"each, Ray with 2 CPUs, 1 XLA thread per trial, trials pinned to a core each: "
          f"{not args.no_pin}, fresh compile cache per run; load before: {os.getloadavg()[0]:.2f}",
          flush=True)
    runs = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        cache = tempfile.mkdtemp(prefix="nas-bench-jax-")
        executor = RayExecutor(workers=workers, cpus_per_trial=1, retries=1,
                               pin_cores=not args.no_pin, compile_cache=cache)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        outcomes = executor.map(evaluator, archs)
        wall = time.perf_counter() - start
        executor.close()
        shutil.rmtree(cache, ignore_errors=True)
        ok = [o for o in outcomes if o.status == "ok"]
        cores = sorted({c for o in ok for c in (o.cpus or ())})
        run = {"wall": wall, "ok": len(ok), "cores": cores,
               "train_median": _median([o.value["train_seconds"] for o in ok]),
               "trial_median": _median([o.seconds for o in ok]),
               "val_acc_mean": statistics.mean(o.value["val_accuracy"] for o in ok) if ok else 0.0}
        runs[workers] = run
        print(f"  workers={workers}: wall {wall:7.1f} s, {len(ok)}/{len(archs)} ok, "
              f"{60 * len(archs) / wall:5.1f} candidates/min, trials pinned to cores {cores or 'none'}, "
              f"median per candidate: train {run['train_median']:.2f} s, trial {run['trial_median']:.2f} s; "
              f"mean val acc {run['val_acc_mean']:.3f}, load {load:.2f} -> {os.getloadavg()[0]:.2f}",
              flush=True)
    if 1 in runs and 2 in runs:
        one, two = runs[1], runs[2]
        speedup = one["wall"] / two["wall"]
        print(f"  speedup 2 workers vs 1: {speedup:.2f}x (target >= 1.7x)")
        print(f"  median per-candidate train time alone (1 worker) {one['train_median']:.2f} s vs "
              f"concurrent (2 workers) {two['train_median']:.2f} s: "
              f"{two['train_median'] / one['train_median']:.2f}x; trial time "
              f"{one['trial_median']:.2f} s vs {two['trial_median']:.2f} s")
        print(json.dumps({"candidates": args.candidates, "epochs": args.epochs, "pinned": not args.no_pin,
                          "wall_1": round(one["wall"], 1), "wall_2": round(two["wall"], 1),
                          "speedup": round(speedup, 3), "ok_1": one["ok"], "ok_2": two["ok"],
                          "train_median_alone": round(one["train_median"], 2),
                          "train_median_concurrent": round(two["train_median"], 2),
                          "trial_median_alone": round(one["trial_median"], 2),
                          "trial_median_concurrent": round(two["trial_median"], 2)}))


if __name__ == "__main__":
    main()
