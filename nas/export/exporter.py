"""Export a trained Arch: a standalone model in several formats, each loaded back and checked.

Formats (files under the output folder):

- ``json``: ``arch.json``, the Arch file (space + arch + meta with the export's metrics).
- ``packed``: ``model.npk``, the standalone model: only the chosen network's tensors, quantized
  kernels as bit-packed integers plus per-channel scales, BatchNorm folded (:mod:`nas.export.packed`).
- ``orbax``: ``orbax/``, the float variables {"params", "batch_stats"} as an orbax checkpoint.
- ``stablehlo``: ``model.stablehlo``, ``jax.export`` serialized inference function (weights as
  constants, int8 kernels dequantized in the graph, symbolic batch) (:mod:`nas.export.to_stablehlo`).
- ``onnx``: ``model.onnx``, the trained quantizers as int8 QDQ (BatchNorm folded into the weight
  scales), int8 kernels for layers with both bit-widths <= 8 (optionally int8-stored weights for
  weight-only quantized layers) (:mod:`nas.export.to_onnx`).
- ``tflite`` (on request): ``model.tflite``, a TFLite flatbuffer written from the op program
  (float kernels, BatchNorm folded, activation points as float arithmetic), checked with the
  LiteRT interpreter (:mod:`nas.export.to_tflite`).

Every written format is loaded back from its file and run on check images (the whole test
split, in ``nas export`` and the pipeline); its logits are compared (``max_abs_diff``, top-1
``agreement``, and test accuracy when labels are given) with the JAX model run on the standalone
(packed) weights, which is itself compared with the trained model (check ``standalone``).
Without quantized activations every format must agree within :data:`FLOAT_RTOL` of the logit
scale. With quantized activations the formats compute the trained quantizers exactly (see
:mod:`nas.export.to_onnx`), but a different float summation order can still move a value across a
rounding boundary now and then, so the check is on what a user sees: top-1 agreement >=
:data:`QUANT_AGREEMENT` and test accuracy within :data:`ACCURACY_POINTS` points of the JAX
model's. A failed ONNX check names the layer whose output diverges most
(:func:`nas.export.to_onnx.diverging_layer`); :func:`raise_on_failed_check` turns a failed report
into one :class:`~nas.errors.ExportCheckError` line (exit code 1 in the CLI).
The ONNX model's batch-1 latency is measured with onnxruntime (one thread, one core) and set
beside the latency table's prediction. ``export.json`` holds all of it.

Example:
    >>> report = export_model(archfile, variables, "runs/x/export", check=(x_test, y_test))
    >>> report["files"]["onnx"]["bytes"], report["checks"]["onnx"]["ok"]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from nas.archfile import ArchFile
from nas.errors import ExportCheckError, NasInputError
from nas.export.to_stablehlo import export_stablehlo, run_stablehlo
from nas.export.to_onnx import diverging_layer, export_onnx, measure_latency_ms, run_onnx
from nas.export.to_tflite import network_to_tflite, run_tflite
from nas.latency.flax_weights import onnx_weights
from nas.export.packed import load_packed, pack_variables, packed_nbytes, save_packed, unpack_variables
from nas.latency.table import LatencyTable
from nas.latency.validate import measure_arch_ms
from nas.model import Network, build_model, init_variables
from nas.safe_write import write_atomic, write_json_atomic

FORMATS = ("json", "packed", "orbax", "stablehlo", "onnx", "tflite")
#: What ``nas export`` writes without --format (TFLite on request: its check runs image by image).
DEFAULT_FORMATS = ("json", "packed", "orbax", "stablehlo", "onnx")
FLOAT_RTOL = 1e-3
QUANT_AGREEMENT = 0.995
ACCURACY_POINTS = 0.2
REPORT_FILE = "export.json"
_APPLY: dict[int, Any] = {}  # the compiled apply of the model being exported
FILE_NAMES = {"json": "arch.json", "packed": "model.npk", "orbax": "orbax",
              "stablehlo": "model.stablehlo", "onnx": "model.onnx", "tflite": "model.tflite"}


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """Parses 'json,orbax,...' (or a list); 'all' means every format.

    Raises:
        NasInputError: an unknown format.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"]:
        return list(FORMATS)
    for f in items:
        if f not in FORMATS:
            raise NasInputError(f"unknown export format {f!r}; choose from {', '.join(FORMATS)} "
                                "or 'all'", field="format")
    if not items:
        raise NasInputError("no export format given", field="format")
    return list(dict.fromkeys(items))


@dataclasses.dataclass
class ExportOptions:
    """Settings of an export.

    Attributes:
        formats: formats to write (see :data:`FORMATS`).
        calibration: images for post-training recalibration (``onnx_recalibrate``).
        measure_latency: measure the ONNX model's latency with onnxruntime.
        latency_table: path of a latency table to predict the latency from (None: no prediction).
        onnx_weight_only_int8: store weight-only quantized layers' ONNX weights as int8 (smaller
            file, slower onnxruntime inference; see :mod:`nas.export.to_onnx`).
        onnx_recalibrate: replace the trained activation steps of the ONNX model by
            post-training ones from `calibration` (off: the ONNX model is the trained one).
    """

    formats: Sequence[str] = DEFAULT_FORMATS
    calibration: np.ndarray | None = None
    measure_latency: bool = True
    latency_table: str | None = None
    onnx_weight_only_int8: bool = False
    onnx_recalibrate: bool = False


def _layer_names(space: Any) -> tuple[str, ...]:
    return ("stem",) + tuple(slot.prefix for slot in space.slots) + ("head",)


def has_quantized_activations(specs: Sequence[Any]) -> bool:
    """Whether any layer quantizes its activations (exports are then checked by agreement)."""
    return any(s.bits_a < 32 for s in specs if s.op != "skip")


def compare_logits(ref: np.ndarray, got: np.ndarray, quantized: bool,
                   labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compares logits of an export with the JAX model's.

    Args:
        ref: JAX logits [N, K].
        got: the export's logits [N, K].
        quantized: judge by top-1 agreement and accuracy instead of the float tolerance.
        labels: optional labels [N] to report (and, quantized, check) accuracies.

    Returns:
        {"max_abs_diff", "scale", "agreement", "exact_fraction" (images whose logits agree within
        the float tolerance), "ok", "tolerance", accuracies if labels}.
    """
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = float(max(1.0, np.max(np.abs(ref)))) if ref.size else 1.0
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    agreement = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if ref.size else 1.0
    per_image = np.max(np.abs(ref - got), axis=-1) if ref.size else np.zeros(0)
    exact = float(np.mean(per_image <= FLOAT_RTOL * scale)) if ref.size else 1.0
    out: dict[str, Any] = {"max_abs_diff": diff, "scale": scale, "agreement": agreement,
                           "exact_fraction": exact}
    if labels is not None:
        out["accuracy"] = float(np.mean(got.argmax(-1) == labels))
        out["reference_accuracy"] = float(np.mean(ref.argmax(-1) == labels))
    if quantized:
        ok = agreement >= QUANT_AGREEMENT
        tol = f"agreement >= {QUANT_AGREEMENT}"
        if labels is not None:
            ok = ok and abs(out["accuracy"] - out["reference_accuracy"]) * 100 <= ACCURACY_POINTS + 1e-9
            tol += f" and accuracy within {ACCURACY_POINTS} points"
    else:
        ok = diff <= FLOAT_RTOL * scale
        tol = f"max_abs_diff <= {FLOAT_RTOL} x {scale:.3g}"
    out.update(ok=bool(ok), tolerance=tol)
    return out


def failed_check_line(report: Mapping[str, Any]) -> str | None:
    """One line describing the failed checks of an export report (None when all passed)."""
    bad = [(fmt, c) for fmt, c in report["checks"].items() if not c["ok"]]
    if not bad:
        return None
    parts = []
    for fmt, c in bad:
        acc = ""
        if "accuracy" in c:
            acc = f", accuracy {100 * c['accuracy']:.2f}% vs {100 * c['reference_accuracy']:.2f}%"
        parts.append(f"{fmt}: top-1 agreement {100 * c['agreement']:.2f}%{acc}, "
                     f"max |logit diff| {c['max_abs_diff']:.3g} (needs {c['tolerance']})")
    line = "; ".join(parts)
    div = report.get("diverging_layer")
    if div and div.get("layer"):
        line += (f"; layer {div['layer']} diverges most (relative error "
                 f"{div['relative_error']:.3g})")
    return line + f"; see {report.get('report_path', REPORT_FILE)}"


def raise_on_failed_check(report: Mapping[str, Any]) -> None:
    """Raises :class:`~nas.errors.ExportCheckError` (one line) if a check of `report` failed."""
    line = failed_check_line(report)
    if line is not None:
        raise ExportCheckError(line)


def _jax_features(model: Any, variables: Mapping[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's output of the JAX model on `x` ({layer: array}, network order; head: logits)."""
    variables = {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")}
    # one compiled call: run eagerly, every op of the network would be compiled on its own
    apply = jax.jit(lambda v, xb: model.apply(v, xb, train=False, mutable=["intermediates"]))
    logits, inter = apply(variables, x)
    sown = inter["intermediates"]  # a jitted dict comes back in sorted key order
    feats = {name: np.asarray(sown[name]["features"][0]) for name in model.names if name in sown}
    feats["head"] = np.asarray(logits)
    return feats


def jax_logits(model: Any, variables: Mapping[str, Any], x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Returns the logits of `model` on `x` in inference mode, in batches.

    One compiled function per model, whatever the variables.

    Args:
        model: the network.
        variables: {"params", "batch_stats"}.
        x: images [N, H, W, C].
        batch: images per call.
    """
    apply = _APPLY.get(id(model))
    if apply is None or apply[0] is not model:
        apply = (model, jax.jit(lambda v, xb: model.apply(v, xb, train=False)))
        _APPLY.clear()
        _APPLY[id(model)] = apply
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(variables))
    batch = max(1, min(batch, len(x)))
    outs = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if n < batch:  # zero-pad the last batch: one input shape, one compile
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), xb.dtype)])
        outs.append(np.asarray(apply[1](variables, xb))[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _save_orbax(path: Path, variables: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp.absolute(), dict(variables))
        ckptr.wait_until_finished()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_orbax(path: str | os.PathLike, target: Mapping[str, Any]) -> dict[str, Any]:
    """Restores exported orbax variables with the structure of `target`."""
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(Path(path).absolute(), dict(target))


def preprocess_meta(data: Any) -> dict:
    """Returns the input standardization an exported model expects: layout, per-channel mean, std.

    Args:
        data: the :class:`nas.data.Dataset` the model was trained on.
    """
    mean = None if data.mean is None else np.asarray(data.mean).ravel().tolist()
    std = None if data.std is None else np.asarray(data.std).ravel().tolist()
    return {"layout": "NHWC", "mean": mean, "std": std}


def fp32_counterpart_bytes(specs: Sequence[Any], names: Sequence[str]) -> int:
    """Returns the packed size of the uncompressed counterpart of a network.

    The counterpart has the same layers with every weight and activation at 32 bits, no pruning
    (width 1) and no factorization (rank None): what the network would be without its
    compression knobs.
    """

    full = [dataclasses.replace(s, bits_w=32, bits_a=32, width=1.0, rank=None) for s in specs]
    model = Network(specs=tuple(full), names=tuple(names))
    variables = init_variables(model, jax.random.PRNGKey(0), (1, *full[0].in_hw, full[0].cin))
    return packed_nbytes(pack_variables(full, names, variables))


def export_model(archfile: ArchFile, variables: Mapping[str, Any], out: str | os.PathLike,
                 options: ExportOptions | None = None,
                 check: tuple[np.ndarray, np.ndarray | None] | None = None,
                 meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Exports a trained Arch in the requested formats and checks every file.

    Args:
        archfile: the Arch (and its space).
        variables: the trained {"params", "batch_stats"}.
        out: output folder (created; files are replaced atomically).
        options: formats, calibration images, latency settings.
        check: (images [N, H, W, C], labels [N] or None) to compare outputs on (default: 16
            random images).
        meta: extra metadata stored in arch.json and export.json.

    Returns:
        The export report (also written to ``out/export.json``): files (path, bytes), checks,
        sizes, latency.
    """
    options = options or ExportOptions()
    formats = parse_formats(options.formats)
    space, arch = archfile.space, archfile.arch
    specs = space.block_specs(arch)
    names = _layer_names(space)
    model = build_model(space, arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if check is None:
        rng = np.random.default_rng(0)
        check = (rng.random((16, *space.resolution, space.in_channels), np.float32), None)
    x, y = np.asarray(check[0], np.float32), check[1]
    ref = jax_logits(model, variables, x)
    quantized = has_quantized_activations(specs)
    report: dict[str, Any] = {"arch_id": space.arch_id(arch), "space": space.name,
                              "formats": formats, "files": {}, "checks": {}, "meta": dict(meta or {})}
    if y is not None:
        report["jax_accuracy"] = float(np.mean(ref.argmax(-1) == y))

    packed = pack_variables(specs, names, variables)
    float_vars = unpack_variables(packed)
    # The standalone model: what every file below holds. Folding BatchNorm changes float
    # rounding, which can move an activation across a quantization step: with quantized
    # activations it matches the trained model within the quantization tolerance only.
    standalone = jax_logits(model, float_vars, x)
    report["checks"]["standalone"] = compare_logits(ref, standalone, quantized, y)

    def record(fmt: str) -> Path:
        path = out / FILE_NAMES[fmt]
        report["files"][fmt] = {"path": str(path), "bytes": _dir_bytes(path)}
        return path

    if "packed" in formats:
        save_packed(packed, out / FILE_NAMES["packed"], {"arch_id": report["arch_id"]})
        back = unpack_variables(load_packed(record("packed")))
        report["checks"]["packed"] = compare_logits(standalone, jax_logits(model, back, x), False, y)
    if "orbax" in formats:
        _save_orbax(out / FILE_NAMES["orbax"], float_vars)
        back = load_orbax(record("orbax"), float_vars)
        report["checks"]["orbax"] = compare_logits(standalone, jax_logits(model, back, x), False, y)
    if "stablehlo" in formats:
        write_atomic(out / FILE_NAMES["stablehlo"],
                     export_stablehlo(model, packed, (*space.resolution, space.in_channels)))
        blob = record("stablehlo").read_bytes()
        report["checks"]["stablehlo"] = compare_logits(standalone, run_stablehlo(blob, x), quantized, y)
    if "onnx" in formats:
        onnx_model, info = export_onnx(specs, names, float_vars, calibration=options.calibration,
                                       weight_only_int8=options.onnx_weight_only_int8,
                                       recalibrate=options.onnx_recalibrate)
        write_atomic(out / FILE_NAMES["onnx"], onnx_model.SerializeToString())
        blob = record("onnx").read_bytes()
        report["onnx"] = {k: v for k, v in info.items() if k != "layer_outputs"}
        report["checks"]["onnx"] = compare_logits(standalone, run_onnx(blob, x), quantized, y)
        if not report["checks"]["onnx"]["ok"]:
            sample = x[:64]
            report["diverging_layer"] = diverging_layer(
                onnx_model, info["layer_outputs"], _jax_features(model, float_vars, sample), sample)
        report["latency"] = _latency(onnx_model, space, arch, options)
    if "tflite" in formats:
        write_atomic(out / FILE_NAMES["tflite"],
                     network_to_tflite(specs, onnx_weights(float_vars), names))
        blob = record("tflite").read_bytes()
        report["checks"]["tflite"] = compare_logits(standalone, run_tflite(blob, x), quantized, y)
    report["sizes"] = {"packed_bytes": _packed_file_bytes(out, packed, report),
                       "fp32_counterpart_bytes": fp32_counterpart_bytes(specs, names)}
    report["sizes"]["ratio"] = report["sizes"]["packed_bytes"] / report["sizes"]["fp32_counterpart_bytes"]
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    report["report_path"] = str(out / REPORT_FILE)
    if "json" in formats:
        summary = {"export": {k: report[k] for k in ("checks", "sizes") if k in report}}
        if "latency" in report:
            summary["export"]["latency"] = report["latency"]
        ArchFile(space, arch, {**archfile.meta, **(meta or {}), **summary}).save(
            out / FILE_NAMES["json"], with_space=True)  # a user's space YAML goes with it
        record("json")
    write_json_atomic(out / REPORT_FILE, report, default=float)
    return report


def _packed_file_bytes(out: Path, packed: Mapping[str, Any], report: Mapping[str, Any]) -> int:
    if "packed" in report["files"]:
        return int(report["files"]["packed"]["bytes"])
    return packed_nbytes(packed)


def _latency(onnx_model: Any, space: Any, arch: Mapping[str, Any], options: ExportOptions) -> dict:
    """Times the exported network the way the latency table was built, beside its prediction.

    With an onnxruntime table (or none) the exported ONNX graph is timed with the table's
    threads, scheduler and timing; with a jax table the Flax network under ``jax.jit``, as the
    table's validation networks are timed.
    """
    table = LatencyTable.load(options.latency_table, space) if options.latency_table else None
    backend = table.backend if table is not None else "onnxruntime"
    prov = table.data.get("provenance", {}) if table is not None else {}
    out: dict[str, Any] = {"backend": backend, "batch": 1, "threads": int(prov.get("threads", 1))}
    if table is not None and table.remote_device is not None:
        out["note"] = (f"the table was measured on {table.remote_device}; time the exported "
                       "model there (its measure.py) - it is not timed on this machine")
    elif options.measure_latency:
        if backend == "jax":
            out["measured"] = measure_arch_ms(table, arch)
        else:
            out["measured"] = measure_latency_ms(onnx_model, (*space.resolution, space.in_channels),
                                                 provenance=prov)
        out["measured_ms"] = out["measured"]["median_ms"]
    if table is not None:
        out["predicted_ms"] = float(table.predict(arch))
        out["table"] = str(options.latency_table)
        out["table_backend"] = table.backend
        if out.get("measured_ms"):
            out["error_pct"] = 100.0 * (out["predicted_ms"] - out["measured_ms"]) / out["measured_ms"]
    return out
