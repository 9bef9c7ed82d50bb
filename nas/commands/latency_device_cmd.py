"""``nas latency bundle|import|fit|predict``: tables for devices that cannot run this package.

``bundle`` writes the ONNX models, manifest and standalone runner a device times;
``import`` turns the device's results.json into a table; ``fit`` fits one to whole-network
measurements; ``predict`` prints the predicted latency of many Archs at once (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys

from nas.errors import NasInputError


def register(lsub: argparse._SubParsersAction) -> None:
    """Adds the device subcommands to the ``latency`` group.

    Args:
        lsub: the ``latency`` group's subparsers object.
    """
    b = lsub.add_parser("bundle", help="write the models and runner to time a space on a device",
                        description="Write one ONNX model per distinct layer, calibration and "
                                    "validation networks, a manifest and measure.py (needs only "
                                    "Python, numpy and onnxruntime on the device) into --out.")
    b.add_argument("--space", required=True, help="shipped space name or path to a YAML file")
    b.add_argument("--out", required=True, help="the bundle folder to write (new or empty)")
    b.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    b.add_argument("--calibration-samples", type=int, default=40,
                   help="whole networks to calibrate on (default 40)")
    b.add_argument("--validation-samples", type=int, default=100,
                   help="whole networks to validate on, fastest and slowest included "
                        "(default 100)")
    b.add_argument("--format", default="onnx", choices=("onnx", "tflite"),
                   help="onnx: timed with onnxruntime (int8 layers as QDQ); tflite: timed with the "
                        "LiteRT interpreter, XNNPACK, float kernels (default onnx)")
    b.add_argument("--prior", default=None,
                   help="a table of the same space (e.g. this machine's) to draw the networks "
                        "over (default: a MACs estimate)")
    b.set_defaults(func=_bundle)

    i = lsub.add_parser("import", help="a device's results.json -> a latency table",
                        description="Check a device's results against its bundle (manifest, "
                                    "hashes, space) and write a calibrated table validated on "
                                    "the bundle's validation networks.")
    i.add_argument("results", help="results.json written by the bundle's measure.py")
    i.add_argument("--out", required=True, help="table file to write (must not exist)")
    i.add_argument("--bundle", default=None,
                   help="the bundle folder (default: the results file's folder)")
    i.add_argument("--space", default=None,
                   help="space name or YAML (default: the one the bundle names)")
    i.add_argument("--json", action="store_true", help="last line: the validation as JSON")
    i.set_defaults(func=_import)

    f = lsub.add_parser("fit", help="a table from whole-network measurements of a device",
                        description="Fit per-layer entries to whole-network latencies "
                                    "(M.jsonl: one {\"arch\": {...}, \"latency_ms\": x} per "
                                    "line); with --prior (a table of the same space from another "
                                    "device) 10-30 networks are enough.")
    f.add_argument("--space", required=True, help="shipped space name or path to a YAML file")
    f.add_argument("--measurements", required=True, help="JSON-lines file of measured networks")
    f.add_argument("--out", required=True, help="table file to write (must not exist)")
    f.add_argument("--prior", default=None, help="a table of the same space (e.g. this machine's)")
    f.add_argument("--device", default="device", help="the device's name (recorded)")
    f.add_argument("--json", action="store_true", help="last line: the cross-validation as JSON")
    f.set_defaults(func=_fit)

    p = lsub.add_parser("predict", help="predicted latency of many Archs (JSON lines)",
                        description="Read Archs (one JSON object per line: {label: value} or "
                                    "{\"arch\": {...}}) and print one {\"arch_id\", "
                                    "\"latency_ms\"} line per Arch.")
    p.add_argument("--table", required=True, help="table file")
    p.add_argument("--archs", required=True, help="JSON-lines file of Archs ('-' = stdin)")
    p.add_argument("--space", default=None, help="space YAML (default: the one named in the table)")
    p.set_defaults(func=_predict)


def _bundle(args: argparse.Namespace) -> int:
    from nas.latency.bundle import MANIFEST_FILE, RUNNER_FILE, write_bundle
    from nas.latency.table import LatencyTable
    from nas.space import Space

    if args.batch < 1:
        raise NasInputError(f"{args.batch} is not allowed; expected an integer >= 1",
                            field="--batch")
    space = Space.by_name(args.space)
    prior = LatencyTable.load(args.prior, space) if args.prior else None
    manifest = write_bundle(space, args.out, batch=args.batch,
                            calibration_samples=args.calibration_samples,
                            validation_samples=args.validation_samples, prior=prior,
                            fmt=args.format)
    roles = [it["role"] for it in manifest["items"]]
    print(f"wrote {args.out}: {roles.count('layer')} layers, {roles.count('calibration')} "
          f"calibration and {roles.count('validation')} validation networks, {MANIFEST_FILE}, "
          f"{RUNNER_FILE}")
    runtime = "ai-edge-litert" if args.format == "tflite" else "onnxruntime"
    print(f"  on the device: python {RUNNER_FILE} [--threads 1] [--provider ...]  (needs numpy "
          f"and {runtime}); then: nas latency import results.json --out TABLE")
    return 0


def _import(args: argparse.Namespace) -> int:
    from nas.latency.bundle_import import import_results

    table, report = import_results(args.results, args.out, space=args.space, bundle=args.bundle)
    print(f"wrote {args.out}: {len(table.entries)} entries measured on {table.remote_device}; "
          f"calibration on {len(table.data['calibration']['points'])} networks")
    if report:
        tau = report.get("kendall_tau")
        print(f"  validation on {report['n']} bundle networks: within +-10% "
              f"{100 * report['within_10pct']:.1f}%, rmspe {report['rmspe']:.2f}%, kendall tau "
              + ("-" if tau is None else f"{tau:.3f}"))
    if args.json:
        print(json.dumps({"table": args.out, **{k: report.get(k) for k in (
            "within_10pct", "rmspe", "kendall_tau", "n")}}))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from nas.latency.fit import fit_table, read_measurements
    from nas.latency.table import LatencyTable
    from nas.space import Space

    space = Space.by_name(args.space)
    prior = LatencyTable.load(args.prior, space) if args.prior else None
    points = read_measurements(args.measurements, space)
    table, report = fit_table(space, points, args.out, prior=prior, device=args.device,
                              source=args.measurements)
    tau = report.get("kendall_tau")
    print(f"wrote {args.out}: {len(table.entries)} entries fitted to {report['n']} networks "
          f"({'prior ' + args.prior if prior else 'MACs estimate as prior'}; scale "
          f"{report['scale']:.3f})")
    print(f"  {report['folds']}-fold cross-validation: within +-10% "
          f"{100 * report['within_10pct']:.1f}%, rmspe {report['rmspe']:.2f}%, kendall tau "
          + ("-" if tau is None else f"{tau:.3f}"))
    if args.json:
        print(json.dumps({"table": args.out, **report}))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from nas.latency.table import LatencyTable
    from nas.space import Space

    space = Space.by_name(args.space) if args.space else None
    table = LatencyTable.load(args.table, space)
    stream = sys.stdin if args.archs == "-" else open(args.archs)
    source = "<stdin>" if args.archs == "-" else args.archs
    lines = []
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise NasInputError(f"line {n} is not JSON ({e.msg})", source, f"line {n}") from None
            arch = obj.get("arch", obj) if isinstance(obj, dict) else None
            if not isinstance(arch, dict):
                raise NasInputError(f"line {n}: expected an Arch object {{label: value}}", source,
                                    f"line {n}")
            lines.append(table.space.validate(arch, f"{source} line {n}"))
    for arch, ms in zip(lines, table.predict_many(lines)):
        print(json.dumps({"arch_id": table.space.arch_id(arch), "latency_ms": round(ms, 6)}))
    return 0
