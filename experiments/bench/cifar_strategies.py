"""Every strategy for one epoch on the CIFAR-size spaces, from a CIFAR-10 binary folder.

Writes a folder in the CIFAR-10 binary format (``--images`` random images per batch file, the
writer of the tests), then runs ``nas search`` once per (strategy, space) in a fresh process
with ``data: cifar10:DIR``: the sample-based strategies train one candidate for one epoch, the
one-shot ones (fbnet, proxyless: warm-up 0, so the architecture steps run too; single_path)
train their supernet for one epoch and derive an Arch. Prints per run: exit status, wall
seconds (compile included; the persistent compile cache is off), the Arch found, its MACs and
the summary's test accuracy where the strategy trains one.

    python experiments/bench/cifar_strategies.py --spaces mixed,fbnet_cifar --images 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ("random", "evolution", "rl")
ONE_SHOT = ("fbnet", "proxyless", "single_path")


def search_config(strategy: str, space: str, data_dir: Path, batch: int) -> dict:
    """Returns a one-epoch ``nas search`` config of `strategy` on `space`.

    Args:
        strategy: a registered strategy name.
        space: a shipped space.
        data_dir: the CIFAR-10 binary folder.
        batch: batch size.
    """
    config = {"space": space, "data": f"cifar10:{data_dir}", "seed": 0,
              "objective": {"metric": "macs", "target": 2.0e7},
              "train": {"epochs": 1, "batch_size": batch}, "executor": {"kind": "local"}}
    if strategy in SAMPLE:
        config.update(budget=1, strategy={"name": strategy, "params": {}})
    elif strategy == "single_path":  # a target needs cost latency: a MACs weight instead
        config["objective"] = {"metric": "macs"}
        config["strategy"] = {"name": strategy, "params": {"cost": "macs", "lam": 0.1}}
    else:
        config["strategy"] = {"name": strategy, "params": {"epochs": 1, "warmup_epochs": 0,
                                                           "batch_size": batch}}
    return config


def run_one(config: dict, workdir: Path) -> dict:
    """Runs ``nas search`` on `config` in a fresh process; returns status, seconds, summary."""
    path = workdir.with_suffix(".yaml")
    path.write_text(json.dumps(config))
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(path), "--workdir",
                           str(workdir), "--json", "--no-drift-check"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    return {"rc": done.returncode, "seconds": seconds, "summary": summary,
            "error": done.stderr.strip().splitlines()[-1] if done.returncode and done.stderr else ""}


def main() -> None:
    """Runs every strategy on every space and prints one line per run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spaces", default="mixed,fbnet_cifar")
    ap.add_argument("--strategies", default=",".join(SAMPLE + ONE_SHOT))
    ap.add_argument("--images", type=int, default=100, help="images per batch file (6 files)")
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from cifar_helpers import write_cifar_folder
    from nas.metrics import arch_metrics
    from nas.space import Space

    tmp = Path(tempfile.mkdtemp(prefix="cifar-strategies-"))
    data_dir = write_cifar_folder(tmp / "cifar-10-batches-bin", a.images)
    print(f"cifar10:{data_dir} ({5 * a.images} training images, {a.images} test), batch "
          f"{a.batch}, 1 epoch, no compile cache, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'space':12s} {'strategy':12s} {'rc':>3s} {'seconds':>8s} {'MACs':>10s} {'test acc':>8s}  arch_id")
    for space_name in a.spaces.split(","):
        space = Space.by_name(space_name)
        for strategy in a.strategies.split(","):
            out = run_one(search_config(strategy, space_name, data_dir, a.batch),
                          tmp / f"{space_name}-{strategy}")
            s = out["summary"]
            macs = arch_metrics(space, s["arch"])["macs"] if s.get("arch") else float("nan")
            acc = (s.get("best") or {}).get("test_accuracy")
            acc_text = f"{acc:8.3f}" if isinstance(acc, (int, float)) else f"{'-':>8s}"
            print(f"{space_name:12s} {strategy:12s} {out['rc']:3d} {out['seconds']:8.1f} "
                  f"{macs / 1e6:9.2f}M {acc_text}  {s.get('arch_id', out['error'])}", flush=True)


if __name__ == "__main__":
    main()
