"""Benchmark: training an Arch of the `tiny` space on digits, QAT, distillation, the npz loader.

Prints, in one run on this machine:
  1. test accuracy and training time of an Arch sampled from `tiny` (float);
  2. the same Arch with 8-bit weights and activations everywhere, then 4-bit and 2-bit blocks
     (stem and head kept at 8 bits), trained quantization-aware with the same settings;
  3. a small student trained from scratch vs distilled from the Arch of (1), same epochs,
     mean and std of test accuracy over several seeds;
  4. the same Arch trained from an MNIST-format npz (28x28x1 uint8, digits upscaled) resized to
     the space's 16x16.

Usage:
    python experiments/bench/train_digits.py [--epochs 20] [--seeds 5] [--out result.json]

Times: ``train_seconds`` is the wall time of the training epochs including XLA compilation
(first epoch); ``steady_seconds`` extrapolates the later epochs to the whole run (no compile).
The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nas.data import load_data  # noqa: E402
from nas.data.sources import read_digits  # noqa: E402
from nas.training.distill import DistillConfig, distill_arch  # noqa: E402
from nas.model import with_bits  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.training.trainer import TrainConfig, train_arch  # noqa: E402

#: A small student of the tiny space: 3x3 kernels, expansion 3, half width, skips where allowed.
STUDENT = {"s1_b1_op": "dwsep", "s1_b1_kernel": 3, "s2_b1_kernel": 3, "s2_b1_expand": 3,
           "s2_b1_width": 0.5, "s2_b2_op": "skip", "s3_b1_kernel": 3, "s3_b1_expand": 3,
           "s3_b1_se": False, "s3_b1_width": 0.5, "s3_b2_op": "skip", "s4_b1_kernel": 3,
           "s4_b1_expand": 3, "s4_b1_rank": 0.5}


def summarize(name: str, r: dict) -> dict:
    """Returns the figures of one run."""
    h = r["history"]
    later = [e["seconds"] for e in h[1:]]
    steady = statistics.mean(later) * len(h) if later else h[0]["seconds"]
    out = {"run": name, "test_accuracy": round(r["test_accuracy"], 4),
           "val_accuracy": round(r["val_accuracy"], 4), "params": r["params"],
           "epochs": len(h), "train_seconds": round(r["train_seconds"], 1),
           "first_epoch_seconds": round(h[0]["seconds"], 1), "steady_seconds": round(steady, 1)}
    print(json.dumps(out), flush=True)
    return out


def write_mnist_npz(path: str) -> None:
    """Writes digits upscaled to MNIST's format: x N x 28 x 28 x 1 uint8, y N int64."""
    x, y, _ = read_digits()
    x = np.asarray(jax.image.resize(x, (len(x), 28, 28, 1), "linear"))
    np.savez(path, x=np.clip(np.round(x * 255), 0, 255).astype(np.uint8), y=y.astype(np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the sampled tiny Arch")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--skip", default="", help="comma list of parts to skip: float,quant,kd,npz")
    p.add_argument("--cache", action="store_true", help="use the persistent XLA compile cache")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(".jax_cache"))
    skip = set(filter(None, args.skip.split(",")))
    space = Space.by_name("tiny")
    arch = space.sample(args.arch_seed)
    data = load_data("digits", space, seed=0)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64)
    print(f"# load average at start: {os.getloadavg()}; cores: {os.cpu_count()}")
    print(f"# arch {space.arch_id(arch)} (tiny, sample seed {args.arch_seed}): {json.dumps(arch)}")
    print(f"# data: {data.summary()}")
    figures = {"arch": arch, "config": cfg.to_dict(), "runs": []}
    results = {}
    t_all = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        if "float" not in skip or "kd" not in skip:
            results["float"] = train_arch(space, arch, data, cfg, workdir=os.path.join(tmp, "float"))
            figures["runs"].append(summarize("float32", results["float"]))
        if "quant" not in skip:
            for bw, ba, edge in ((8, 8, 8), (4, 4, 8), (2, 2, 8), (2, 8, 8)):
                model = with_bits(space, arch, bw, ba, edge)
                r = train_arch(space, arch, data, cfg, model=model)
                s = summarize(f"w{bw}a{ba} (stem/head {edge}-bit)", r)
                s["drop_points"] = round(100 * (results["float"]["test_accuracy"] - r["test_accuracy"]), 2)
                print(f"#   w{bw}a{ba}: {s['drop_points']:+.2f} points below float")
                figures["runs"].append(s)
        if "kd" not in skip:
            from nas.training.checkpoint import load_trained

            student = space.canonical(dict(arch, **STUDENT))
            _, tmodel, tvars, _ = load_trained(os.path.join(tmp, "float"))
            scfg = dataclasses.replace(cfg, epochs=args.student_epochs)
            scratch, kd = [], []
            for seed in range(args.seeds):
                c = dataclasses.replace(scfg, seed=seed)
                scratch.append(train_arch(space, student, data, c)["test_accuracy"])
                kd.append(distill_arch(space, student, data, c, DistillConfig(temperature=4.0, kd_weight=0.7),
                                       [(tmodel, tvars)])["test_accuracy"])
                print(f"#   seed {seed}: scratch {scratch[-1]:.4f}  kd {kd[-1]:.4f}", flush=True)
            kd_fig = {"run": "kd_vs_scratch", "student": student, "epochs": args.student_epochs,
                      "teacher_test_accuracy": round(results["float"]["test_accuracy"], 4),
                      "scratch_mean": round(float(np.mean(scratch)), 4),
                      "scratch_std": round(float(np.std(scratch, ddof=1)), 4) if len(scratch) > 1 else 0.0,
                      "kd_mean": round(float(np.mean(kd)), 4),
                      "kd_std": round(float(np.std(kd, ddof=1)), 4) if len(kd) > 1 else 0.0,
                      "scratch": scratch, "kd": kd}
            print(json.dumps(kd_fig), flush=True)
            figures["runs"].append(kd_fig)
        if "npz" not in skip:
            path = os.path.join(tmp, "mnist_format.npz")
            write_mnist_npz(path)
            ndata = load_data(f"npz:{path}", space, seed=0)
            print(f"# npz data: 28x28x1 uint8 -> {ndata.summary()}")
            figures["runs"].append(summarize("npz 28x28x1 -> 16x16x1", train_arch(space, arch, ndata, cfg)))
    print(f"# total wall time {time.perf_counter() - t_all:.0f} s; load average at end: {os.getloadavg()}")
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(figures, f, indent=2)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
