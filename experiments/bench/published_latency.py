"""Published networks at 224x224: a real-scale table's prediction vs the network timed end to end.

For every arch file in ``search_spaces/published/`` (each embeds its own channel plan) and the
given tables (e.g. the ``fbnet`` and ``proxyless`` tables of one backend): the network's layers
are looked up in each table (the table's precision rule, its keys); where one table holds every
layer, its calibrated prediction (``LatencyTable.predict_specs``) is compared with the whole
network timed end to end exactly as that table's validation networks are (same backend, batch,
threads, pinning, scheduler and timing). A network no table fully covers is listed with the
share of its layers the best table holds. Run it alone on a quiet machine (``uptime`` first):

    python experiments/bench/published_latency.py \\
        --table latency_tables/onnxruntime-cpu/fbnet.json \\
        --table latency_tables/onnxruntime-cpu/proxyless.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from nas.archfile import load_arch
from nas.errors import NasInputError
from nas.latency.table import LatencyTable
from nas.latency.validate import measure_specs_ms

PUBLISHED = Path(__file__).resolve().parents[2] / "search_spaces" / "published"


def coverage(table: LatencyTable, specs) -> float:
    """Returns the share of a network's layers whose key the table holds."""
    keys = [table.key(s) for s in specs]
    return sum(k in table.entries for k in keys) / len(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="append", required=True, help="a latency table (repeat)")
    ap.add_argument("--nets", nargs="*", default=None, help="arch files (default: all published)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    tables = [LatencyTable.load(t) for t in args.table]
    nets = [Path(p) for p in args.nets] if args.nets else sorted(PUBLISHED.glob("*.json"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows = []
    for path in nets:
        af = load_arch(path)
        specs = af.space.block_specs(af.arch)
        covered = [(coverage(t, specs), t) for t in tables]
        best_cov, table = max(covered, key=lambda c: c[0])
        row = {"net": path.stem, "layers": len(specs), "table": table.source,
               "coverage": round(best_cov, 3)}
        if best_cov == 1.0:
            t0 = time.perf_counter()
            measured, _ = measure_specs_ms(table, {path.stem: specs})
            row["predicted_ms"] = table.predict_specs(specs)
            row["measured_ms"] = measured[path.stem]
            row["error_pct"] = 100.0 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
            row["measure_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| net | table | layers in table | predicted ms | measured ms | error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "measured_ms" in r:
            print(f"| {r['net']} | {Path(r['table']).parent.name}/{Path(r['table']).name} | 100% | "
                  f"{r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | {r['error_pct']:+.1f}% |")
        else:
            print(f"| {r['net']} | {Path(r['table']).parent.name}/{Path(r['table']).name} | "
                  f"{100 * r['coverage']:.0f}% | - | - | not in the table's space |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    try:
        main()
    except NasInputError as e:
        raise SystemExit(f"published_latency: {e}")
