"""``nas specialize``: train once, specialize for many devices (Once-for-All).

One spos (or single_path) supernet, one latency table and target per device: an evolutionary
search per device over the sub-networks that meet its target, scored by their supernet accuracy
(or an MLP accuracy predictor fitted on supernet scores), no training; each device's Arch is
written with its child weights (:mod:`nas.specialize`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.errors import NasInputError


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``specialize`` command.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser(
        "specialize", help="one trained supernet -> one searched Arch per device (no training)",
        description="Search a trained spos / single_path supernet once per device: an "
                    "evolution over its sub-networks that meet the device's latency target "
                    "(its table's prediction), ranked by supernet accuracy (each sub-network's "
                    "BatchNorm recalibrated on training images) or, with --predictor mlp, by an "
                    "MLP fitted on supernet scores (its held-out rank correlation is printed; "
                    "the best candidates are re-scored on the supernet). Writes OUT/<device>/"
                    "arch.json (meta: predicted latency, supernet accuracy), OUT/<device>/child/ "
                    "(its weights cut from the supernet, a 'nas train' workdir that 'nas export "
                    "--ckpt' reads), OUT/<device>/specialize.json and OUT/specialize.json.",
        epilog="Example: nas specialize --supernet runs/digits_spos --table "
               "latency_tables/onnxruntime-cpu/tiny.json --table latency_tables/jax-cpu/tiny.json "
               "--target 0.06 --target 0.25 --out runs/specialized")
    p.add_argument("--supernet", required=True,
                   help="workdir of a finished 'nas search' with strategy spos (or single_path)")
    p.add_argument("--table", action="append", default=[], metavar="TABLE",
                   help="a device's latency table of the supernet's space (repeat per device)")
    p.add_argument("--target", action="append", type=float, default=[], metavar="MS",
                   help="latency target in ms: once (every device) or once per --table, in order")
    p.add_argument("--out", required=True, help="output folder (one subfolder per device)")
    p.add_argument("--predictor", choices=("none", "mlp"), default="none",
                   help="rank the evolution by an MLP accuracy predictor (default none: every "
                        "candidate scored on the supernet)")
    p.add_argument("--predictor-archs", type=int, default=200,
                   help="sub-networks scored on the supernet to fit (80%%) and check (20%%) the "
                        "predictor (default 200)")
    p.add_argument("--recheck", type=int, default=10,
                   help="with a predictor: best candidates per device re-scored on the supernet "
                        "(default 10)")
    p.add_argument("--prior", choices=("none", "macs"), default="none",
                   help="macs: rank by the mean of the accuracy estimate's and the MACs' "
                        "percentiles in a fixed sample of uniform sub-networks (weight sharing "
                        "ranks large sub-networks too low; default none)")
    p.add_argument("--prior-archs", type=int, default=64,
                   help="uniform sub-networks scored on the supernet as the prior's reference "
                        "(default 64)")
    p.add_argument("--population", type=int, default=32, help="population (default 32)")
    p.add_argument("--generations", type=int, default=20, help="generations (default 20)")
    p.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="training images each sub-network's BatchNorm is recalibrated on "
                        "(default 512)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.set_defaults(func=_specialize)


def _positive(value: int, flag: str, least: int = 1) -> None:
    if value < least:
        raise NasInputError(f"{value} is not allowed; give an integer >= {least}", field=flag)


def _specialize(args: argparse.Namespace) -> int:
    import sys

    from nas.specialize.devices import load_devices, supernet_record
    from nas.specialize.evolution import EvolutionSettings
    from nas.specialize.run import SpecializeOptions, specialize

    _positive(args.population, "--population", 2)
    _positive(args.generations, "--generations", 0)
    _positive(args.predictor_archs, "--predictor-archs", 8)
    _positive(args.recheck, "--recheck")
    _positive(args.prior_archs, "--prior-archs", 2)
    _positive(args.calibration_images, "--calibration-images")
    record = supernet_record(args.supernet)
    devices = load_devices(args.table, args.target, record.space)
    options = SpecializeOptions(
        evolution=EvolutionSettings(population=args.population, generations=args.generations,
                                    seed=args.seed),
        predictor=args.predictor, predictor_archs=args.predictor_archs, recheck=args.recheck,
        prior=args.prior, prior_archs=args.prior_archs,
        calibration_images=args.calibration_images)
    log = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    summary = specialize(record, devices, Path(args.out), options, log)
    for line in summary["unmet"]:
        sys.stderr.write(f"nas: error: --target: {line}\n")
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 2 if summary["unmet"] else 0


def print_summary(summary: dict) -> None:
    """Prints one line per device: target, Arch id, predicted latency, supernet accuracy, time."""
    print(f"specialized {summary['supernet']} for {len(summary['devices'])} device(s) in "
          f"{summary['seconds']:.1f} s ({summary['supernet_scored']} sub-networks scored on the "
          f"supernet{'; ranked with the MACs prior' if summary.get('prior') else ''})")
    print(f"  {'device':<32} {'target ms':>10} {'latency ms':>11} {'val acc':>8} {'test acc':>8} "
          f"{'arch id':<13} {'seconds':>8}")
    for d in summary["devices"]:
        if not d["met"]:
            print(f"  {d['device']:<32} {d['target_ms']:>10.4g} {'-':>11}  (fastest "
                  f"{d['fastest_ms']:.4g} ms: not met)")
            continue
        test = "-" if d["test_accuracy"] is None else f"{d['test_accuracy']:.4f}"
        print(f"  {d['device']:<32} {d['target_ms']:>10.4g} {d['latency_ms']:>11.4g} "
              f"{d['val_accuracy']:>8.4f} {test:>8} {d['arch_id']:<13} {d['seconds']:>8.1f}")
    print(f"wrote {summary['summary_file']}; each device's arch.json, child/ and specialize.json "
          f"under {summary['out']}/<device>/")
