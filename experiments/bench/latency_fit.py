"""Few-shot latency tables from whole networks (``nas latency fit``): how many measured networks
a new device needs.

Measures ``--networks`` random whole networks of a space end to end on this machine exactly as
the onnxruntime table's validation networks are timed (pinned worker, one thread, the table's
timing), or reads them from ``--measurements`` (written by an earlier run), then for each
N in ``--sizes`` and ``--repeats`` random draws fits a table from N of them (with the
``--prior`` table, e.g. jax-cpu, and without: a MACs estimate) and predicts the rest. Prints
Spearman rho and the share within +-10% per N (mean over draws), beside the anchors (HELP: rho
0.93 from 10 networks of a new device; nn-Meter: 99% within +-10%). Run it alone on a quiet
machine (``uptime`` first):

    python experiments/bench/latency_fit.py --space fbnet_cifar \\
        --table latency_tables/onnxruntime-cpu/fbnet_cifar.json \\
        --prior latency_tables/jax-cpu/fbnet_cifar.json --networks 500 \\
        --measurements /tmp/fbnet_cifar_ort_500.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from nas.latency.bundle import proxy_table
from nas.latency.fit import fit_entries
from nas.latency.table import LatencyTable
from nas.latency.validate import measure_specs_ms
from nas.space import Space

#: Seeds of the measured networks start here (distinct from any table's calibration draws).
ARCH_SEED = 7_000_000


def measure(space: Space, table: LatencyTable, n: int, path: Path) -> list[dict]:
    """Measures (or reads back) n random networks; the file is written as they come."""
    have = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    todo = {space.arch_id(a): a for a in (space.sample(ARCH_SEED + i) for i in range(len(have), n))}
    if todo:
        t0 = time.perf_counter()
        measured, _ = measure_specs_ms(table, {aid: space.block_specs(a) for aid, a in todo.items()},
                                       progress=True)
        with path.open("a") as f:
            for aid, a in todo.items():
                f.write(json.dumps({"arch": a, "latency_ms": measured[aid]}) + "\n")
                have.append({"arch": a, "latency_ms": measured[aid]})
        print(f"measured {len(todo)} networks in {time.perf_counter() - t0:.0f} s")
    return have[:n]


def evaluate(base: LatencyTable, points: list[dict], size: int, repeats: int) -> tuple[float, float]:
    """Mean (Spearman rho, within +-10%) over `repeats` draws of `size` fitting networks,
    predicting all the others."""
    rhos, within = [], []
    for r in range(repeats):
        order = np.random.default_rng(r).permutation(len(points))
        fit_idx, test_idx = order[:size], order[size:]
        fit = fit_entries(base, [points[i]["arch"] for i in fit_idx],
                          [points[i]["latency_ms"] for i in fit_idx])
        entries = fit["entries"]
        pred = np.array([fit["intercept_ms"] + sum(
            entries[k] for k in base.network_keys(base.space.block_specs(points[i]["arch"])))
            for i in test_idx])
        meas = np.array([points[i]["latency_ms"] for i in test_idx])
        rhos.append(float(spearmanr(pred, meas).statistic))
        within.append(float(np.mean(np.abs(pred / meas - 1.0) <= 0.10)))
    return float(np.mean(rhos)), float(np.mean(within))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="fbnet_cifar")
    ap.add_argument("--table", required=True, help="the table whose timing the networks follow")
    ap.add_argument("--prior", required=True, help="a table of the same space from another backend")
    ap.add_argument("--networks", type=int, default=500)
    ap.add_argument("--measurements", default="latency_fit_measurements.jsonl")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (measure on a quiet machine)")
    space = Space.by_name(args.space)
    table = LatencyTable.load(args.table, space)
    points = measure(space, table, args.networks, Path(args.measurements))
    prior = LatencyTable.load(args.prior, space)
    bases = {f"prior {prior.backend}": prior, "no prior (MACs)": proxy_table(space)}
    plain = np.array([prior.predict(p["arch"]) for p in points])
    meas = np.array([p["latency_ms"] for p in points])
    print(f"{len(points)} networks of {space.name} on {table.backend}, "
          f"{meas.min():.3f}-{meas.max():.3f} ms; the prior alone, unfitted: Spearman rho "
          f"{spearmanr(plain, meas).statistic:.3f}, within +-10% "
          f"{100 * np.mean(np.abs(plain / meas - 1) <= 0.1):.1f}%")
    print(f"{'N':>5} | " + " | ".join(f"{name:>28}" for name in bases))
    print(f"{'':>5} | " + " | ".join(f"{'rho':>12} {'within10%':>15}" for _ in bases))
    for size in args.sizes:
        cells = []
        for base in bases.values():
            rho, within = evaluate(base, points, size, args.repeats)
            cells.append(f"{rho:>12.3f} {100 * within:>14.1f}%")
        print(f"{size:>5} | " + " | ".join(cells))
    print("anchors: HELP rho 0.93 from 10 networks; nn-Meter 99.0% within +-10%. Targets: with a "
          "prior, rho >= 0.93 at N=10, >= 95% within +-10% at N=100.")


if __name__ == "__main__":
    main()
