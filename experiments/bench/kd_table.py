"""KD table: does distilling from the space's largest Arch beat training the student from scratch?

For each seed (``--seeds N``: seeds 0..N-1, each its own data split and training seed), trains
the space's largest Arch as the teacher (:func:`nas.metrics.largest_arch`, ``--teacher-epochs``),
then a fixed student Arch twice with the same settings and epochs (``--epochs``): from scratch,
and with knowledge distillation from that teacher (Hinton soft targets, ``--temperature``,
``--kd-weight``; :func:`nas.training.distill.distill_arch`, what ``nas run``'s distill stage
does with its default ``distill.teacher: largest``). Prints the teacher's test accuracy, the
per-seed and mean +- std test accuracy of scratch vs KD, and whether KD is not worse than
scratch on average (issue 18's bar).

The student is ``--student PATH`` (an Arch JSON file of the space) or, for ``tiny``, a small
built-in Arch (3x3 kernels, expansion 3, half width, skips where allowed). Every training keeps
its own folder under ``--workdir`` (keyed by its settings); a rerun reuses finished trainings and
resumes unfinished ones from their checkpoints.

The full run (the lead's, alone on a quiet machine; roughly an hour on 2 CPU cores, not measured):

    python experiments/bench/kd_table.py --space tiny --data digits --seeds 5 --epochs 15 \
        --teacher-epochs 30 --workdir runs/kd_table --out runs/kd_table/kd_table.json

A smoke run (minutes, meaningless numbers):

    python experiments/bench/kd_table.py --seeds 1 --epochs 1 --teacher-epochs 1 \
        --workdir /tmp/kd_table_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from nas.archfile import load_arch  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.errors import NasInputError  # noqa: E402
from nas.metrics import arch_metrics, largest_arch  # noqa: E402
from nas.runs.stages import write_json_atomic  # noqa: E402
from nas.runs.teacher import cached_training, training_key  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.training.checkpoint import load_trained  # noqa: E402
from nas.training.distill import DistillConfig, distill_arch  # noqa: E402
from nas.training.loop import RESULT_FILE  # noqa: E402
from nas.training.trainer import TrainConfig  # noqa: E402

#: The default student of the tiny space: 3x3 kernels, expansion 3, half width, skips where allowed.
TINY_STUDENT = {"s1_b1_op": "dwsep", "s1_b1_kernel": 3, "s2_b1_kernel": 3, "s2_b1_expand": 3,
                "s2_b1_bits_w": 32, "s2_b1_width": 0.5, "s2_b2_op": "skip", "s3_b1_kernel": 3,
                "s3_b1_expand": 3, "s3_b1_se": False, "s3_b1_bits_w": 32, "s3_b1_width": 0.5,
                "s3_b2_op": "skip", "s4_b1_kernel": 3, "s4_b1_expand": 3, "s4_b1_bits_w": 32,
                "s4_b1_rank": None}


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's settings (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny", help="a space name or YAML file")
    ap.add_argument("--data", default="digits", help="data spec (digits, npz:PATH, cifar10:DIR)")
    ap.add_argument("--student", default=None,
                    help="Arch JSON file of the student (default for tiny: a small built-in Arch)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (>= 3 for the bar)")
    ap.add_argument("--epochs", type=int, default=15, help="student epochs (scratch and KD)")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=0.003)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--kd-weight", type=float, default=0.7)
    ap.add_argument("--workdir", required=True, help="folder of the trainings (reused on rerun)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    for name in ("seeds", "epochs", "teacher_epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def student_arch(space: Space, path: str | None) -> dict:
    """Returns the student Arch: the file's, or the built-in one of ``tiny``.

    Raises:
        NasInputError: no file for a space other than tiny, or an Arch of another space.
    """
    if path is None:
        if space.name != "tiny":
            raise NasInputError("give the student of this space with --student ARCH.json",
                                field="--student")
        firsts = {label: vals[0] for label, vals in space.decisions()}  # for irrelevant labels
        return space.validate({**firsts, **TINY_STUDENT})
    return load_arch(path, space).arch


def distilled(space: Space, arch: dict, data, settings: dict, seed: int, dconfig: DistillConfig,
              teacher_wd: Path, root: Path) -> dict:
    """Trains (or reuses) the student distilled from the teacher in `teacher_wd`; returns its
    result.json."""
    key = training_key(space.name, space.arch_id(arch),
                       {**settings, "distill": dconfig.to_dict(), "teacher": str(teacher_wd)},
                       seed, data.name)
    wd = root / f"{space.arch_id(arch)}-{key}"
    if not (wd / RESULT_FILE).exists():
        _, tmodel, tvars, _ = load_trained(teacher_wd)
        distill_arch(space, arch, data, TrainConfig(**settings, seed=seed), dconfig,
                     [(tmodel, tvars)], workdir=str(wd), teacher_ids=[str(teacher_wd)])
    return json.loads((wd / RESULT_FILE).read_text())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Returns (mean, sample std; 0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None) -> int:
    """Runs the benchmark; prints the KD table. Returns the exit code."""
    args = parse_args(argv)
    try:
        space = Space.by_name(args.space)
        student = student_arch(space, args.student)
    except NasInputError as e:
        print(f"kd_table: {e}", file=sys.stderr)
        return 2
    teacher = largest_arch(space)
    root = Path(args.workdir)
    common = {"batch_size": args.batch_size, "learning_rate": args.learning_rate}
    s_train = {**common, "epochs": args.epochs}
    t_train = {**common, "epochs": args.teacher_epochs}
    dconfig = DistillConfig(temperature=args.temperature, kd_weight=args.kd_weight).validate()
    s_cost, t_cost = arch_metrics(space, student), arch_metrics(space, teacher)
    print(f"space {space.name}, data {args.data}; teacher = largest Arch {space.arch_id(teacher)} "
          f"({t_cost['macs']} MACs, {t_cost['params']} params, {args.teacher_epochs} epochs); "
          f"student {space.arch_id(student)} ({s_cost['macs']} MACs, {s_cost['params']} params, "
          f"{args.epochs} epochs, scratch and KD)", flush=True)
    rows = []
    start = time.time()
    for seed in range(args.seeds):
        data = load_data(args.data, space, seed=seed)
        t_wd, t_res = cached_training(space, teacher, data, args.data, t_train, seed,
                                      root / "teacher")
        _, scratch = cached_training(space, student, data, args.data, s_train, seed,
                                     root / "scratch")
        kd = distilled(space, student, data, s_train, seed, dconfig, t_wd, root / "kd")
        rows.append({"seed": seed, "teacher": t_res["test_accuracy"],
                     "scratch": scratch["test_accuracy"], "kd": kd["test_accuracy"]})
        r = rows[-1]
        print(f"seed {seed}: teacher {r['teacher']:.4f}  scratch {r['scratch']:.4f}  "
              f"KD {r['kd']:.4f}  KD - scratch {100 * (r['kd'] - r['scratch']):+.2f} points",
              flush=True)
    stats = {k: mean_std([r[k] for r in rows]) for k in ("teacher", "scratch", "kd")}
    gain = mean_std([r["kd"] - r["scratch"] for r in rows])
    not_worse = stats["kd"][0] >= stats["scratch"][0]
    print()
    print(f"| test accuracy over {len(rows)} seeds | mean | std |")
    print("|---|---:|---:|")
    for name, key in (("teacher (largest Arch)", "teacher"), ("student from scratch", "scratch"),
                      ("student with KD", "kd")):
        print(f"| {name} | {stats[key][0]:.4f} | {stats[key][1]:.4f} |")
    print(f"| KD - scratch (points) | {100 * gain[0]:+.2f} | {100 * gain[1]:.2f} |")
    print(f"KD not worse than scratch on average: {'yes' if not_worse else 'NO'} "
          f"({time.time() - start:.0f} s)")
    if args.out:
        write_json_atomic(Path(args.out), {
            "settings": vars(args), "teacher_arch": teacher, "student_arch": student,
            "teacher_cost": {k: t_cost[k] for k in ("macs", "params")},
            "student_cost": {k: s_cost[k] for k in ("macs", "params")}, "rows": rows,
            "mean_std": stats, "kd_minus_scratch": gain, "kd_not_worse": not_worse})
    return 0


if __name__ == "__main__":
    sys.exit(main())
