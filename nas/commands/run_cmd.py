"""``nas run CONFIG --workdir W``: the whole pipeline, search -> retrain -> distill -> export."""

from __future__ import annotations

import argparse
import json

from nas.commands.search_cmd import drift_check
from nas.runs.workdir import add_resume_flag, locked_command


RUN_DESCRIPTION = """\
Run the whole pipeline a YAML config describes, one stage after the other:
  1. search   the architecture search, as 'nas search' (random, evolution, rl, nsga2, fbnet,
              proxyless or single_path)
  2. retrain  the retrain.top_k best distinct candidates, from scratch (on Ray when
              executor.kind is ray); the winner is the best by the objective
  3. distill  the winner from a teacher (distill.teacher: largest (default: the space's
              largest Arch, trained once) | best | top:K | arch:PATH | ckpt:DIR), and the
              winner from scratch for the same epochs; the better of student and
              retrained winner is kept
  4. export   JSON, packed ints, orbax, StableHLO, ONNX; each file is loaded back and
              checked against the JAX model, the ONNX latency is measured

The config is a search config (space, data, seed, budget, strategy, objective,
latency_table, train, executor) plus the optional sections retrain (top_k, train),
distill (enabled, teacher, train, teacher_train, temperature, kd_weight, hint_weight)
and export (formats, calibration, measure_latency, onnx_int8_weights); the shipped
experiments/digits_<strategy>.yaml files comment every field they set. A config may
start from another (extends: PATH) and carry a smoke: section of overrides that
--smoke applies (experiments/digits_<strategy>_smoke.yaml: extends + smoke: true).

Outputs, all under WORKDIR:
  search/  retrain/<arch_id>/  distill/     each stage's files (checkpoints, metrics)
  export/      model.onnx, model.stablehlo, model.npk, orbax/, arch.json, export.json
  report.md    the winner, its metrics, the KD table, predicted vs measured latency, plots
  plots/*.png  Pareto fronts (accuracy vs latency, accuracy vs size);  tb/  TensorBoard
  stages/*.json  a marker per finished stage: running the same command again skips
               finished stages and resumes an interrupted one (same config needed)."""

RUN_EPILOG = """\
Examples:
  nas run experiments/digits_random_smoke.yaml --workdir runs/smoke   (minutes on 2 CPUs)
  nas run experiments/digits_fbnet_smoke.yaml --workdir runs/fb --json | tail -1
  nas run experiments/cifar10_fbnet_pipeline.yaml --workdir runs/c10 --ray-address auto
Exit status: 0 done, 1 an export check failed, 2 bad input (one line says what to fix)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``run`` and ``report`` commands.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser(
        "run", help="search, retrain the top-k, distill the winner and export it, in one command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=RUN_DESCRIPTION, epilog=RUN_EPILOG)
    p.add_argument("config", help="pipeline config (YAML): a search config plus optional "
                                  "retrain, distill and export sections")
    p.add_argument("--workdir", required=True, help="output folder (resumed if it holds a run)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object as the last line (no progress bars)")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="train on an existing Ray cluster (sets executor.kind: ray)")
    p.add_argument("--budget", type=int, help="override the config's search budget")
    p.add_argument("--smoke", action="store_true",
                   help="apply the config's smoke: overrides (a run of minutes; see extends:/smoke: in README)")
    p.add_argument("--no-drift-check", action="store_true",
                   help="skip the quick check that the latency table still fits this machine")
    add_resume_flag(p)
    p.set_defaults(func=_run_validated)

    r = sub.add_parser("report", help="rebuild report.md, plots and TensorBoard logs of a run",
                       description="Rebuild WORKDIR/report.md, WORKDIR/plots/*.png and "
                                   "WORKDIR/tb/ from a (possibly unfinished) 'nas run' workdir, "
                                   "and print the candidates table.")
    r.add_argument("--workdir", required=True, help="the workdir of a 'nas run'")
    r.add_argument("--json", action="store_true", help="print the report summary as JSON")
    r.set_defaults(func=_report)


def _run_validated(args: argparse.Namespace) -> int:
    """Validates the config and flags before the workdir is locked (bad input creates nothing)."""
    from nas.runs.config import apply_cli_overrides, load_config

    args.loaded = load_config(args.config, smoke=args.smoke)
    apply_cli_overrides(args.loaded.config, args.ray_address, args.budget)
    drift_check(args.loaded, args.no_drift_check)
    return locked_command("nas run", _run)(args)


def _run(args: argparse.Namespace) -> int:
    from nas.runs.pipeline import run_pipeline
    from nas.runs.report import candidates_table, load_history, stage_result

    loaded = args.loaded  # loaded and checked by _run_validated
    summary = run_pipeline(loaded, args.workdir, progress=not args.json,
                           log=(lambda m: None) if args.json else None)
    if args.json:
        print(json.dumps(summary, default=float))
        return 0 if summary["export_ok"] else 1
    from pathlib import Path

    wd = Path(summary["workdir"])
    print(candidates_table(load_history(wd), stage_result(wd, "retrain")))
    w = summary["winner"]
    print(f"winner {w['arch_id']}: test accuracy {w['test_accuracy']:.4f}, "
          f"latency {w['latency_ms'] if w['latency_ms'] is not None else '-'} ms (predicted)")
    export = stage_result(wd, "export") or {}
    for fmt, f in (export.get("files") or {}).items():
        c = (export.get("checks") or {}).get(fmt)
        status = "" if c is None else (" ok" if c["ok"] else " FAIL")
        print(f"  {fmt:<10} {f['bytes']:>9} B  {f['path']}{status}")
    lat = export.get("latency") or {}
    if lat.get("measured_ms") is not None:
        pred = f" (table predicts {lat['predicted_ms']:.3f} ms)" if "predicted_ms" in lat else ""
        print(f"  onnxruntime latency {lat['measured_ms']:.3f} ms{pred}")
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s this run)")
    return 0 if summary["export_ok"] else 1


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nas.errors import NasInputError
    from nas.runs.report import write_report

    wd = Path(args.workdir)
    if not (wd / "search").is_dir():
        raise NasInputError("not a 'nas run' workdir (no search/ folder)", str(wd))
    info = write_report(wd)
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "table"}, default=float))
    else:
        print(info["table"])
        print(f"report: {info['report_md']}")
    return 0
