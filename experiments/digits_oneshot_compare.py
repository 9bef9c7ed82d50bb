"""Digits + tiny: do the one-shot searches' Archs meet T, and how do they compare with random ones?

For each one-shot work directory (``nas search experiments/digits_fbnet.yaml --workdir W``...):
the derived Arch (best_arch.json) is measured end to end on the table's backend (as
``nas latency validate`` does) and trained from scratch; then `--random` random Archs whose
predicted latency meets T are trained the same way. Prints and writes (``--out``) the table.

    python experiments/digits_oneshot_compare.py runs/digits_fbnet runs/digits_proxyless \
        --target 0.05 --random 20 --epochs 5 --out runs/oneshot_compare.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from nas.archfile import load_arch
from nas.data import load_data
from nas.latency.build import WorkerMeasurer, network_item
from nas.latency.measure import TimingConfig
from nas.latency.precision import effective_spec
from nas.latency.table import LatencyTable
from nas.train import TrainConfig, train_arch


def measure_ms(table: LatencyTable, archs: dict) -> dict:
    """Returns {id: measured end-to-end median ms} on the table's backend, batch and threads."""
    prov = table.data["provenance"]
    known = set(TimingConfig.__dataclass_fields__)
    timing = TimingConfig(**{k: v for k, v in prov.get("timing", {}).items() if k in known})
    measurer = WorkerMeasurer(table.backend, prov["batch"], prov["threads"], None, timing)
    items = [network_item(i, [effective_spec(s, table.rule) for s in table.space.block_specs(a)])
             for i, a in archs.items()]
    return {r["id"]: r["median_ms"] for r in measurer.measure(items) if r["type"] == "result"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--table", default="latency_tables/onnxruntime-cpu/tiny.json")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
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
    for wd, (arch, meta) in found.items():
        t = time.time()
        r = train_arch(space, arch, data, config)
        rows.append({"who": meta.get("strategy", wd), "arch_id": space.arch_id(arch),
                     "predicted_ms": table.predict(arch), "measured_ms": measured.get(wd),
                     "search_seconds": meta.get("search_seconds"), "val": r["val_accuracy"],
                     "test": r["test_accuracy"], "train_s": time.time() - t})
        print(json.dumps(rows[-1]), flush=True)
    rng = np.random.default_rng(a.seed + 100)
    randoms = []
    while len(randoms) < a.random:
        arch = space.sample(rng)
        if table.predict(arch) <= a.target:
            randoms.append(arch)
    for i, arch in enumerate(randoms):
        r = train_arch(space, arch, data, config)
        rows.append({"who": f"random{i}", "arch_id": space.arch_id(arch),
                     "predicted_ms": table.predict(arch), "val": r["val_accuracy"],
                     "test": r["test_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    rand = [r for r in rows if r["who"].startswith("random")]
    best = max(rand, key=lambda r: r["val"])
    summary = {"target_ms": a.target, "epochs": a.epochs, "found": rows[:len(found)],
               "best_random_by_val": best, "max_random_test": max(r["test"] for r in rand),
               "mean_random_test": float(np.mean([r["test"] for r in rand])), "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
