"""Benchmark: quantization-aware training at 8, 4 and 2 bits (LSQ vs minmax), and the exported
ONNX model of every trained network checked against JAX on the whole test split.

One Arch of the `tiny` space, trained on the bundled digits data with the same settings for
every bit-width (blocks at w/a bits, stem and head at 8 bits as usual in the QAT literature),
for each quantizer (``lsq``: learned step sizes, the default; ``minmax``: steps from max |w| and
the running max |x|) and each seed. After training, each network is exported to ONNX
(:func:`nas.export.to_onnx.export_onnx`, the trained quantizers as int8 QDQ) and run by
onnxruntime on the whole test split: top-1 agreement with the JAX model and the accuracy gap.

Usage:
    python experiments/bench/quant_bits.py [--epochs 15] [--seeds 0,1,2]
        [--configs float,w8a8,w4a4,w2a4,w2a2] [--quantizers lsq,minmax] [--cache]
        [--out result.json]

Prints one JSON line per run, then a table: config, quantizer, test accuracy mean +- std over
the seeds, the drop from float, and the ONNX export's worst agreement and accuracy gap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


from nas.data import load_data  # noqa: E402
from nas.export.exporter import compare_logits, jax_logits  # noqa: E402
from nas.export.to_onnx import export_onnx, run_onnx  # noqa: E402
from nas.model import with_bits  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.training.trainer import TrainConfig, train_arch  # noqa: E402


def parse_config(name: str) -> tuple[int, int]:
    """'float' -> (32, 32); 'w4a8' -> (4, 8)."""
    if name == "float":
        return 32, 32
    w, a = name[1:].split("a")
    return int(w), int(a)


def run_one(space: Space, arch: dict, data, cfg: TrainConfig, config: str) -> dict:
    """Trains one network and checks its ONNX export on the test split; returns its figures."""
    bits_w, bits_a = parse_config(config)
    model = with_bits(space, arch, bits_w, bits_a, edge_bits=None if config == "float" else 8)
    t0 = time.perf_counter()
    r = train_arch(space, arch, data, cfg, model=model)
    seconds = time.perf_counter() - t0
    variables = {"params": r["state"].params["model"], "batch_stats": r["state"].batch_stats}
    ref = jax_logits(model, variables, data.x_test)
    names = ("stem",) + tuple(s.prefix for s in space.slots) + ("head",)
    onnx_model, _ = export_onnx(list(model.specs), names, variables)
    check = compare_logits(ref, run_onnx(onnx_model, data.x_test), quantized=True,
                           labels=data.y_test)
    out = {"config": config, "quantizer": cfg.quantizer, "seed": cfg.seed,
           "test_accuracy": round(r["test_accuracy"], 4), "seconds": round(seconds, 1),
           "onnx_agreement": round(check["agreement"], 4),
           "onnx_accuracy_gap_points": round(100 * (check["accuracy"] - check["reference_accuracy"]), 3),
           "onnx_exact_fraction": round(check["exact_fraction"], 4)}
    print(json.dumps(out), flush=True)
    return out


def table(runs: list[dict], configs: list[str], quantizers: list[str]) -> list[str]:
    """The summary table's lines (mean +- std over seeds)."""
    float_acc = [r["test_accuracy"] for r in runs if r["config"] == "float"]
    ref = statistics.mean(float_acc) if float_acc else None
    lines = [f"{'config':<7} {'quantizer':<9} {'test acc % (mean +- std)':>25} {'vs float':>9} "
             f"{'ONNX agree (min)':>16} {'ONNX acc gap (max)':>18}"]
    for config in configs:
        for q in (quantizers if config != "float" else quantizers[:1]):
            rs = [r for r in runs if r["config"] == config and (config == "float" or r["quantizer"] == q)]
            if not rs:
                continue
            accs = [100 * r["test_accuracy"] for r in rs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            drop = f"{statistics.mean(accs) - 100 * ref:+.2f}" if ref is not None else "-"
            gap = max(abs(r["onnx_accuracy_gap_points"]) for r in rs)
            lines.append(f"{config:<7} {q if config != 'float' else '-':<9} "
                         f"{statistics.mean(accs):>17.2f} +- {std:4.2f} {drop:>9} "
                         f"{min(r['onnx_agreement'] for r in rs):>16.4f} {gap:>18.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the sampled tiny Arch")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--configs", default="float,w8a8,w4a4,w2a4,w2a2")
    p.add_argument("--quantizers", default="lsq,minmax")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    p.add_argument("--cache", action="store_true",
                   help="use the persistent XLA compile cache (.jax_cache): seeds share compiles")
    args = p.parse_args(argv)
    if args.cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.abspath(".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    space = Space.by_name("tiny")
    arch = space.sample(args.arch_seed)
    data = load_data("digits", space, seed=0)
    configs = args.configs.split(",")
    quantizers = args.quantizers.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# load average at start: {os.getloadavg()}; arch {space.arch_id(arch)}: {json.dumps(arch)}")
    print(f"# data: {data.summary()}; {args.epochs} epochs; stem and head at 8 bits when quantized")
    runs = []
    t_all = time.perf_counter()
    for config in configs:
        for q in (quantizers if config != "float" else quantizers[:1]):
            for seed in seeds:
                cfg = TrainConfig(epochs=args.epochs, batch_size=64, seed=seed, quantizer=q)
                runs.append(run_one(space, arch, data, cfg, config))
    print("\n".join(table(runs, configs, quantizers)))
    print(f"# total {time.perf_counter() - t_all:.0f} s; load average at end: {os.getloadavg()}")
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump({"arch": arch, "epochs": args.epochs, "runs": runs}, f, indent=2)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
