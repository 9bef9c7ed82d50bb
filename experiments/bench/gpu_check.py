"""The Python parts of ``experiments/bench/gpu_check.sh`` (one subcommand per part).

Each measuring subcommand prints one line starting with its part's name (``child:``,
``supernet:``, ``latency:``, ``ray:``) and writes ``OUT/<part>.json``; ``summary`` prints the
table of every part's wall time (``OUT/timings.tsv``, written by the shell script) and figure.

    python experiments/bench/gpu_check.py detect
    python experiments/bench/gpu_check.py child --space mixed --batch 128 --images 8000 --out OUT
    python experiments/bench/gpu_check.py supernet --space mixed --batch 64 --images 800 --out OUT
    python experiments/bench/gpu_check.py micro-space OUT/micro.yaml
    python experiments/bench/gpu_check.py latency-report OUT/latency.json --out OUT
    python experiments/bench/gpu_check.py ray-config OUT/ray.yaml --gpus 0.5 --candidates 1
    python experiments/bench/gpu_check.py ray-report --out OUT (--workdir W | --refused ERRFILE)
    python experiments/bench/gpu_check.py summary OUT

Figures are steady-state: ``child`` and ``supernet`` train two epochs and time the second (the
first compiles); an epoch's time excludes evaluation and includes the host-side batching (and,
at 32 px, the random crop + flip), as ``nas train`` and ``nas search`` run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[2]
#: The Arch values of a MobileNetV2-like child, by the label's last field (others: first choice).
MOBILENET_VALUES = {"op": "mbconv", "kernel": 3, "expand": 6, "bits_w": 32, "bits_a": 32,
                    "width": 1.0, "rank": None, "block": "k3_e6"}
#: The one-stage space of --quick runs: compiles in seconds on a CPU.
MICRO_SPACE_YAML = """\
name: gpu_check_micro
description: one small stage, for gpu_check.sh --quick
input: {resolution: 8, channels: 3}
num_classes: 10
stem: {channels: 8, kernel: 3, stride: 1}
head: {channels: 0}
stages:
  - {channels: 8, stride: 1, repeats: 1, knobs: {op: [mbconv, skip], kernel: 3, expand: 2}}
"""
#: Shipped latency tables the FBNet supernet's latency term may use, by space name.
SUPERNET_TABLES = {name: ROOT / "latency_tables" / "onnxruntime-cpu" / f"{name}.json"
                   for name in ("mixed", "tiny")}


def detect() -> dict[str, Any]:
    """Returns what JAX runs on here: {"platform", "devices", "kind", "nvidia_smi_gpus"}."""
    import jax

    devices = jax.devices()
    gpus = 0
    if shutil.which("nvidia-smi"):
        run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpus = sum(line.startswith("GPU ") for line in run.stdout.splitlines())
    return {"platform": devices[0].platform, "devices": len(devices),
            "kind": getattr(devices[0], "device_kind", devices[0].platform),
            "nvidia_smi_gpus": gpus}


def mobilenet_like_arch(space) -> dict[str, Any]:
    """Returns the space's MobileNetV2-like Arch (:data:`MOBILENET_VALUES` where allowed).

    Args:
        space: a :class:`nas.space.Space`.

    Returns:
        A valid Arch of `space`.
    """
    arch = {}
    for label in space.labels():
        choices = space.choices(label)
        wanted = next((v for k, v in MOBILENET_VALUES.items() if label.endswith("_" + k)), None)
        arch[label] = wanted if wanted in choices else choices[0]
    return space.validate(arch)


def _steady_epoch(history: list[Mapping[str, Any]]) -> tuple[float, float]:
    """Returns (seconds of the last epoch, seconds of the first: compile included)."""
    return float(history[-1]["seconds"]), float(history[0]["seconds"])


def bench_child(space_name: str, batch: int, images: int) -> dict[str, Any]:
    """Trains the MobileNet-like child of a space on synthetic data for 2 epochs.

    Args:
        space_name: shipped space name or YAML path.
        batch: training batch size.
        images: synthetic images (72% form the training split).

    Returns:
        {"images_per_s", "epoch_s", "first_epoch_s", "train_images", "params", ...}.
    """
    import jax

    from nas.data import load_data
    from nas.space import Space
    from nas.training.trainer import TrainConfig, train_arch

    space = Space.by_name(space_name)
    data = load_data("synthetic", space, synthetic_size=images)
    batch = min(batch, len(data.y_train))
    config = TrainConfig(epochs=2, batch_size=batch, progress=False)
    result = train_arch(space, mobilenet_like_arch(space), data, config)
    epoch_s, first_s = _steady_epoch(result["history"])
    trained = (len(data.y_train) // batch) * batch
    return {"part": "child", "space": space.name, "batch": batch, "train_images": trained,
            "epoch_s": epoch_s, "first_epoch_s": first_s, "images_per_s": trained / epoch_s,
            "params": result["params"], "devices": result["devices"],
            "platform": jax.default_backend(), "augment": data.augment}


def bench_supernet(space_name: str, batch: int, images: int) -> dict[str, Any]:
    """Trains an FBNet supernet of a space on synthetic data for 2 epochs (both with the arch
    pass: no warm-up); its shipped latency table, if any, gives the latency term.

    Args:
        space_name: shipped space name or YAML path.
        batch: batch size of the weight and arch passes.
        images: synthetic images (72% form the training split: 80% weights, 20% arch).

    Returns:
        {"images_per_s" (training split per epoch second), "epoch_s", "first_epoch_s", ...}.
    """
    import jax

    from nas.data import load_data
    from nas.latency.table import LatencyTable
    from nas.space import Space
    from nas.strategies.oneshot_base import OneShotParams
    from nas.strategies.oneshot_loop import run_oneshot

    space = Space.by_name(space_name)
    data = load_data("synthetic", space, synthetic_size=images)
    table_path = SUPERNET_TABLES.get(space.name)
    table = LatencyTable.load(table_path, space) if table_path else None
    params = OneShotParams(epochs=2, warmup_epochs=0, batch_size=batch,
                           objective=None if table is not None else "none")
    result = run_oneshot(space, data, "fbnet", params, table)
    epoch_s, first_s = _steady_epoch(result["history"])
    return {"part": "supernet", "space": space.name, "batch": batch,
            "train_images": len(data.y_train), "epoch_s": epoch_s, "first_epoch_s": first_s,
            "images_per_s": len(data.y_train) / epoch_s, "devices": result["devices"],
            "platform": jax.default_backend(),
            "latency_table": str(table_path) if table_path else None}


def latency_report(table_path: str) -> dict[str, Any]:
    """Returns a built table's entry count, device and one sample entry."""
    data = json.loads(Path(table_path).read_text())
    entries = data.get("entries") or {}
    key = sorted(entries)[len(entries) // 2] if entries else None
    sample = entries.get(key) if key else None
    ms = sample.get("median_ms") if isinstance(sample, dict) else sample
    return {"part": "latency", "table": str(table_path), "entries": len(entries),
            "space": (data.get("space") or {}).get("name"),
            "device": (data.get("backend") or {}).get("device"),
            "sample_key": key, "sample_ms": ms}


def ray_config(path: str, gpus: float, candidates: int) -> None:
    """Writes the search config of the Ray part: `candidates` tiny Archs on digits, 1 epoch,
    as Ray trials of ``gpus`` GPUs each (as many at once as there are candidates)."""
    config = {"space": "tiny", "data": "digits", "seed": 0, "budget": candidates,
              "batch": candidates, "strategy": {"name": "random"},
              "objective": {"metric": "macs", "target": 1.0e8},
              "train": {"epochs": 1, "batch_size": 64},
              "executor": {"kind": "ray", "workers": candidates, "cpus_per_trial": 1,
                           "gpus_per_trial": gpus, "retries": 0}}
    Path(path).write_text(json.dumps(config, indent=1) + "\n")


def ray_report(workdir: str | None, refused: str | None) -> dict[str, Any]:
    """Returns what the Ray part showed.

    Args:
        workdir: the finished search's workdir: the trials' platforms and devices (its
            summary.json), statuses and the first failed trial's error (history.jsonl).
        refused: instead, the file holding the stderr of a search `nas` refused.

    Returns:
        {"part": "ray", "refused": the refusal line} or {"part": "ray", "platforms",
        "devices", "statuses", "test_accuracy", "first_error"}.

    Raises:
        SystemExit: `refused` holds another error than the gpus_per_trial refusal.
    """
    if refused is not None:
        lines = [x for x in Path(refused).read_text().splitlines() if x.startswith("nas: ")]
        if not lines or "gpus_per_trial" not in lines[-1]:
            raise SystemExit(f"gpu_check: the Ray search failed, not with the GPU refusal: "
                             f"{lines[-1] if lines else Path(refused).read_text()[-2000:]}")
        return {"part": "ray", "refused": lines[-1]}
    summary = json.loads((Path(workdir) / "summary.json").read_text())
    history = [json.loads(x) for x in (Path(workdir) / "history.jsonl").read_text().splitlines()
               if x.strip()]
    errors = [r.get("error") for r in history if r.get("status") != "ok"]
    return {"part": "ray", "platforms": summary.get("platforms"), "devices": summary.get("devices"),
            "statuses": summary.get("statuses"),
            "test_accuracy": (summary.get("best") or {}).get("test_accuracy"),
            "first_error": (errors[0] or "")[:300] if errors else None}


def part_line(result: Mapping[str, Any]) -> str:
    """Returns the one line a part prints (its figures as plain numbers)."""
    part = result["part"]
    if part in ("child", "supernet"):
        what = "MobileNet-like child" if part == "child" else "FBNet supernet"
        return (f"{part}: {result['images_per_s']:.1f} images/s, epoch {result['epoch_s']:.3f} s "
                f"({what} of {result['space']}, batch {result['batch']}, "
                f"{result['train_images']} training images, {result['platform']}, "
                f"{result['devices']} device(s); first epoch {result['first_epoch_s']:.2f} s "
                "with compilation)")
    if part == "latency":
        return (f"latency: {result['entries']} entries (space {result['space']}, "
                f"{result['device']}); sample {result['sample_key']} = {result['sample_ms']} ms; "
                f"table {result['table']}")
    if "refused" in result:
        return f"ray: gpus_per_trial refused: {result['refused']}"
    failed = f"; first failed trial: {result['first_error']}" if result["first_error"] else ""
    return (f"ray: trial platform {','.join(result['platforms'] or ['unknown'])}, "
            f"{result['devices']} device(s), statuses {json.dumps(result['statuses'])}, "
            f"test accuracy {result['test_accuracy']}{failed}")


def figure_text(result: Mapping[str, Any] | None) -> str:
    """Returns a part's figure for the summary table."""
    if result is None:
        return "-"
    part = result["part"]
    if part == "child":
        return f"{result['images_per_s']:.1f} images/s"
    if part == "supernet":
        return f"{result['epoch_s']:.3f} s/epoch, {result['images_per_s']:.1f} images/s"
    if part == "latency":
        return f"{result['entries']} entries"
    if part == "detect":
        return f"{result['platform']}, {result['devices']} device(s) ({result['kind']})"
    if "refused" in result:
        return "refused (no GPUs in the Ray cluster)"
    return f"trial on {','.join(result['platforms'] or ['?'])}, {result['devices']} device(s)"


def print_summary(out: str) -> None:
    """Prints the table of parts: wall seconds (OUT/timings.tsv) and figure (OUT/<part>.json)."""
    folder = Path(out)
    rows = [line.split("\t") for line in (folder / "timings.tsv").read_text().splitlines() if line]
    print(f"{'part':<10}{'seconds':>9}  result")
    for name, seconds, *_ in rows:
        path = folder / f"{name}.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        print(f"{name:<10}{float(seconds):>9.2f}  {figure_text(result)}")
    print(f"results: {folder}")


def _save(result: dict[str, Any], out: str) -> None:
    Path(out, f"{result['part']}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(part_line(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand (see the module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--out")
    for name in ("child", "supernet"):
        p = sub.add_parser(name)
        p.add_argument("--space", default="mixed")
        p.add_argument("--batch", type=int, required=True)
        p.add_argument("--images", type=int, required=True)
        p.add_argument("--out", required=True)
    sub.add_parser("micro-space").add_argument("path")
    lr = sub.add_parser("latency-report")
    lr.add_argument("table")
    lr.add_argument("--out", required=True)
    rc = sub.add_parser("ray-config")
    rc.add_argument("path")
    rc.add_argument("--gpus", type=float, default=0.5)
    rc.add_argument("--candidates", type=int, default=1)
    rr = sub.add_parser("ray-report")
    rr.add_argument("--out", required=True)
    rr.add_argument("--workdir")
    rr.add_argument("--refused")
    sub.add_parser("summary").add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "detect":
        info = detect()
        if args.out:
            Path(args.out, "detect.json").write_text(json.dumps({"part": "detect", **info}) + "\n")
        if info["platform"] != "gpu" and info["nvidia_smi_gpus"]:
            why = (f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} hides them"
                   if os.environ.get("JAX_PLATFORMS") else
                   "JAX has no GPU backend: pip install -U 'jax[cuda12]'")
            sys.stderr.write(f"note: nvidia-smi lists {info['nvidia_smi_gpus']} GPU(s); {why}\n")
        print(info["platform"], info["devices"], info["kind"])
    elif args.command == "child":
        _save(bench_child(args.space, args.batch, args.images), args.out)
    elif args.command == "supernet":
        _save(bench_supernet(args.space, args.batch, args.images), args.out)
    elif args.command == "micro-space":
        Path(args.path).write_text(MICRO_SPACE_YAML)
    elif args.command == "latency-report":
        _save(latency_report(args.table), args.out)
    elif args.command == "ray-config":
        ray_config(args.path, args.gpus, args.candidates)
    elif args.command == "ray-report":
        _save(ray_report(args.workdir, args.refused), args.out)
    else:
        print_summary(args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the checkout's nas
    sys.exit(main())
