"""Exported size and accuracy of a quantized + pruned digits model vs its fp32 counterpart.

Trains two networks of the same layers on the bundled digits data, side by side in one run:

- compressed: 4-bit weights in every block (8-bit stem and head), 8-bit activations, half the
  expanded channels pruned (width 0.5), rank-0.5 factorized 1x1 convs in the last stage;
- counterpart: the same kernels and expansions in fp32, no pruning, no factorization.

Both are exported with :func:`nas.export.exporter.export_model` (every format loaded back and checked);
it prints the packed-model and ONNX file sizes, their ratio, and the test accuracy of the JAX
model and of each export.

Run: ``python experiments/export_size_digits.py [--epochs 15] [--out /tmp/export_size]``
"""

from __future__ import annotations

import argparse
import json
import time

from nas.space import Space


def spaces() -> tuple[Space, Space]:
    """Returns (quantizable tiny space, the same space with fp32 stem and head)."""
    d = Space.by_name("tiny").to_dict()
    d["name"] = "tiny_q"
    d["stem"].update(bits_w=8, bits_a=8)
    d["head"].update(bits_w=8, bits_a=8)
    for stage in d["stages"]:
        stage["knobs"]["bits_w"] = [4, 8, 32]
        stage["knobs"]["bits_a"] = [8, 32]
    f = Space.by_name("tiny").to_dict()
    f["name"] = "tiny_fp32"
    for stage in f["stages"]:
        stage["knobs"]["bits_w"] = [4, 8, 32]
        stage["knobs"]["bits_a"] = [8, 32]
    return Space.from_dict(d), Space.from_dict(f)


def compressed_arch(space: Space, bits_w: int = 4) -> dict:
    """Returns the compressed Arch (every block an mbconv/dwsep, not a skip)."""
    arch = dict(space.sample(0))
    for k in arch:
        if k.endswith("bits_w"):
            arch[k] = bits_w
        elif k.endswith("bits_a"):
            arch[k] = 8
        elif k.endswith("width"):
            arch[k] = 0.5
        elif k.endswith("rank"):
            arch[k] = 0.5
        elif k.endswith("_op") and arch[k] == "skip":
            arch[k] = "mbconv"
    return space.validate(arch)


def counterpart_arch(space: Space, arch: dict) -> dict:
    """Returns the fp32, unpruned, unfactorized Arch with the same other knobs."""
    out = dict(arch)
    for k in out:
        if k.endswith("bits_w") or k.endswith("bits_a"):
            out[k] = 32
        elif k.endswith("width"):
            out[k] = 1.0
        elif k.endswith("rank"):
            out[k] = None
    return space.validate(out)


def main() -> None:
    """Trains, exports and compares the two models."""
    from nas.archfile import ArchFile
    from nas.data import load_data
    from nas.export.exporter import ExportOptions, export_model
    from nas.training.trainer import TrainConfig, train_arch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--bits-w", type=int, default=4)
    ap.add_argument("--out", default="/tmp/export_size")
    args = ap.parse_args()
    q_space, f_space = spaces()
    q_arch = compressed_arch(q_space, args.bits_w)
    f_arch = counterpart_arch(f_space, q_arch)
    rows = {}
    for name, space, arch in (("compressed", q_space, q_arch), ("fp32", f_space, f_arch)):
        data = load_data("digits", space, seed=0)
        start = time.time()
        result = train_arch(space, arch, data, TrainConfig(epochs=args.epochs, seed=0),
                            workdir=f"{args.out}/{name}/train")
        variables = {"params": result["state"].params["model"],
                     "batch_stats": result["state"].batch_stats}
        report = export_model(ArchFile(space, arch), variables, f"{args.out}/{name}/export",
                              ExportOptions(calibration=data.x_train[:256]),
                              check=(data.x_test, data.y_test))
        rows[name] = {"test_accuracy_jax": report["jax_accuracy"],
                      "packed_bytes": report["files"]["packed"]["bytes"],
                      "onnx_bytes": report["files"]["onnx"]["bytes"],
                      "stablehlo_bytes": report["files"]["stablehlo"]["bytes"],
                      "export_accuracy": {f: c.get("accuracy") for f, c in report["checks"].items()},
                      "checks_ok": report["ok"], "seconds": round(time.time() - start, 1)}
    c, f = rows["compressed"], rows["fp32"]
    print(json.dumps(rows, indent=1))
    print(f"packed file: {c['packed_bytes']} / {f['packed_bytes']} bytes = "
          f"{c['packed_bytes'] / f['packed_bytes']:.3f} (1/{f['packed_bytes'] / c['packed_bytes']:.1f})")
    print(f"onnx file:   {c['onnx_bytes']} / {f['onnx_bytes']} bytes = "
          f"{c['onnx_bytes'] / f['onnx_bytes']:.3f}")
    print(f"test accuracy: compressed {c['test_accuracy_jax']:.4f} (onnx "
          f"{c['export_accuracy']['onnx']:.4f}) vs fp32 {f['test_accuracy_jax']:.4f}: "
          f"change {100 * (c['test_accuracy_jax'] - f['test_accuracy_jax']):+.2f} points; "
          f"all export checks ok: {c['checks_ok'] and f['checks_ok']}")


if __name__ == "__main__":
    main()
