"""``nas latency build|validate|show``: device latency lookup tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.errors import NasInputError
from nas.latency.calibrate import describe_model


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``latency`` command group.

    Args:
        sub: the top-level subparsers object.
    """
    from nas.latency.backends import BACKENDS

    p = sub.add_parser("latency", help="build, validate and inspect latency lookup tables",
                       description="Latency lookup tables: per-layer latencies of a space, "
                                   "measured on one backend (see latency_tables/README.md).")
    lsub = p.add_subparsers(dest="latency_command", metavar="SUBCOMMAND", parser_class=type(p))

    b = lsub.add_parser("build", help="measure every distinct layer of a space (resumable)")
    b.add_argument("--space", required=True, help="shipped space name or path to a YAML file")
    b.add_argument("--backend", required=True, choices=sorted(BACKENDS))
    b.add_argument("--out", required=True, help="table file to write (resumed if it exists)")
    b.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    b.add_argument("--threads", type=int, default=1, choices=(0, 1),
                   help="1: one core, one thread (default); 0: the runtime's defaults, unpinned")
    b.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    b.add_argument("--realtime", action="store_true",
                   help="measure at real-time priority (SCHED_FIFO 1) where permitted: on a shared "
                        "machine other processes then cannot cut the timed calls (validate "
                        "follows the table)")
    b.add_argument("--calibration-samples", type=int, default=40,
                   help="random Archs measured end to end to calibrate (default 40)")
    _timing_args(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    v = lsub.add_parser("validate", help="compare predictions with end-to-end measurements")
    v.add_argument("--table", required=True, help="table file")
    v.add_argument("--space", default=None, help="space YAML (default: the shipped space named "
                                                 "in the table)")
    v.add_argument("--samples", type=int, default=50, help="random Archs (default 50)")
    v.add_argument("--seed", type=int, default=0, help="seed of the Archs (default 0)")
    v.add_argument("--plot", default=None,
                   help="scatter PNG to write (default: next to the table, *-validate.png)")
    v.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    v.add_argument("--json", action="store_true", help="last line: the report as one JSON object")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.set_defaults(func=_validate)

    s = lsub.add_parser("show", help="print a table's provenance and calibration, or predict an Arch")
    s.add_argument("--table", required=True, help="table file")
    s.add_argument("--space", default=None, help="space YAML (default: the one named in the table)")
    s.add_argument("--arch", default=None, help="arch JSON file: print its predicted latency")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_show)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _timing_args(p: argparse.ArgumentParser) -> None:
    from nas.latency.measure import TimingConfig

    d = TimingConfig()
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up calls (default {d.warmup})")
    p.add_argument("--min-reps", type=int, default=d.min_reps,
                   help=f"timed calls at least (default {d.min_reps})")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help=f"time per item at least (default {d.min_seconds})")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help=f"rounds the reps are split into, lowest median kept (default {d.rounds})")
    p.add_argument("--extra-rounds", type=int, default=d.extra_rounds,
                   help="more rounds for an item whose rounds were all disturbed "
                        f"(default {d.extra_rounds})")


def _positive(value: int, field: str) -> None:
    if value < 1:
        raise NasInputError(f"{value} is not allowed; expected an integer >= 1", field=field)


def _load(args: argparse.Namespace):
    from nas.latency.table import LatencyTable
    from nas.space import Space

    space = Space.by_name(args.space) if args.space else None
    return LatencyTable.load(args.table, space)


def _build(args: argparse.Namespace) -> int:
    from nas.latency.build import build_table
    from nas.latency.measure import TimingConfig
    from nas.space import Space

    for field in ("batch", "min_reps", "rounds"):
        _positive(getattr(args, field), f"--{field.replace('_', '-')}")
    space = Space.by_name(args.space)
    timing = TimingConfig(warmup=args.warmup, min_reps=args.min_reps,
                          max_reps=max(args.min_reps, TimingConfig().max_reps),
                          min_seconds=args.min_seconds, rounds=args.rounds,
                          extra_rounds=max(0, args.extra_rounds))
    table = build_table(space, args.backend, args.out, batch=args.batch, timing=timing,
                        threads=args.threads, core=args.core, realtime=args.realtime,
                        calibration_samples=args.calibration_samples,
                        progress=not args.no_progress)
    print(f"wrote {args.out}: {len(table.entries)} entries; calibration "
          f"{describe_model(table.model)}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from nas.latency.validate import validate_table

    _positive(args.samples, "--samples")
    table = _load(args)
    plot = args.plot or str(Path(args.table).with_suffix("")) + "-validate.png"
    report = validate_table(table, args.samples, args.seed, core=args.core, plot=plot,
                            progress=not args.no_progress)
    plain = report["plain_sum"]
    print(f"{table.space.name}/{table.backend}: {report['n']} Archs (seed {args.seed}): "
          f"within +-10%: {100 * report['within_10pct']:.1f}%  rmse {report['rmse_ms']:.4f} ms  "
          f"rmspe {report['rmspe']:.2f}%  kendall tau {report['kendall_tau']:.3f}")
    print(f"  plain sum of entries: within +-10%: {100 * plain['within_10pct']:.1f}%  "
          f"rmspe {plain['rmspe']:.2f}%")
    print(f"  scatter plot: {plot}")
    if args.json:
        out = {k: report[k] for k in ("within_10pct", "rmse_ms", "rmspe", "kendall_tau", "n")}
        out.update(plain_sum=plain, table=args.table, seed=args.seed, plot=plot)
        print(json.dumps(out))
    return 0


def _show(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch

    table = _load(args)
    d = table.data
    info = {"table": args.table, "space": d["space"], "backend": d["backend"],
            "provenance": d["provenance"], "complete": d.get("complete", False),
            "entries": len(d["entries"]), "calibration": table.model}
    if args.arch:
        af = load_arch(args.arch, table.space)
        if af.space.name != table.space.name:
            raise NasInputError(f"arch is of space {af.space.name!r}, the table measures "
                                f"{table.space.name!r}", args.arch, "space")
        arch = table.space.validate(af.arch, args.arch)
        info["arch"] = {"path": args.arch, "arch_id": table.space.arch_id(arch),
                        "predicted_ms": round(table.predict(arch), 5),
                        "plain_sum_ms": round(table.plain_sum(arch), 5),
                        **table.energy_mj(arch)}
    if args.json:
        print(json.dumps(info))
        return 0
    prov = d["provenance"]
    print(f"{args.table}: space {d['space']['name']}, backend {table.backend} "
          f"({', '.join(f'{k} {v}' for k, v in d['backend']['versions'].items())}) on "
          f"{d['backend']['device']}, precision rule {table.rule}")
    print(f"  measured {prov['date']} on {prov['cpu_model']}, cores {prov.get('cores')}, "
          f"threads {prov['threads']}, batch {prov['batch']}; "
          f"{info['entries']} entries{'' if info['complete'] else ' (incomplete build)'}")
    print(f"  calibration: {describe_model(info['calibration'])}")
    if args.arch:
        a = info["arch"]
        print(f"  {a['path']} ({a['arch_id']}): predicted {a['predicted_ms']:.4f} ms (plain sum "
              f"{a['plain_sum_ms']:.4f} ms), energy {a['energy_mj']:.4g} mJ ({a['source']})")
    return 0
