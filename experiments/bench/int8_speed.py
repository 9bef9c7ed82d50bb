"""int8 vs float on onnxruntime (CPU, one thread, one core, batch 1): which int8 form is fastest,
and on which layers does int8 beat float?

For every distinct layer key of the chosen spaces (``fbnet`` at 224x224 and ``mixed`` at 32x32 by
default; keys as the latency-table builder enumerates them, ``nas.latency.build.keys_to_measure``
with the ``float`` rule, 'skip' layers left out) it builds the float one-layer graph
(``block_to_onnx(spec, int8=False)``) and several int8 forms of it, then times them side by side:

- onnxruntime's own quantizer, ``onnxruntime.quantization.quantize_static`` on the float graph
  with a few random calibration inputs (MinMax), in the forms of :data:`ORT_FORMS`: QDQ vs
  QOperator format, activations uint8 vs int8, weights int8 per output channel vs per tensor,
  and ``ActivationSymmetric``;
- ``nas-qdq``: our own builder's int8 graph, ``block_to_onnx(spec, int8=True)`` (whatever it
  produces at the time of the run).

Timing is the latency tables' own code: sessions from
``nas.latency.backends.ort_backend.session`` (ORT_ENABLE_ALL, sequential, one intra-op and one
inter-op thread), input and output bound once (io binding, as ``ort_backend._runner``), and
``nas.latency.measure.time_call`` / ``best_round``: per layer, every form is prepared first and
then timed round-robin ``--rounds`` times (warm-up each round, as the table worker does), extra
rounds for forms none of whose rounds was clean, and the round with the lowest median is kept.
So float and each int8 form of one layer are measured back to back, under the same load. The
process is pinned to one core (``os.sched_setaffinity``).

After the per-layer pass, the fastest form overall (lowest geometric-mean int8/float ratio over
all timed layers) is timed once more per layer at ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED (next to
float at ORT_ENABLE_ALL). Then the whole MobileNetV2 at 224
(``search_spaces/published/mobilenet_v2.json``, ``network_to_onnx(specs, int8=[False] * n)``)
is timed as float, quantized with the two fastest onnxruntime forms (and the fastest at
ORT_ENABLE_EXTENDED), and as ``network_to_onnx(specs, int8=[True] * n)`` (nas-qdq).

It prints a per-layer table (key, float ms, each int8 form's ms, the best int8 form and its
int8/float ratio), a summary per space (per form: geometric-mean int8/float ratio, median ratio,
fraction of layers where int8 wins and the median speedup where it wins), the fastest form
overall, the ALL vs EXTENDED comparison, the whole-network rows, and which ops each form really
executes after onnxruntime's graph optimizations (read back from
``SessionOptions.optimized_model_filepath``) for one representative layer per space and for the
network: e.g. whether its convs became QLinearConv (int8 kernels) or stayed float Conv between
DequantizeLinear / QuantizeLinear.

Run the full benchmark (quiet machine; about 6 minutes on one core: 98 fbnet + 243 mixed layers):

    .venv/bin/python experiments/bench/int8_speed.py --json runs/int8_speed.json

Smoke run (about 15 seconds):

    .venv/bin/python experiments/bench/int8_speed.py --max-layers 3 --repeats 5

Args (command-line options):
    --spaces: comma-separated spaces, from ``fbnet`` (at 224x224) and ``mixed`` (at 32x32);
        default ``fbnet,mixed``.
    --max-layers: at most this many layers per space, evenly spaced over the space's keys
        (default: all).
    --forms: comma-separated int8 forms (names of :data:`ORT_FORMS` and ``nas-qdq``; default all).
    --repeats: timed calls per form and layer, split over the rounds (default 30).
    --rounds: rounds per layer (default 3).
    --min-seconds: a form's timed calls last at least this long per layer (default 0.03).
    --warmup: untimed calls at the start of every round (default 2).
    --extra-rounds: at most this many more rounds for forms with no clean round (default 2).
    --net-repeats: timed calls per form of the whole network (default 100).
    --calib: random calibration inputs for ``quantize_static`` (default 4).
    --core: core to pin to (default: the last one allowed).
    --realtime: run at real-time priority where permitted (``measure.set_realtime``).
    --no-opt-pass: skip the ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED pass.
    --no-network: skip the whole-network MobileNetV2 rows.
    --json: write every figure to this JSON file.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("PJRT_NPROC", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,  # noqa: E402
                                      quantize_static)

from nas.latency.backends.ort_backend import bound_call, session  # noqa: E402
from nas.latency.build import keys_to_measure  # noqa: E402
from nas.latency.measure import (Timing, TimingConfig, best_round, cpu_model,  # noqa: E402
                                 pin_to_core, set_realtime, time_call)
from nas.latency.onnx_blocks import block_to_onnx, network_to_onnx  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.spec import BlockSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MOBILENET_V2 = ROOT / "search_spaces" / "published" / "mobilenet_v2.json"
#: space name -> input resolution it is benchmarked at.
SPACES = {"fbnet": 224, "mixed": 32}
FLOAT = "float"
NAS_QDQ = "nas-qdq"
ALL, EXTENDED = "ALL", "EXTENDED"
#: onnxruntime quantize_static forms: name -> (format, activation type, per_channel, extra_options).
#: Weights are always int8 (QuantType.QInt8). u8s8 = uint8 activations, int8 weights.
ORT_FORMS: dict[str, tuple[str, str, bool, dict]] = {
    "qdq-u8s8-pc": ("QDQ", "QUInt8", True, {}),
    "qdq-u8s8-pt": ("QDQ", "QUInt8", False, {}),
    "qdq-s8s8-pc": ("QDQ", "QInt8", True, {}),
    "qdq-s8s8-pt": ("QDQ", "QInt8", False, {}),
    "qdq-s8s8-pt-sym": ("QDQ", "QInt8", False, {"ActivationSymmetric": True}),
    "qop-u8s8-pc": ("QOperator", "QUInt8", True, {}),
    "qop-u8s8-pt": ("QOperator", "QUInt8", False, {}),
    "qop-s8s8-pt": ("QOperator", "QInt8", False, {}),
}
ALL_FORMS = tuple(ORT_FORMS) + (NAS_QDQ,)
#: ops (after optimization) that are integer kernels.
INT8_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize", "QAttention")


# ----------------------------------------------------------------------------- graphs


class RandomReader(CalibrationDataReader):
    """Calibration data for quantize_static: a few seeded standard-normal inputs.

    Args:
        shape: the input's shape [1, C, H, W].
        count: number of inputs.
        seed: their seed.
    """

    def __init__(self, shape: Sequence[int], count: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        self._data = [{"input": rng.standard_normal(shape).astype(np.float32)}
                      for _ in range(count)]
        self._it = iter(self._data)

    def get_next(self) -> dict | None:
        """Returns the next input feed, or None when done."""
        return next(self._it, None)


def ort_quantize(float_path: Path, form: str, shape: Sequence[int], calib: int,
                 workdir: Path) -> bytes:
    """Quantizes a float ONNX file with onnxruntime's quantize_static in one form.

    Args:
        float_path: the float model file (a path: quantize_static alters a ModelProto it is given).
        form: a key of :data:`ORT_FORMS`.
        shape: the model's input shape (for the calibration inputs).
        calib: number of calibration inputs.
        workdir: a scratch directory.

    Returns:
        The serialized quantized model.
    """
    fmt, act, per_channel, extra = ORT_FORMS[form]
    out = workdir / f"{form}.onnx"
    quantize_static(str(float_path), str(out), RandomReader(shape, calib),
                    quant_format=getattr(QuantFormat, fmt), activation_type=getattr(QuantType, act),
                    weight_type=QuantType.QInt8, per_channel=per_channel,
                    extra_options=dict(extra))
    return out.read_bytes()


def build_forms(make_float: Callable[[], onnx.ModelProto], make_nas: Callable[[], onnx.ModelProto],
                forms: Sequence[str], shape: Sequence[int], calib: int, workdir: Path
                ) -> tuple[dict[str, bytes], dict[str, str]]:
    """Returns ({form: model bytes}, {form: error}) of the float graph and its int8 forms.

    Args:
        make_float: builds the float graph.
        make_nas: builds our own int8 graph (form ``nas-qdq``).
        forms: int8 forms wanted (names of :data:`ORT_FORMS` and/or ``nas-qdq``).
        shape: input shape.
        calib: calibration inputs for quantize_static.
        workdir: a scratch directory.
    """
    float_model = make_float()
    float_path = workdir / "float.onnx"
    onnx.save(float_model, str(float_path))
    models, errors = {FLOAT: float_model.SerializeToString()}, {}
    for form in forms:
        try:
            if form == NAS_QDQ:
                models[form] = make_nas().SerializeToString()
            else:
                models[form] = ort_quantize(float_path, form, shape, calib, workdir)
        except Exception as e:  # one form failing must not stop the benchmark
            errors[form] = f"{type(e).__name__}: {e}"[:300]
    return models, errors


# ----------------------------------------------------------------------------- timing


def make_session(model_bytes: bytes, level: str = ALL, optimized_path: str | None = None):
    """Returns a one-thread session: the latency tables' own (ALL) or at EXTENDED."""
    return session(model_bytes, 1, optimized_path, level="all" if level == ALL else "extended")


def make_call(model_bytes: bytes, shape: Sequence[int], level: str = ALL) -> Callable[[], None]:
    """Returns a call running the model once, io-bound as the latency tables time layers."""
    return bound_call(make_session(model_bytes, level), shape)


def time_side_by_side(calls: Mapping[str, Callable[[], None]], timing: TimingConfig
                      ) -> dict[str, Timing]:
    """Times several calls round-robin, as the latency-table worker times a chunk of items.

    Args:
        calls: {name: prepared call}.
        timing: the whole budget per call (split over ``timing.rounds``).

    Returns:
        {name: the round with the lowest median, n counting every round}.
    """
    one_round = timing.per_round()
    rounds: dict[str, list[Timing]] = {name: [] for name in calls}
    for _ in range(max(1, timing.rounds)):
        for name, call in calls.items():
            rounds[name].append(time_call(call, one_round))
    for _ in range(timing.extra_rounds):
        dirty = [n for n, rs in rounds.items() if not any(timing.is_clean(t) for t in rs)]
        if not dirty:
            break
        for name in dirty:
            rounds[name].append(time_call(calls[name], one_round))
    return {name: best_round(rs) for name, rs in rounds.items()}


def time_models(models: Mapping[str, bytes], shape: Sequence[int], timing: TimingConfig,
                levels: Mapping[str, str] | None = None) -> tuple[dict[str, Timing], dict[str, str]]:
    """Prepares every model and times them side by side.

    Args:
        models: {name: model bytes}.
        shape: input shape.
        timing: timing budget per model.
        levels: {name: ALL or EXTENDED} (default ALL).

    Returns:
        ({name: timing}, {name: error}) for models that could not be prepared.
    """
    calls, errors = {}, {}
    for name, data in models.items():
        try:
            calls[name] = make_call(data, shape, (levels or {}).get(name, ALL))
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"[:300]
    return time_side_by_side(calls, timing), errors


# ----------------------------------------------------------------------------- op counts


def executed_ops(model_bytes: bytes, level: str, workdir: Path) -> dict[str, int]:
    """Returns {op type: count} of the graph onnxruntime executes after its optimizations.

    Op types outside the default domain carry it as a prefix (e.g. ``com.microsoft.QLinearConv``
    is the NHWC int8 conv, ``com.microsoft.nchwc.Conv`` the blocked-layout float conv); grouped
    (depthwise) convs carry ``[dw]``.
    """
    path = workdir / f"optimized_{level}.onnx"
    make_session(model_bytes, level, str(path))
    counts = collections.Counter()
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        name = f"{domain}.{node.op_type}" if domain else node.op_type
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        counts[name + ("[dw]" if "Conv" in node.op_type and group > 1 else "")] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def kernel_split(ops: Mapping[str, int]) -> tuple[int, int]:
    """Returns (int8 kernel ops, float Conv/Gemm/MatMul ops) of an executed-ops count."""
    base = {op: op.split(".")[-1].removesuffix("[dw]") for op in ops}
    int8 = sum(n for op, n in ops.items() if base[op].startswith(INT8_OPS))
    flt = sum(n for op, n in ops.items()
              if base[op] in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"))
    return int8, flt


def ops_report(models: Mapping[str, bytes], levels: Sequence[str], workdir: Path
               ) -> dict[str, dict[str, Any]]:
    """Returns {form@level: {"ops", "int8_kernels", "float_kernels"}} for each model and level."""
    out = {}
    for name, data in models.items():
        for level in levels:
            try:
                ops = executed_ops(data, level, workdir)
                i8, fl = kernel_split(ops)
                out[f"{name}@{level}"] = {"ops": ops, "int8_kernels": i8, "float_kernels": fl}
            except Exception as e:
                out[f"{name}@{level}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


# ----------------------------------------------------------------------------- layers


def space_layers(name: str, max_layers: int | None) -> list[BlockSpec]:
    """Returns the distinct float layers of a space at its benchmark resolution ('skip' left out).

    Args:
        name: a key of :data:`SPACES`.
        max_layers: at most this many, evenly spaced over the keys (None: all).
    """
    space = Space.by_name(name)
    if tuple(space.resolution) != (SPACES[name], SPACES[name]):
        from nas.model import with_resolution  # imports jax: only where needed

        space = with_resolution(space, SPACES[name])
    specs = [s for s in keys_to_measure(space, "float").values() if s.op != "skip"]
    if max_layers is not None and max_layers < len(specs):
        idx = np.unique(np.linspace(0, len(specs) - 1, max(1, max_layers)).round().astype(int))
        specs = [specs[i] for i in idx]
    return specs


def representative(specs: Sequence[BlockSpec]) -> BlockSpec:
    """Returns the layer whose executed ops are printed: the first stride-1 mbconv with an
    expansion above 1 (a typical inverted bottleneck), else the first mbconv, else the first."""
    for test in (lambda s: s.op == "mbconv" and s.stride == 1 and s.expand > 1,
                 lambda s: s.op == "mbconv", lambda s: True):
        for s in specs:
            if test(s):
                return s
    raise ValueError("no layers")


def bench_layer(spec: BlockSpec, forms: Sequence[str], timing: TimingConfig, calib: int,
                workdir: Path) -> dict[str, Any]:
    """Times the float graph of one layer and each int8 form of it, side by side.

    Returns:
        {"key", "op", "ms": {form: median}, "timing": {form: Timing dict}, "errors": {form: msg}}.
    """
    shape = [1, spec.cin, *spec.in_hw]
    models, errors = build_forms(lambda: block_to_onnx(spec, int8=False),
                                 lambda: block_to_onnx(spec, int8=True), forms, shape, calib,
                                 workdir)
    timings, run_errors = time_models(models, shape, timing)
    errors.update(run_errors)
    return {"key": spec.key(), "op": spec.op, "ms": {f: t.median_ms for f, t in timings.items()},
            "timing": {f: t.to_dict() for f, t in timings.items()}, "errors": errors}


def bench_opt_levels(spec: BlockSpec, form: str, timing: TimingConfig, calib: int,
                     workdir: Path) -> dict[str, float]:
    """Times float@ALL, form@ALL and form@EXTENDED of one layer side by side; returns medians."""
    shape = [1, spec.cin, *spec.in_hw]
    models, errors = build_forms(lambda: block_to_onnx(spec, int8=False),
                                 lambda: block_to_onnx(spec, int8=True), [form], shape, calib,
                                 workdir)
    if form not in models:
        return {}
    named = {f"{FLOAT}@{ALL}": models[FLOAT], f"{form}@{ALL}": models[form],
             f"{form}@{EXTENDED}": models[form]}
    levels = {n: n.split("@")[1] for n in named}
    timings, _ = time_models(named, shape, timing, levels)
    return {n: t.median_ms for n, t in timings.items()}


# ----------------------------------------------------------------------------- statistics


def geomean(values: Sequence[float]) -> float:
    """Geometric mean (nan for no values)."""
    return float(math.exp(np.mean(np.log(values)))) if len(values) else float("nan")


def ratios(rows: Sequence[Mapping[str, Any]], form: str, base: str = FLOAT) -> list[float]:
    """Returns form/base median ratios over the rows that have both."""
    return [r["ms"][form] / r["ms"][base] for r in rows if form in r["ms"] and base in r["ms"]]


def best_int8(row: Mapping[str, Any], forms: Sequence[str]) -> str | None:
    """Returns the fastest int8 form of one layer row (None if none ran)."""
    have = [f for f in forms if f in row["ms"]]
    return min(have, key=lambda f: row["ms"][f]) if have else None


def form_summary(rows: Sequence[Mapping[str, Any]], forms: Sequence[str]) -> dict[str, dict]:
    """Per form (and 'best-int8', the fastest form of each layer): geometric-mean and median
    int8/float ratio, fraction of layers where int8 is faster, median speedup where it is."""
    out = {}
    best_rows = []
    for r in rows:
        b = best_int8(r, forms)
        if b is not None and FLOAT in r["ms"]:
            best_rows.append({"ms": {FLOAT: r["ms"][FLOAT], "best-int8": r["ms"][b]}})
    for form, src in [(f, rows) for f in forms] + [("best-int8", best_rows)]:
        rs = ratios(src, form)
        wins = [1.0 / x for x in rs if x < 1.0]
        out[form] = {"layers": len(rs), "geomean_ratio": geomean(rs),
                     "median_ratio": float(np.median(rs)) if rs else float("nan"),
                     "win_fraction": len(wins) / len(rs) if rs else float("nan"),
                     "median_win_speedup": float(np.median(wins)) if wins else float("nan")}
    return out


# ----------------------------------------------------------------------------- printing


def fmt_ms(v: float | None) -> str:
    """Milliseconds for a table cell ('-' where missing)."""
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def print_layer_table(space: str, rows: Sequence[Mapping[str, Any]], forms: Sequence[str]) -> None:
    """Prints key, float ms, each form's ms, the best int8 form and its int8/float ratio."""
    width = max([len(r["key"]) for r in rows] + [3])
    cols = [FLOAT] + list(forms)
    cw = max(9, max(len(c) for c in cols) + 1)
    print(f"\n== {space}: per layer (median ms, one thread, batch 1) ==")
    print(f"{'key':<{width}} " + "".join(f"{c:>{cw}}" for c in cols) + f"  {'best int8':<16} ratio")
    for r in rows:
        b = best_int8(r, forms)
        ratio = r["ms"][b] / r["ms"][FLOAT] if b and FLOAT in r["ms"] else float("nan")
        cells = "".join(f"{fmt_ms(r['ms'].get(c)):>{cw}}" for c in cols)
        print(f"{r['key']:<{width}} {cells}  {b or '-':<16} {ratio:.2f}")
        for form, err in r["errors"].items():
            print(f"    {form}: {err}")


def print_summary(title: str, summary: Mapping[str, Mapping[str, float]]) -> None:
    """Prints one summary block (a row per form)."""
    print(f"\n== {title}: int8/float per form (< 1: int8 faster) ==")
    print(f"{'form':<18}{'layers':>7}{'geomean':>9}{'median':>9}{'wins':>7}{'win x':>8}")
    for form, s in summary.items():
        print(f"{form:<18}{s['layers']:>7}{s['geomean_ratio']:>9.3f}{s['median_ratio']:>9.3f}"
              f"{s['win_fraction']:>7.0%}{s['median_win_speedup']:>8.2f}")


def print_ops(title: str, report: Mapping[str, Mapping[str, Any]]) -> None:
    """Prints, per form and optimization level, the ops onnxruntime executes."""
    print(f"\n== executed ops after graph optimization: {title} ==")
    for name, r in report.items():
        if "error" in r:
            print(f"  {name:<26} error: {r['error']}")
            continue
        ops = " ".join(f"{op}x{n}" for op, n in r["ops"].items())
        print(f"  {name:<26} int8 kernels {r['int8_kernels']:>2}, float convs/gemms "
              f"{r['float_kernels']:>2} | {ops}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Run the full benchmark"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spaces", default="fbnet,mixed")
    p.add_argument("--max-layers", type=int, default=None)
    p.add_argument("--forms", default=",".join(ALL_FORMS))
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.03)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--extra-rounds", type=int, default=2)
    p.add_argument("--net-repeats", type=int, default=100)
    p.add_argument("--calib", type=int, default=4)
    p.add_argument("--core", type=int, default=None)
    p.add_argument("--realtime", action="store_true")
    p.add_argument("--no-opt-pass", action="store_true")
    p.add_argument("--no-network", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.space_list = [s for s in args.spaces.split(",") if s]
    args.form_list = [f for f in args.forms.split(",") if f]
    if args.max_layers is not None and args.max_layers < 1:
        p.error("--max-layers must be at least 1")
    for s in args.space_list:
        if s not in SPACES:
            p.error(f"unknown space {s!r}; choose from {sorted(SPACES)}")
    for f in args.form_list:
        if f not in ALL_FORMS:
            p.error(f"unknown form {f!r}; choose from {list(ALL_FORMS)}")
    return args


def layer_timing(args: argparse.Namespace) -> TimingConfig:
    """The per-layer timing budget of the command line."""
    return TimingConfig(warmup=args.warmup, min_reps=args.repeats,
                        max_reps=max(args.repeats, 2000), min_seconds=args.min_seconds,
                        rounds=args.rounds, extra_rounds=args.extra_rounds)


def run_spaces(args: argparse.Namespace, timing: TimingConfig, workdir: Path) -> dict[str, dict]:
    """Benchmarks every layer of every space; returns {space: {"rows", "summary", "ops"}}."""
    out = {}
    for name in args.space_list:
        specs = space_layers(name, args.max_layers)
        t0 = time.perf_counter()
        rows = []
        for i, spec in enumerate(specs):
            rows.append(bench_layer(spec, args.form_list, timing, args.calib, workdir))
            print(f"[{name} {i + 1}/{len(specs)} {time.perf_counter() - t0:6.1f}s] {spec.key()}",
                  file=sys.stderr, flush=True)
        rep = representative(specs)
        shape = [1, rep.cin, *rep.in_hw]
        models, _ = build_forms(lambda: block_to_onnx(rep, int8=False),
                                lambda: block_to_onnx(rep, int8=True), args.form_list, shape,
                                args.calib, workdir)
        out[name] = {"resolution": SPACES[name], "rows": rows,
                     "summary": form_summary(rows, args.form_list),
                     "ops_layer": rep.key(), "ops": ops_report(models, (ALL, EXTENDED), workdir),
                     "seconds": time.perf_counter() - t0, "specs": specs}
    return out


def fastest_forms(results: Mapping[str, dict], forms: Sequence[str]) -> list[tuple[str, float]]:
    """Returns [(form, geometric-mean int8/float ratio over every timed layer)], fastest first."""
    rows = [r for res in results.values() for r in res["rows"]]
    scored = [(f, geomean(ratios(rows, f))) for f in forms]
    return sorted([s for s in scored if np.isfinite(s[1])], key=lambda s: s[1])


def run_opt_pass(results: Mapping[str, dict], form: str, args: argparse.Namespace,
                 timing: TimingConfig, workdir: Path) -> dict[str, Any]:
    """Times `form` at ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED on every layer; returns rows and
    per-space geometric means of EXTENDED/ALL and form/float."""
    out = {}
    for name, res in results.items():
        rows = []
        for spec in res["specs"]:
            ms = bench_opt_levels(spec, form, timing, args.calib, workdir)
            if ms:
                rows.append({"key": spec.key(), "ms": ms})
        a, e, f = f"{form}@{ALL}", f"{form}@{EXTENDED}", f"{FLOAT}@{ALL}"
        out[name] = {"rows": rows,
                     "geomean_extended_over_all": geomean(ratios(rows, e, a)),
                     "geomean_all_over_float": geomean(ratios(rows, a, f)),
                     "geomean_extended_over_float": geomean(ratios(rows, e, f))}
    return out


def run_network(best: Sequence[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Times MobileNetV2 at 224 as float, in the given int8 forms (and the first at EXTENDED)."""
    from nas.archfile import load_arch

    af = load_arch(MOBILENET_V2)
    specs = list(af.space.block_specs(af.arch))
    n = len(specs)
    shape = [1, specs[0].cin, *specs[0].in_hw]
    forms = list(best) + ([NAS_QDQ] if NAS_QDQ in args.form_list and NAS_QDQ not in best else [])
    models, errors = build_forms(lambda: network_to_onnx(specs, int8=[False] * n),
                                 lambda: network_to_onnx(specs, int8=[True] * n), forms, shape,
                                 args.calib, workdir)
    levels = {}
    ort_best = [f for f in best if f in models]
    if ort_best:
        models[f"{ort_best[0]}@{EXTENDED}"] = models[ort_best[0]]
        levels[f"{ort_best[0]}@{EXTENDED}"] = EXTENDED
    timing = TimingConfig(warmup=max(3, args.warmup), min_reps=args.net_repeats,
                          max_reps=max(args.net_repeats, 2000), min_seconds=0.5,
                          rounds=max(3, args.rounds), extra_rounds=args.extra_rounds)
    timings, run_errors = time_models(models, shape, timing, levels)
    errors.update(run_errors)
    ops = ops_report({k: v for k, v in models.items() if "@" not in k}, (ALL,), workdir)
    return {"arch": str(MOBILENET_V2.relative_to(ROOT)), "layers": n,
            "ms": {k: t.median_ms for k, t in timings.items()},
            "timing": {k: t.to_dict() for k, t in timings.items()}, "errors": errors, "ops": ops}


def print_network(net: Mapping[str, Any]) -> None:
    """Prints the whole-network rows (median ms and ratio to float)."""
    print(f"\n== whole network: {net['arch']} ({net['layers']} layers, 224x224, batch 1) ==")
    base = net["ms"].get(FLOAT)
    for name, ms in net["ms"].items():
        t = net["timing"][name]
        ratio = ms / base if base else float("nan")
        print(f"  {name:<26}{ms:>9.3f} ms  (p10 {t['p10_ms']:.3f}, p90 {t['p90_ms']:.3f}, "
              f"n {t['n']})  int8/float {ratio:.3f}")
    for name, err in net["errors"].items():
        print(f"  {name}: {err}")
    print_ops("MobileNetV2", net["ops"])


def finite(obj: Any) -> Any:
    """Returns `obj` with NaN / infinite floats replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def machine_info(cores: list[int], scheduler: str) -> dict[str, Any]:
    """The run's provenance: CPU, cores, runtime versions, load."""
    return {"cpu_model": cpu_model(), "cores": cores, "threads": 1, "scheduler": scheduler,
            "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark (see the module docstring); returns the exit code."""
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    ort.set_default_logger_severity(3)
    cores = pin_to_core(args.core)
    scheduler = set_realtime() if args.realtime else "normal"
    info = machine_info(cores, scheduler)
    timing = layer_timing(args)
    print(f"# {info['cpu_model']}, core {cores}, onnxruntime {info['onnxruntime']}, "
          f"load {info['load_avg_start']}, timing {timing.to_dict()}", flush=True)
    t_start = time.perf_counter()
    ort_forms = [f for f in args.form_list if f != NAS_QDQ]
    report: dict[str, Any] = {"machine": info, "timing": timing.to_dict(), "forms": {
        f: {"format": v[0], "activations": v[1], "per_channel": v[2], "extra_options": v[3]}
        for f, v in ORT_FORMS.items() if f in args.form_list}}
    with tempfile.TemporaryDirectory(prefix="int8_speed_") as tmp:
        workdir = Path(tmp)
        results = run_spaces(args, timing, workdir)
        for name, res in results.items():
            print_layer_table(f"{name}@{res['resolution']}", res["rows"], args.form_list)
        for name, res in results.items():
            print_summary(f"{name}@{res['resolution']}", res["summary"])
            print_ops(f"{name} layer {res['ops_layer']}", res["ops"])
        ranking = fastest_forms(results, args.form_list)
        overall = form_summary([r for res in results.values() for r in res["rows"]],
                               args.form_list)
        print_summary("all spaces", overall)
        if ranking:
            print(f"\nfastest int8 form overall: {ranking[0][0]} (geomean int8/float "
                  f"{ranking[0][1]:.3f}); ranking: "
                  + ", ".join(f"{f} {g:.3f}" for f, g in ranking))
        report["spaces"] = {n: {k: v for k, v in r.items() if k != "specs"}
                            for n, r in results.items()}
        report["overall"] = {"summary": overall, "ranking": ranking}
        if ranking and not args.no_opt_pass:
            best = ranking[0][0]
            opt = run_opt_pass(results, best, args, timing, workdir)
            print(f"\n== {best}: ORT_ENABLE_EXTENDED vs ORT_ENABLE_ALL (geomean ratios) ==")
            for name, o in opt.items():
                print(f"  {name:<8} EXTENDED/ALL {o['geomean_extended_over_all']:.3f}   "
                      f"ALL/float {o['geomean_all_over_float']:.3f}   "
                      f"EXTENDED/float {o['geomean_extended_over_float']:.3f}   "
                      f"({len(o['rows'])} layers)")
            report["opt_levels"] = {"form": best, **opt}
        if not args.no_network:
            top = [f for f, _ in ranking if f in ort_forms][:2]
            net = run_network(top, args, workdir)
            print_network(net)
            report["network"] = net
    report["seconds"] = time.perf_counter() - t_start
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\ntotal {report['seconds']:.0f} s, load {report['machine']['load_avg_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite(report), indent=1, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
