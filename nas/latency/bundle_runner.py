#!/usr/bin/env python3
"""The standalone runner of a nas measurement bundle (copied into the bundle as ``measure.py``).

It needs only Python 3.8+, numpy and the bundle's runtime (onnxruntime for an ONNX bundle,
``ai-edge-litert`` for a TFLite one): run it on the device (phone, board, Jetson) inside the
bundle folder that ``nas latency bundle`` wrote::

    python measure.py                                  # one thread, CPU execution provider
    python measure.py --provider XnnpackExecutionProvider --threads 1 --core 3
    python measure.py --list-providers

It checks every model file against the manifest's sha256, then times each model (layers,
calibration networks, validation networks) the way ``nas latency build`` does: an onnxruntime
session with all graph optimizations and sequential execution, input and output bound once (or a
LiteRT interpreter with ``--threads`` threads and its default XNNPACK delegate), ``--warmup``
calls, then ``--reps`` timed calls split into ``--rounds`` rounds spread over time (the items of
a chunk are timed round-robin); the round with the lowest median is kept. ``results.json`` is
rewritten (atomically) after every chunk, so an interrupted run resumes where it stopped when
started again with the same settings. Copy ``results.json`` back and run
``nas latency import results.json --out TABLE``.

Energy: where the device reports power, ``--power-cmd CMD`` (a command printing watts, e.g. a
board's power monitor) or ``--rapl FILE`` (an energy counter in microjoules) records the energy
of one call beside its latency; the imported table then carries measured energy entries.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ort = None  # onnxruntime, imported for ONNX bundles only (a TFLite device may not have it)

RESULTS_FORMAT = "nas-latency-results/1"
MANIFEST = "manifest.json"


def sha256_of(path: str) -> str:
    """Returns the hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_name() -> str:
    """Returns the CPU's model name where the OS tells it (else platform's processor)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now() -> str:
    """Returns the UTC time, ISO format."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: str, data: dict) -> None:
    """Writes JSON to `path` through a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def import_runtime(fmt: str) -> dict:
    """Imports the runtime of a bundle format; returns its versions."""
    global ort
    if fmt == "tflite":
        import importlib
        from importlib.metadata import version

        importlib.import_module("ai_edge_litert.interpreter")  # fails here if it is missing
        return {"ai-edge-litert": version("ai-edge-litert")}
    import onnxruntime
    ort = onnxruntime
    return {"onnxruntime": ort.__version__}


def tflite_call(path: str, threads: int):
    """Returns a call running a TFLite model (LiteRT interpreter, XNNPACK) on a fixed input."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=max(1, threads))
    it.allocate_tensors()
    detail = it.get_input_details()[0]
    it.set_tensor(detail["index"],
                  np.random.default_rng(0).standard_normal(detail["shape"]).astype(np.float32))
    it.invoke()
    return it.invoke


def make_session(path: str, threads: int, provider: str):
    """Returns an InferenceSession of a model file with the tables' session options."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1 if threads else 0
    so.log_severity_level = 3
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(path, so, providers=providers)


def bound_call(sess, shape):
    """Returns a call running `sess` on a fixed random input with input and output bound once."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_output(sess.get_outputs()[0].name, "cpu")

    def call():
        sess.run_with_iobinding(binding)

    call()
    return call


def time_round(call, reps: int, min_seconds: float) -> list:
    """Times `call` at least `reps` times and `min_seconds` seconds; returns seconds per call."""
    samples = []
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) * 1e-9)
        if len(samples) >= reps and (t1 - start) * 1e-9 >= min_seconds:
            return samples


def summary(rounds: list) -> dict:
    """The round with the lowest median: {median_ms, p10_ms, p90_ms, n (all rounds' calls)}."""
    stats = []
    for samples in rounds:
        p10, med, p90 = np.percentile(np.asarray(samples) * 1e3, [10, 50, 90])
        stats.append((float(med), float(p10), float(p90)))
    med, p10, p90 = min(stats)
    return {"median_ms": round(med, 6), "p10_ms": round(p10, 6), "p90_ms": round(p90, 6),
            "n": int(sum(len(r) for r in rounds))}


def read_watts(cmd: str) -> float:
    """Runs the user's power command and returns the first number it prints (watts)."""
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout
    return float(out.split()[0])


def energy_per_call_mj(call, median_ms: float, args: argparse.Namespace) -> dict:
    """Energy of one call (mJ) from --power-cmd or --rapl, over --energy-seconds of calls."""
    n = max(10, int(1000.0 * args.energy_seconds / max(median_ms, 1e-3)))
    if args.rapl:
        with open(args.rapl) as f:
            e0 = int(f.read())
        for _ in range(n):
            call()
        with open(args.rapl) as f:
            e1 = int(f.read())
        return {"energy_mj": round((e1 - e0) / n / 1000.0, 9), "energy_source": "rapl"}
    w0 = read_watts(args.power_cmd)
    for _ in range(n):
        call()
    w1 = read_watts(args.power_cmd)
    return {"energy_mj": round(0.5 * (w0 + w1) * median_ms, 9), "energy_source": "power-cmd"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time the models of a nas measurement bundle.")
    p.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)),
                   help="the bundle folder (default: this script's)")
    p.add_argument("--out", default=None, help="results file (default: BUNDLE/results.json)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = runtime default)")
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="onnxruntime execution provider (see --list-providers)")
    p.add_argument("--core", type=int, default=None, help="pin to this CPU core (Linux/Android)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=60, help="timed calls per item (all rounds)")
    p.add_argument("--min-seconds", type=float, default=0.3, help="timed seconds per item")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunk", type=int, default=16, help="items timed round-robin together")
    p.add_argument("--only", choices=("layer", "calibration", "validation"), default=None)
    p.add_argument("--device-name", default="", help="a name for the device (recorded)")
    p.add_argument("--power-cmd", default=None,
                   help="a command printing the device's power draw in watts (e.g. a board's "
                        "power monitor): energy per call = mean of two readings x median time")
    p.add_argument("--rapl", default=None,
                   help="an energy counter file in microjoules (e.g. /sys/class/powercap/"
                        "intel-rapl:0/energy_uj): energy per call = counter delta / calls")
    p.add_argument("--energy-seconds", type=float, default=0.2,
                   help="seconds of calls per energy reading (default 0.2)")
    p.add_argument("--list-providers", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Runs the bundle; returns the exit status."""
    args = parse_args(argv)
    manifest_path = os.path.join(args.bundle, MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    fmt = manifest.get("model_format", "onnx")
    versions = import_runtime(fmt)
    if fmt == "tflite":
        args.provider = "LiteRT (XNNPACK)"
    elif args.list_providers:
        print("\n".join(ort.get_available_providers()))
        return 0
    elif args.provider not in ort.get_available_providers():
        print(f"measure.py: provider {args.provider} is not in this onnxruntime "
              f"({', '.join(ort.get_available_providers())})", file=sys.stderr)
        return 2
    if args.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    out_path = args.out or os.path.join(args.bundle, "results.json")
    settings = {"threads": args.threads, "provider": args.provider, "core": args.core,
                "warmup": args.warmup, "reps": args.reps, "min_seconds": args.min_seconds,
                "rounds": args.rounds, "power_cmd": args.power_cmd, "rapl": args.rapl}
    results = {"format": RESULTS_FORMAT, "manifest_sha256": sha256_of(manifest_path),
               "settings": settings, "results": {}, "errors": {}, "started": now(),
               "device": {"name": args.device_name, "cpu": cpu_name(),
                          "machine": platform.machine(), "system": platform.platform(),
                          "node": platform.node(), "cpu_count": os.cpu_count()},
               "runtime": {**versions, "numpy": np.__version__,
                           "python": platform.python_version(),
                           "providers": ort.get_available_providers() if ort else []}}
    if os.path.exists(out_path):
        with open(out_path) as f:
            old = json.load(f)
        if old.get("manifest_sha256") == results["manifest_sha256"] and \
                old.get("settings") == settings:
            results["results"] = old.get("results", {})
            results["started"] = old.get("started", results["started"])
    items = [it for it in manifest["items"] if it["id"] not in results["results"]
             and (args.only is None or it["role"] == args.only)]
    for it in items:  # a changed or missing file is refused before anything is timed
        path = os.path.join(args.bundle, it["file"])
        if not os.path.exists(path) or sha256_of(path) != it["sha256"]:
            print(f"measure.py: {it['file']} is missing or differs from the manifest; copy the "
                  "whole bundle again", file=sys.stderr)
            return 2
    done = 0
    for start in range(0, len(items), max(1, args.chunk)):
        chunk = []
        for it in items[start:start + args.chunk]:
            try:
                path = os.path.join(args.bundle, it["file"])
                if fmt == "tflite":
                    call = tflite_call(path, args.threads)
                else:
                    call = bound_call(make_session(path, args.threads, args.provider),
                                      it["input_shape"])
                for _ in range(args.warmup):
                    call()
                chunk.append((it, call, []))
            except Exception as e:  # recorded, named by the item, and the run goes on
                results["errors"][it["id"]] = f"{type(e).__name__}: {e}"
        per_round = max(1, -(-args.reps // max(1, args.rounds)))
        for _ in range(max(1, args.rounds)):
            for it, call, rounds in chunk:
                rounds.append(time_round(call, per_round, args.min_seconds / max(1, args.rounds)))
        for it, call, rounds in chunk:
            results["results"][it["id"]] = summary(rounds)
            if args.power_cmd or args.rapl:
                results["results"][it["id"]].update(
                    energy_per_call_mj(call, results["results"][it["id"]]["median_ms"], args))
        done += len(chunk)
        results["finished"] = now()
        write_atomic(out_path, results)
        print(f"measure.py: {done}/{len(items)} timed", file=sys.stderr)
    results["finished"] = now()
    write_atomic(out_path, results)
    print(f"measure.py: wrote {out_path} ({len(results['results'])} items, "
          f"{len(results['errors'])} errors)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
