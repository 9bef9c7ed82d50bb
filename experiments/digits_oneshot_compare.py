"""Digits + tiny: do the one-shot searches' Archs meet T, and how do they compare with random ones?

For each one-shot work directory (``nas search experiments/digits_fbnet.yaml --workdir W``...):
the derived Arch (best_arch.json) is measured end to end on the table's backend (as
``nas latency validate`` does) and trained from scratch with `--seeds` seeds (mean reported);
then `--random` random Archs whose predicted latency meets T are trained the same way (one
seed each; the best is picked by validation accuracy). Prints and writes (``--out``) the table.
`--reuse-random FILE` takes the random rows (and found Archs already trained with the same
seeds) from an earlier output with the same target, epochs and seed instead of training them
again (the random rows do not depend on the searches).

    python experiments/digits_oneshot_compare.py runs/digits_fbnet runs/digits_proxyless \
        --target 0.05 --random 20 --epochs 10 --seeds 3 --out runs/oneshot_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from nas.archfile import load_arch
from nas.data import load_data
from nas.latency.build import WorkerMeasurer, network_item
from nas.latency.measure import TimingConfig
from nas.latency.precision import effective_spec
from nas.latency.table import LatencyTable
from nas.training.trainer import TrainConfig, train_arch


def measure_ms(table: LatencyTable, archs: dict) -> dict:
    """Returns {id: measured end-to-end median ms} on the table's backend, batch and threads."""
    prov = table.data["provenance"]
    known = set(TimingConfig.__dataclass_fields__)
    timing = TimingConfig(**{k: v for k, v in prov.get("timing", {}).items() if k in known})
    measurer = WorkerMeasurer(table.backend, prov["batch"], prov["threads"], None, timing)
    items = [network_item(i, [effective_spec(s, table.rule) for s in table.space.block_specs(a)])
             for i, a in archs.items()]
    return {r["id"]: r["median_ms"] for r in measurer.measure(items) if r["type"] == "result"}


def _earlier_found(a) -> dict:
    """Returns {arch_id: row} of found Archs trained with the same protocol in `--reuse-random`."""
    if not a.reuse_random:
        return {}
    with open(a.reuse_random) as f:
        old = json.load(f)
    return {r["arch_id"]: r for r in old["found"]
            if len(r.get("runs", [])) == a.seeds and old["epochs"] == a.epochs}


def _reused_random(a) -> dict:
    """Returns {arch_id: row} of random Archs already trained in `--reuse-random` (same target,
    epochs and seed); the random Archs it lacks are trained by this run."""
    if not a.reuse_random:
        return {}
    with open(a.reuse_random) as f:
        old = json.load(f)
    if (old["target_ms"], old["epochs"], old.get("seed", 0)) != (a.target, a.epochs, a.seed):
        raise SystemExit(f"{a.reuse_random}: target/epochs/seed differ from this run")
    rows = old.get("rows", old.get("random_rows", []))
    return {r["arch_id"]: r for r in rows if r["who"].startswith("random")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--table", default="latency_tables/onnxruntime-cpu/tiny.json")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="training seeds of each found Arch")
    ap.add_argument("--train-seeds", default=None,
                    help="comma-separated training seeds of the found Archs (default: --seeds "
                         "seeds from --seed); the data split always uses --seed")
    ap.add_argument("--reuse-random", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    table = LatencyTable.load(a.table)
    space = table.space
    data = load_data("digits", space, seed=a.seed)
    config = TrainConfig(epochs=a.epochs, seed=a.seed)
    rows = []
    found = {}
    for wd in a.workdirs:
        af = load_arch(f"{wd}/best_arch.json")
        found[wd] = (af.arch, af.meta)
    measured = measure_ms(table, {wd: arch for wd, (arch, _) in found.items()})
    earlier = _earlier_found(a)
    for wd, (arch, meta) in found.items():
        if space.arch_id(arch) in earlier:
            rows.append(dict(earlier[space.arch_id(arch)], measured_ms=measured.get(wd)))
            print(json.dumps(rows[-1]), flush=True)
            continue
        runs = []
        seeds = ([int(s) for s in a.train_seeds.split(",")] if a.train_seeds
                 else range(a.seed, a.seed + a.seeds))
        for s in seeds:
            t = time.time()
            r = train_arch(space, arch, data, TrainConfig(epochs=a.epochs, seed=s))
            runs.append({"seed": s, "val": r["val_accuracy"], "test": r["test_accuracy"],
                         "train_s": time.time() - t})
        rows.append({"who": meta.get("strategy", wd), "arch_id": space.arch_id(arch),
                     "predicted_ms": table.predict(arch), "measured_ms": measured.get(wd),
                     "search_seconds": meta.get("search_seconds"),
                     "val": float(np.mean([r["val"] for r in runs])),
                     "test": float(np.mean([r["test"] for r in runs])),
                     "test_std": float(np.std([r["test"] for r in runs])), "runs": runs})
        print(json.dumps(rows[-1]), flush=True)
    reused = _reused_random(a)
    rng = np.random.default_rng(a.seed + 100)
    randoms = []
    while len(randoms) < a.random:
        arch = space.sample(rng)
        if table.predict(arch) <= a.target:
            randoms.append(arch)
    for i, arch in enumerate(randoms):
        if space.arch_id(arch) in reused:
            rows.append(dict(reused[space.arch_id(arch)], who=f"random{i}"))
            continue
        r = train_arch(space, arch, data, config)
        rows.append({"who": f"random{i}", "arch_id": space.arch_id(arch),
                     "predicted_ms": table.predict(arch), "val": r["val_accuracy"],
                     "test": r["test_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    rand = [r for r in rows if r["who"].startswith("random")]
    summary = {"target_ms": a.target, "epochs": a.epochs, "seed": a.seed, "found": rows[:len(found)],
               "rows": rows}
    if rand:
        summary.update(best_random_by_val=max(rand, key=lambda r: r["val"]),
                       max_random_test=max(r["test"] for r in rand),
                       mean_random_test=float(np.mean([r["test"] for r in rand])))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
