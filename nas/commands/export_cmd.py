"""``nas export``: write a trained Arch as a standalone model (JSON, packed, orbax, StableHLO, ONNX)."""

from __future__ import annotations

import argparse
import json

from nas.errors import NasInputError
from nas.space_files import add_space_option


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``export`` command.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser(
        "export", help="export a trained Arch (JSON, packed ints, orbax, StableHLO, ONNX)",
        description="Export the model trained in a 'nas train' / 'nas distill' work directory. "
                    "Formats: json (arch.json), packed (model.npk: only the chosen network's "
                    "tensors, quantized weights as bit-packed integers + scales), orbax (float "
                    "variables), stablehlo (jax.export, symbolic batch), onnx (BatchNorm folded, "
                    "the trained quantizers as int8 QDQ, int8 kernels for layers quantized to <= 8 "
                    "bits). Every file is loaded back and its outputs on the whole test split "
                    "compared with the JAX model's (quantized: top-1 agreement >= 99.5%% and "
                    "accuracy within 0.2 points); a failed check exits with code 1 and one line "
                    "naming the layer that diverges most. Sizes and the ONNX model's measured "
                    "latency go to OUT/export.json. "
                    "Inputs are NHWC float32 standardized like the training data (the mean and "
                    "std are in export.json).",
        epilog="Example: nas export --arch runs/x/arch.json --ckpt runs/x --out runs/x/export")
    p.add_argument("--arch", required=True, help="arch JSON file of the trained model")
    p.add_argument("--ckpt", required=True,
                   help="work directory of a finished 'nas train' or 'nas distill' run")
    p.add_argument("--format", default="all",
                   help="comma-separated formats: json,packed,orbax,stablehlo,onnx,tflite (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default="digits",
                   help="data spec for calibration and checks (default digits; see 'nas train')")
    p.add_argument("--split-seed", type=int, default=0, help="split seed used in training")
    p.add_argument("--calibration", type=int, default=256,
                   help="training images for --recalibrate (default 256)")
    p.add_argument("--recalibrate", action="store_true",
                   help="replace the trained activation steps of the ONNX model by post-training "
                        "ones (max |x| on --calibration images); off: the ONNX model is the "
                        "trained one")
    p.add_argument("--latency-table", default=None,
                   help="latency table to set the predicted latency beside the measured one")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--onnx-int8-weights", action="store_true",
                   help="store weight-only quantized layers' ONNX weights as int8 (smaller file; "
                        "onnxruntime then dequantizes them at every call, which is slower)")
    p.add_argument("--json", action="store_true", help="print the export report as one JSON line")
    add_space_option(p)
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch
    from nas.training.checkpoint import load_trained
    from nas.data import load_data
    from nas.export.exporter import (ExportOptions, export_model, parse_formats, preprocess_meta,
                            raise_on_failed_check)

    formats = parse_formats(args.format)
    if args.calibration < 0:
        raise NasInputError(f"{args.calibration} is not allowed; expected >= 0", field="--calibration")
    af = load_arch(args.arch, args.space)
    trained_af, _, variables, _ = load_trained(args.ckpt)
    mine, theirs = af.space.arch_id(af.arch), trained_af.space.arch_id(trained_af.arch)
    if mine != theirs:
        raise NasInputError(f"--ckpt holds Arch {theirs}, not {mine} of --arch; give the work "
                            "directory this Arch was trained in", args.ckpt)
    data = load_data(args.data, af.space, seed=args.split_seed)
    options = ExportOptions(formats=formats, calibration=data.x_train[:args.calibration],
                            measure_latency=not args.no_latency, latency_table=args.latency_table,
                            onnx_weight_only_int8=args.onnx_int8_weights,
                            onnx_recalibrate=args.recalibrate)
    report = export_model(af, variables, args.out, options, check=(data.x_test, data.y_test),
                          meta={"preprocess": preprocess_meta(data), "data": args.data})
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print_export(report)
    raise_on_failed_check(report)
    return 0


def print_export(report: dict) -> None:
    """Prints an export report as a short table."""
    print(f"export of Arch {report['arch_id']} ({report['space']})")
    print(f"  {'format':<10} {'bytes':>10}  {'check':<5} {'max|diff|':>10} {'top-1 agree':>11}  accuracy")
    for fmt, f in report["files"].items():
        c = report["checks"].get(fmt)
        if c is None:
            print(f"  {fmt:<10} {f['bytes']:>10}")
            continue
        acc = f"{c['accuracy']:.4f}" if "accuracy" in c else "-"
        print(f"  {fmt:<10} {f['bytes']:>10}  {'ok' if c['ok'] else 'FAIL':<5} "
              f"{c['max_abs_diff']:>10.3g} {c['agreement']:>11.3f}  {acc}")
    s = report["sizes"]
    print(f"  packed model {s['packed_bytes']} bytes = {s['ratio']:.3f} x its fp32 uncompressed "
          f"counterpart ({s['fp32_counterpart_bytes']} bytes)")
    lat = report.get("latency") or {}
    if "measured_ms" in lat:
        pred = f", table predicts {lat['predicted_ms']:.3f} ms ({lat['error_pct']:+.1f}%)" \
            if "predicted_ms" in lat else ""
        print(f"  onnxruntime latency (batch 1, 1 thread): {lat['measured_ms']:.3f} ms{pred}")

