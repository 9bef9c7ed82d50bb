"""``nas latency build|validate|check|show`` (and, from :mod:`nas.commands.latency_device_cmd`,
``bundle|import|predict``): device latency lookup tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas.commands import latency_device_cmd
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
    b.add_argument("--network-processes", type=int, default=1,
                   help="fresh worker processes that time each calibration network, median "
                        "kept (default 1; 3 where whole-network times vary by process, e.g. "
                        "jax networks of several ms)")
    _timing_args(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    v = lsub.add_parser("validate", help="compare predictions with end-to-end measurements",
                        description="Measure the table's fastest and slowest Archs and Archs "
                                    "drawn stratified over its predicted range (none it was "
                                    "calibrated on), or given arch files, end to end; print and "
                                    "store the result in the table (field 'validation').")
    _table_args(v)
    v.add_argument("--samples", type=int, default=50,
                   help="Archs: the fastest, the slowest and stratified ones (default 50)")
    v.add_argument("--seed", type=int, default=0, help="seed of the stratified draw (default 0)")
    v.add_argument("--archs", nargs="+", metavar="FILE", default=None,
                   help="validate these arch files instead (not stored in the table)")
    v.add_argument("--plot", default=None,
                   help="scatter PNG to write (default: ./validate-<space>-<backend>.png; never "
                        "in the table's folder)")
    v.add_argument("--no-store", action="store_true",
                   help="do not write the result into the table file")
    v.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    v.add_argument("--processes", type=int, default=1,
                   help="fresh worker processes that time each Arch, median kept (default 1)")
    v.add_argument("--json", action="store_true", help="last line: the report as one JSON object")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.set_defaults(func=_validate)

    c = lsub.add_parser("check", help="does the table still fit this machine? (under a minute)",
                        description="Re-measure a fixed sample of the table's entries and "
                                    "calibration networks the way it was built and print the "
                                    "drift ratio measured / table with a verdict (exit 0: fits, "
                                    "1: rebuild).")
    _table_args(c)
    c.add_argument("--entries", type=int, default=12, help="entries to re-measure (default 12)")
    c.add_argument("--networks", type=int, default=3,
                   help="calibration networks to re-measure (default 3)")
    c.add_argument("--threshold", type=float, default=0.15,
                   help="drift tolerated, |ratio - 1| (default 0.15)")
    c.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_check)

    s = lsub.add_parser("show", help="print a table's provenance and calibration, or predict an Arch")
    _table_args(s)
    s.add_argument("--arch", default=None, help="arch JSON file: print its predicted latency")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_show)
    latency_device_cmd.register(lsub)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="table file")
    p.add_argument("--space", default=None, help="space YAML (default: the one named in the table)")


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

    for field in ("batch", "min_reps", "rounds", "network_processes"):
        _positive(getattr(args, field), f"--{field.replace('_', '-')}")
    space = Space.by_name(args.space)
    timing = TimingConfig(warmup=args.warmup, min_reps=args.min_reps,
                          max_reps=max(args.min_reps, TimingConfig().max_reps),
                          min_seconds=args.min_seconds, rounds=args.rounds,
                          extra_rounds=max(0, args.extra_rounds))
    table = build_table(space, args.backend, args.out, batch=args.batch, timing=timing,
                        threads=args.threads, core=args.core, realtime=args.realtime,
                        calibration_samples=args.calibration_samples,
                        progress=not args.no_progress, network_processes=args.network_processes)
    print(f"wrote {args.out}: {len(table.entries)} entries; calibration "
          f"{describe_model(table.model)}")
    return 0


def default_plot_path(table) -> Path:
    """Returns the default scatter plot of ``validate``: in the current folder, named after the
    table's space and backend (never next to the table: shipped files stay untouched)."""
    return Path.cwd() / f"validate-{table.space.name}-{table.backend}.png"


def _plot_path(args: argparse.Namespace, table) -> Path:
    """Returns where validate writes its plot: --plot as given, else the current folder (refused
    when that is the table's own folder, so that no default ever lands next to a table)."""
    if args.plot:
        if Path(args.plot).resolve() == Path(args.table).resolve():
            raise NasInputError("is the table file itself; give a .png path", field="--plot")
        return Path(args.plot)
    plot = default_plot_path(table)
    if plot.resolve().parent == Path(args.table).resolve().parent:
        raise NasInputError("the default plot would land next to the table (the current folder "
                            "is the table's); give one, e.g. --plot /tmp/validate.png",
                            field="--plot")
    return plot


def _validate(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch
    from nas.latency.validate import store_validation, validate_table, validation_record

    if args.samples < 2 and not args.archs:
        raise NasInputError(f"{args.samples} is not allowed; expected an integer >= 2 (the "
                            "fastest and the slowest Arch are always measured)", field="--samples")
    _positive(args.processes, "--processes")
    table = _load(args)
    plot = _plot_path(args, table)
    archs = None
    if args.archs:
        archs = []
        for path in args.archs:
            af = load_arch(path, table.space)
            if af.space.name != table.space.name:
                raise NasInputError(f"arch is of space {af.space.name!r}, the table measures "
                                    f"{table.space.name!r}", path, "space")
            archs.append((path, af.arch))
    report = validate_table(table, args.samples, args.seed, archs=archs, core=args.core,
                            plot=plot, progress=not args.no_progress, processes=args.processes)
    stored = archs is None and not args.no_store
    if stored:
        store_validation(table, validation_record(report, args.seed))
    plain = report["plain_sum"]
    what = f"{report['n']} Archs (seed {args.seed}, {report['sampling']})" if archs is None \
        else f"{report['n']} given Archs"
    print(f"{table.space.name}/{table.backend}: {what}: {_metrics_text(report)}")
    print(f"  plain sum of entries: within +-10%: {100 * plain['within_10pct']:.1f}%  "
          f"rmspe {plain['rmspe']:.2f}%")
    for role, e in report["extremes"].items():
        print(f"  {role} Arch {e['arch_id']}: predicted {e['predicted_ms']:.4f} ms, measured "
              f"{e['measured_ms']:.4f} ms")
    print(f"  scatter plot: {plot}" + (f"; stored in {args.table} (validation)" if stored else ""))
    if args.json:
        out = {k: report[k] for k in ("within_10pct", "rmse_ms", "rmspe", "kendall_tau", "n",
                                      "sampling", "extremes", "calibration_overlap", "machine",
                                      "points")}
        out.update(plain_sum=plain, table=args.table, seed=args.seed, plot=str(plot),
                   stored=stored)
        print(json.dumps(out))
    return 0


def _metrics_text(m: dict) -> str:
    tau = m.get("kendall_tau")
    rmse = m.get("rmse_ms", float("nan"))
    return (f"within +-10%: {100 * m['within_10pct']:.1f}%  rmse {rmse:.4f} ms  "
            f"rmspe {m['rmspe']:.2f}%  kendall tau "
            + ("-" if tau is None else f"{tau:.3f}"))


def _check(args: argparse.Namespace) -> int:
    from nas.latency.check import check_table

    for field in ("entries", "networks"):
        if getattr(args, field) < 0:
            raise NasInputError(f"{getattr(args, field)} is not allowed; expected an integer >= 0",
                                field=f"--{field}")
    if not args.threshold > 0:
        raise NasInputError(f"{args.threshold} is not allowed; expected a number > 0 "
                            "(e.g. 0.15)", field="--threshold")
    table = _load(args)
    report = check_table(table, n_entries=args.entries, n_networks=args.networks,
                         core=args.core, threshold=args.threshold)
    if args.json:
        print(json.dumps({"table": args.table, **report}))
    else:
        print(f"{args.table}: re-measured {report['n']} items: measured / table = "
              f"{report['ratio_median']:.3f} median (p10 {report['ratio_p10']:.3f}, p90 "
              f"{report['ratio_p90']:.3f}, min {report['ratio_min']:.3f}, max "
              f"{report['ratio_max']:.3f})")
        print(f"  {report['verdict']}")
    return 0 if report["fits"] else 1


def _show(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch

    table = _load(args)
    d = table.data
    info = {"table": args.table, "space": d["space"], "backend": d["backend"],
            "provenance": d["provenance"], "complete": d.get("complete", False),
            "entries": len(d["entries"]), "calibration": table.model,
            "validation": d.get("validation")}
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
    val = d.get("validation")
    if val is None:
        print("  validation: none stored; run 'nas latency validate --table "
              f"{args.table} --samples 100'")
    else:
        m = val.get("machine", {})
        print(f"  validation ({val['date']}, n={val['n']}, {val['sampling']}, on "
              f"{m.get('cpu_model')} {m.get('host', '')}): {_metrics_text(val)}")
    if args.arch:
        a = info["arch"]
        print(f"  {a['path']} ({a['arch_id']}): predicted {a['predicted_ms']:.4f} ms (plain sum "
              f"{a['plain_sum_ms']:.4f} ms), energy {a['energy_mj']:.4g} mJ ({a['source']})")
    return 0
