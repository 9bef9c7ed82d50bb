"""Benchmark: wall time of training N digits candidates with 2 Ray workers vs 1.

Both runs train the same N Archs of the tiny space (real trainer, short epochs) as Ray Tune
trials in one Ray session with 2 CPUs, one XLA thread per trial; only ``max_concurrent_trials``
differs. The 2-worker run goes first, so OS file caches warmed by it favour the 1-worker run
(the reported speedup is conservative). The JAX persistent compile cache is not used by trials,
so both runs compile every candidate.

Run (on a quiet machine; it takes several minutes):
    python experiments/bench/ray_scaling.py --candidates 40 --epochs 1

Prints one line per run and the speedup ratio; the acceptance target is >= 1.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    """Runs the two configurations and prints their wall times and the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default="2,1", help="worker counts to compare, in run order")
    args = parser.parse_args()

    from nas.evaluate import CandidateEvaluator
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
          f"each, Ray with 2 CPUs, 1 XLA thread per trial; load before: {os.getloadavg()[0]:.2f}")
    walls = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        executor = RayExecutor(workers=workers, cpus_per_trial=1, retries=1)
        start = time.perf_counter()
        outcomes = executor.map(evaluator, archs)
        wall = time.perf_counter() - start
        executor.close()
        ok = [o for o in outcomes if o.status == "ok"]
        trains = [o.value["train_seconds"] for o in ok]
        walls[workers] = wall
        print(f"  workers={workers}: wall {wall:7.1f} s, {len(ok)}/{len(archs)} ok, "
              f"{60 * len(archs) / wall:5.1f} candidates/min, median train "
              f"{statistics.median(trains) if trains else float('nan'):.2f} s, "
              f"mean val acc {statistics.mean(o.value['val_accuracy'] for o in ok) if ok else 0:.3f}, "
              f"load {os.getloadavg()[0]:.2f}")
    if 1 in walls and 2 in walls:
        speedup = walls[1] / walls[2]
        print(f"  speedup 2 workers vs 1: {speedup:.2f}x (target >= 1.7x)")
        print(json.dumps({"candidates": args.candidates, "epochs": args.epochs,
                          "wall_1": round(walls[1], 1), "wall_2": round(walls[2], 1),
                          "speedup": round(speedup, 3)}))


if __name__ == "__main__":
    main()
