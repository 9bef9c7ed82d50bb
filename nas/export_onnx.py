"""ONNX export of a trained network, with calibrated int8 QDQ for its quantized layers.

The graph comes from the latency tables' builder (:mod:`nas.latency.onnx_blocks`), so the
exported model is the graph whose layers the onnxruntime table timed, now with the trained
weights (BatchNorm folded into the convs):

- layers with ``bits_w <= 8`` and ``bits_a <= 8`` run int8 kernels: QuantizeLinear ->
  DequantizeLinear (uint8, per tensor) on their activations, int8 weights per output channel;
- the activation ranges are *calibrated*: a first graph with the same structure, but without
  activation quantization, runs on calibration images and records the min/max of every tensor
  that the int8 graph quantizes; the second (exported) graph uses those ranges;
- layers with only weight quantization (``bits_w <= 8``, ``bits_a = 32``) run float kernels;
  with ``weight_only_int8=True`` their weights are stored as int8 + per-channel scale behind a
  DequantizeLinear (1 byte per weight in the file), but onnxruntime then dequantizes them at
  every call (measured here: 0.044 -> 0.156 ms for a tiny digits network), so it is off by
  default and the weights are stored as the float values of their quantization grid.

Input 'input' is NHWC float32 (the JAX model's layout), output 'logits'.

Example:
    >>> model = export_onnx(specs, names, variables, calibration=x_train[:256])
    >>> onnx.save(model, "export/model.onnx")
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nas.latency.flax_weights import onnx_weights
from nas.latency.onnx_blocks import OPSET, GraphBuilder, emit_layer
from nas.latency.precision import runs_int8
from nas.spec import BlockSpec

INT8_WEIGHT_BITS = 8


class _RecordingBuilder(GraphBuilder):
    """Builds the int8 graph's structure without activation QDQ, recording what it would quantize."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.recorded: list[str] = []

    def qdq(self, x: str, value_range: tuple[float, float]) -> str:
        self.recorded.append(x)
        return x

    def scale_of(self, dq: str) -> float:
        return 1e-4  # only scales int32 biases of this calibration graph: keep them precise


class _CalibratedBuilder(GraphBuilder):
    """Builds the int8 graph with one calibrated range per qdq call (same call order)."""

    def __init__(self, ranges: Sequence[tuple[float, float]], seed: int = 0):
        super().__init__(seed)
        self.ranges = list(ranges)
        self.calls = 0

    def qdq(self, x: str, value_range: tuple[float, float]) -> str:
        r = self.ranges[self.calls] if self.calls < len(self.ranges) else value_range
        self.calls += 1
        return super().qdq(x, r)


def _build(g: GraphBuilder, specs: Sequence[BlockSpec], names: Sequence[str],
           weights: Mapping[str, Any], int8: Sequence[bool], batch: int | str
           ) -> tuple[onnx.ModelProto, list[tuple[int, int]]]:
    first = specs[0]
    x = g.node("Transpose", ["input"], "nchw", perm=[0, 3, 1, 2])
    spans = []
    for spec, q, name in zip(specs, int8, names):
        start = len(g.nodes)
        x = emit_layer(g, x, spec, q, weights.get(name))
        spans.append((start, len(g.nodes)))
    g.nodes.append(helper.make_node("Identity", [x], ["logits"], name="logits_node"))
    graph = helper.make_graph(
        g.nodes, "nas_export",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *first.in_hw, first.cin])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, specs[-1].cout])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nas export")
    model.ir_version = 8
    return model, spans


def _session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def calibrate_ranges(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray,
                     batch: int = 64) -> list[tuple[float, float]]:
    """Runs `model` on `images` and returns (min, max) of each named tensor.

    Args:
        model: a float graph holding the tensors.
        tensors: tensor names (repeats allowed).
        images: calibration inputs [N, H, W, C].
        batch: images per run.

    Returns:
        One (low, high) per entry of `tensors`.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    unique = list(dict.fromkeys(tensors))
    for t in unique:
        model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = _session(model, threads=0)
    lo = {t: np.inf for t in unique}
    hi = {t: -np.inf for t in unique}
    for i in range(0, len(images), batch):
        outs = sess.run(unique, {"input": np.asarray(images[i:i + batch], np.float32)})
        for t, v in zip(unique, outs):
            lo[t] = min(lo[t], float(np.min(v)))
            hi[t] = max(hi[t], float(np.max(v)))
    return [(lo[t], hi[t]) for t in tensors]


def _int8_weight_storage(model: onnx.ModelProto, spans: Sequence[tuple[int, int]],
                         layers: Sequence[bool]) -> None:
    """Stores the float Conv/Gemm weights of the given layers as int8 + DequantizeLinear."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    new_nodes = []
    for (start, end), wanted in zip(spans, layers):
        if not wanted:
            continue
        for node in nodes[start:end]:
            if node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
                continue
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            axis = 0 if node.op_type == "Conv" else 1
            moved = np.moveaxis(w, axis, -1)
            amax = np.max(np.abs(moved.reshape(-1, moved.shape[-1])), axis=0)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            base = node.input[1]
            graph.initializer.remove(inits[base])
            graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                      numpy_helper.from_array(scale, base + "_scale"),
                                      numpy_helper.from_array(np.zeros_like(scale, np.int8),
                                                              base + "_zero")])
            new_nodes.append(helper.make_node("DequantizeLinear",
                                              [base + "_int8", base + "_scale", base + "_zero"],
                                              [base], name=base + "_dq", axis=axis))
    if new_nodes:
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + rest)


def export_onnx(specs: Sequence[BlockSpec], names: Sequence[str], variables: Mapping[str, Any],
                calibration: np.ndarray | None = None, batch: int | str = "N",
                int8: Sequence[bool] | None = None, weight_only_int8: bool = False
                ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Returns the ONNX model of a trained network and a description of it.

    Args:
        specs: the network's layers (``space.block_specs(arch)``).
        names: the layers' submodule names ('stem', slot prefixes, 'head').
        variables: {"params", "batch_stats"} (kernels may be the dequantized packed ones).
        calibration: images [N, H, W, C] to calibrate int8 activation ranges (None: the
            builder's default ranges).
        batch: the input's batch dimension (an int, or a name for a dynamic batch).
        int8: per layer, whether it runs int8 kernels (default :func:`runs_int8`).
        weight_only_int8: store the weights of weight-only quantized layers as int8 (smaller
            file, slower onnxruntime inference; see the module docstring).

    Returns:
        (model, info): info = {"int8_layers", "weight_only_int8_layers", "calibrated"}.
    """
    weights = onnx_weights(variables)
    int8 = [runs_int8(s) for s in specs] if int8 is None else list(int8)
    calibrated = False
    if any(int8) and calibration is not None and len(calibration):
        rec = _RecordingBuilder()
        probe, _ = _build(rec, specs, names, weights, int8, batch)
        ranges = calibrate_ranges(probe, rec.recorded, calibration)
        g: GraphBuilder = _CalibratedBuilder(ranges)
        calibrated = True
    else:
        g = GraphBuilder()
    model, spans = _build(g, specs, names, weights, int8, batch)
    weight_only = [weight_only_int8 and (not q) and s.bits_w <= INT8_WEIGHT_BITS
                   for s, q in zip(specs, int8)]
    _int8_weight_storage(model, spans, weight_only)
    onnx.checker.check_model(model)
    info = {"int8_layers": [n for n, q in zip(names, int8) if q],
            "weight_only_int8_layers": [n for n, w in zip(names, weight_only) if w],
            "calibrated": calibrated}
    return model, info


def run_onnx(model: onnx.ModelProto | bytes, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """Runs an exported model on images [N, H, W, C] and returns the logits."""
    if isinstance(model, bytes):
        model = onnx.ModelProto.FromString(model)
    return _session(model, threads).run(["logits"], {"input": np.asarray(x, np.float32)})[0]


def measure_latency_ms(model: onnx.ModelProto, image_shape: Sequence[int], core: int | None = None,
                       timing: Any = None) -> dict[str, float]:
    """Measures the batch-1 latency of an exported model with onnxruntime, one thread, one core.

    Timed like the latency tables' onnxruntime backend: all graph optimizations, inputs and
    outputs bound once (io binding), so Python's per-call overhead is not counted.

    Args:
        model: the ONNX model (dynamic or batch-1 input).
        image_shape: (H, W, C).
        core: core to pin to during the measurement (default: the last allowed); the previous
            affinity is restored.
        timing: a :class:`nas.latency.measure.TimingConfig` (default: its defaults).

    Returns:
        {"median_ms", "p10_ms", "p90_ms", "n"}.
    """
    import os

    from nas.latency.measure import TimingConfig, time_call

    import onnxruntime as ort

    from nas.latency.backends.ort_backend import session

    x = np.random.default_rng(0).standard_normal((1, *image_shape)).astype(np.float32)
    sess = session(model.SerializeToString(), threads=1)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_output("logits", "cpu")
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        if before:
            os.sched_setaffinity(0, {core if core is not None else max(before)})
        t = time_call(lambda: sess.run_with_iobinding(binding), timing or TimingConfig())
    finally:
        if before:
            os.sched_setaffinity(0, before)
    return t.to_dict()
