"""Makes experiments/specialize/dw_heavy_tiny.json: a *modelled* device for the tiny space whose
depthwise convolutions are relatively expensive (as on accelerators that run them on a slow
path), fitted with ``nas latency fit`` from whole-network "measurements" of that model.

NOT a measured table. How it is made:

1. the device model: a network's latency is the shipped ``onnxruntime-cpu/tiny.json``
   prediction plus ``DW_MS_PER_MMAC`` ms per million multiply-accumulates of every depthwise
   conv (a group-per-channel conv, :func:`nas.metrics.layer_ops`), times a +-2% (uniform)
   measurement noise; at 0.1 ms/MMAC a 7x7 depthwise conv over 96 channels at 8x8 (0.3 MMAC)
   adds 0.03 ms, more than the whole block costs on the CPU table, a 3x3 one 0.0055 ms;
2. ``N_NETWORKS`` distinct random tiny Archs (seed 0) "measured" with it, written as the
   JSON-lines file ``nas latency fit`` reads (``dw_heavy_tiny_measurements.jsonl``);
3. ``nas latency fit --space tiny --measurements ... --prior
   latency_tables/onnxruntime-cpu/tiny.json --device synthetic-dw-heavy --out ...``: per-layer
   entries fitted to the whole networks (the path a device that only times whole models takes,
   README "A table for your own device");
4. the fitted table checked against the device model on 200 other random Archs (printed).

Run from the repository root (a few seconds, no timing): ``python
experiments/specialize/make_dw_heavy_table.py`` (refuses to overwrite; delete the two files to
remake them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nas.latency.table import LatencyTable, sample_archs
from nas.latency.validate import accuracy_metrics
from nas.metrics import layer_ops
from nas.space import Space

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PRIOR = "latency_tables/onnxruntime-cpu/tiny.json"
MEASUREMENTS = HERE / "dw_heavy_tiny_measurements.jsonl"
TABLE = HERE / "dw_heavy_tiny.json"
DW_MS_PER_MMAC = 0.1
NOISE = 0.02
N_NETWORKS = 150


def depthwise_mmac(space: Space, arch: dict) -> float:
    """Million MACs of the depthwise convs of an Arch's network."""
    return sum(op.macs for spec in space.block_specs(arch) for op in layer_ops(spec)
               if op.groups > 1 and op.groups == op.cin) / 1e6


def modelled_ms(prior: LatencyTable, arch: dict) -> float:
    """The modelled device's latency of an Arch (no noise)."""
    return prior.predict(arch) + DW_MS_PER_MMAC * depthwise_mmac(prior.space, arch)


def main() -> int:
    space = Space.by_name("tiny")
    prior = LatencyTable.load(ROOT / PRIOR, space)
    if TABLE.exists() or MEASUREMENTS.exists():
        print(f"{TABLE} or {MEASUREMENTS} exists; delete both to remake them", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    archs = sample_archs(space, N_NETWORKS + 200, seed=0)
    fit_archs, check_archs = archs[:N_NETWORKS], archs[N_NETWORKS:]
    with MEASUREMENTS.open("w") as f:
        for arch in fit_archs:
            ms = modelled_ms(prior, arch) * (1 + rng.uniform(-NOISE, NOISE))
            f.write(json.dumps({"arch": arch, "latency_ms": round(ms, 6)}) + "\n")
    subprocess.run([sys.executable, "-m", "nas.cli", "latency", "fit", "--space", "tiny",
                    "--measurements", str(MEASUREMENTS.relative_to(ROOT)), "--prior", PRIOR,
                    "--device", "synthetic-dw-heavy", "--out", str(TABLE.relative_to(ROOT))],
                   check=True, cwd=ROOT)
    table = LatencyTable.load(TABLE, space)
    truth = [modelled_ms(prior, a) for a in check_archs]
    check = accuracy_metrics(table.predict_many(check_archs), truth)
    print(f"fitted table vs the device model on {check['n']} other Archs: within +-10% "
          f"{100 * check['within_10pct']:.1f}%, rmspe {check['rmspe']:.2f}%, kendall tau "
          f"{check['kendall_tau']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
