"""Train once, specialize for three devices (issue 18, section 2; Once-for-All).

Trains a small spos supernet on tiny/digits (or reuses one), then runs ``nas specialize`` with
three device tables of the tiny space:

* ``latency_tables/onnxruntime-cpu/tiny.json`` (measured, this project's CPU, onnxruntime),
* ``latency_tables/jax-cpu/tiny.json`` (measured, same CPU, jax),
* ``experiments/specialize/dw_heavy_tiny.json``: a modelled device whose depthwise convs are
  expensive, fitted with ``nas latency fit`` from synthetic whole-network measurements (not a
  measured table; ``experiments/specialize/make_dw_heavy_table.py`` says how it was made),

each with a target at the same point of its own latency range (``fastest + fraction *
(largest - fastest)``). Prints per device the target, the Arch id, its predicted latency, its
supernet accuracy and the seconds the device took, then every device's Arch on every table
(does it meet the other devices' targets?).

Usage (from the repository root)::

    python experiments/specialize_three_devices.py --epochs 10           # trains, then specializes
    python experiments/specialize_three_devices.py --supernet runs/digits_spos   # reuse a supernet
    python experiments/specialize_three_devices.py --supernet W --predictor mlp
    python experiments/specialize_three_devices.py --data npz:fashion3k.npz --epochs 15 \
        --workdir runs/specialize_fashion     # a harder task (experiments/data/mnist_subset.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("latency_tables/onnxruntime-cpu/tiny.json", "latency_tables/jax-cpu/tiny.json",
          "experiments/specialize/dw_heavy_tiny.json")


def nas(*args: str) -> str:
    """Runs a ``nas`` command from the repository root; returns its stdout (exits on failure)."""
    done = subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE)
    if done.returncode != 0:
        sys.exit(f"nas {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


def train_supernet(workdir: Path, epochs: int, data: str = "digits") -> Path:
    """Trains (or resumes) experiments/digits_spos.yaml for `epochs` epochs on `data` (a data
    spec of 16x16-able grayscale images, e.g. a Fashion-MNIST npz) into workdir/supernet."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "supernet.yaml"
    config.write_text(f"extends: {ROOT / 'experiments' / 'digits_spos.yaml'}\n"
                      f"data: {json.dumps(data)}\n"
                      f"train: {{epochs: {epochs}}}\n")
    print(f"training the supernet: nas search {config} --workdir {workdir / 'supernet'}",
          flush=True)
    summary = json.loads(nas("search", str(config), "--workdir", str(workdir / "supernet"),
                             "--json", "--no-drift-check").strip().splitlines()[-1])
    print(f"  largest sub-network val accuracy {summary['val_accuracy']:.4f}, smallest "
          f"{summary['smallest_val_accuracy']:.4f}, {summary['search_seconds']:.0f} s")
    return workdir / "supernet"


def targets(fraction: float) -> list[float]:
    """Each table's target: `fraction` of the way from its fastest to its largest sub-network."""
    from nas.latency.table import LatencyTable
    from nas.single_path.plan import max_arch
    from nas.space import Space
    from nas.specialize.genome import SubnetGenome

    space = Space.by_name("tiny")
    gs = SubnetGenome(space)
    out = []
    for path in TABLES:
        table = LatencyTable.load(ROOT / path, space)
        fastest = table.predict(gs.arch(gs.fastest(table.predict)))
        largest = table.predict(max_arch(space, gs.plans))
        out.append(round(fastest + fraction * (largest - fastest), 4))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default=None, help="reuse this spos workdir (no training)")
    parser.add_argument("--workdir", default="runs/specialize_three_devices",
                        help="where the supernet and the specialized Archs go")
    parser.add_argument("--epochs", type=int, default=10, help="supernet epochs (default 10)")
    parser.add_argument("--data", default="digits",
                        help="the supernet's data spec (default digits; e.g. npz:fashion3k.npz "
                             "written by experiments/data/mnist_subset.py)")
    parser.add_argument("--fraction", type=float, default=0.3,
                        help="target point in each table's latency range (default 0.3)")
    parser.add_argument("--predictor", choices=("none", "mlp"), default="none")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--generations", type=int, default=20)
    args = parser.parse_args()

    workdir = (ROOT / args.workdir).resolve()
    if args.supernet:
        supernet = Path(args.supernet).resolve()
    else:
        supernet = train_supernet(workdir, args.epochs, args.data)
    goals = targets(args.fraction)
    command = ["specialize", "--supernet", str(supernet), "--out", str(workdir / "specialized"),
               "--predictor", args.predictor, "--population", str(args.population),
               "--generations", str(args.generations), "--json"]
    for table, target in zip(TABLES, goals):
        command += ["--table", table, "--target", str(target)]
    print("nas " + " ".join(command), flush=True)
    summary = json.loads(nas(*command).strip().splitlines()[-1])

    if summary["predictor"]:
        p = summary["predictor"]
        print(f"predictor: mlp on {p['train']} supernet-scored sub-networks, held-out "
              f"({p['held_out']}) kendall tau {p['kendall_tau']:.3f}, spearman {p['spearman']:.3f}")
    print(f"\n{'device':<32} {'target ms':>9} {'arch id':<13} {'latency ms':>10} "
          f"{'val acc':>8} {'test acc':>8} {'seconds':>8}")
    for d in summary["devices"]:
        if not d["met"]:
            print(f"{d['device']:<32} {d['target_ms']:>9.4f} not met: {d['message']}")
            continue
        print(f"{d['device']:<32} {d['target_ms']:>9.4f} {d['arch_id']:<13} {d['latency_ms']:>10.4f} "
              f"{d['val_accuracy']:>8.4f} {d['test_accuracy']:>8.4f} {d['seconds']:>8.1f}")
    met = [d for d in summary["devices"] if d["met"]]
    print(f"\n{len({d['arch_id'] for d in met})} different Archs for {len(met)} devices; "
          f"{summary['supernet_scored']} sub-networks scored on the supernet in "
          f"{summary['seconds']:.0f} s (load {summary['load_seconds']:.1f} s)")
    print_cross_table(met)
    return 0


def print_cross_table(devices: list[dict]) -> None:
    """Prints every device's Arch's predicted latency on every device's table (* = over that
    device's target)."""
    from nas.latency.table import LatencyTable
    from nas.space import Space

    space = Space.by_name("tiny")
    tables = [LatencyTable.load(d["table"], space) for d in devices]
    print("\nlatency (ms) of each device's Arch (rows) on each table (columns; * = over its target)")
    print(" " * 32 + "".join(f"{d['device'][:22]:>24}" for d in devices))
    for row in devices:
        cells = []
        for d, table in zip(devices, tables):
            ms = table.predict(row["arch"])
            cells.append(f"{ms:>23.4f}{'*' if ms > d['target_ms'] else ' '}")
        print(f"{row['device']:<32}" + "".join(cells))


if __name__ == "__main__":
    sys.exit(main())
