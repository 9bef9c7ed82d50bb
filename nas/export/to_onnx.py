"""ONNX export of a trained network: the trained quantizers, exactly, as int8 QDQ.

The graph comes from the latency tables' builder (:mod:`nas.latency.onnx_blocks`), so the
exported model is the graph whose layers the onnxruntime table timed, now with the trained
weights and quantizers:

- every activation point of :mod:`nas.blocks.act_points` is a QuantizeLinear ->
  DequantizeLinear pair whose scale is the **trained step** of the Flax quantizer there (LSQ's
  learned step, or the running range / qp of a minmax quantizer); 8-bit points are int8 / uint8
  with zero point 0, below 8 bits a Clip to the b-bit grid comes first (same integer levels);
- quantized weights keep their **trained integer levels and per-channel steps**; BatchNorm is
  folded into the per-channel scale (``q * (s m)``), never into the levels, so no weight moves
  off its grid; 4- and 2-bit levels are stored in int8 (onnxruntime's int8 kernels run them);
- layers with ``bits_w <= 8`` and ``bits_a <= 8`` run int8 kernels (onnxruntime fuses the QDQ
  pattern into QLinearConv, QLinearAdd, ...); weight-only quantized layers run float kernels on
  the float values of their grid (``weight_only_int8=True`` stores them as int8 + a
  DequantizeLinear: 1 byte per weight in the file, dequantized at every call by onnxruntime).

Post-training recalibration of the activation steps on calibration images (max |x| / qp per
point) is an option (``recalibrate=True``), not the default: it exports another model than the
trained one.

:func:`diverging_layer` compares every layer's output of the exported graph with the JAX
model's, to name the layer where an export starts to differ.

Input 'input' is NHWC float32 (the JAX model's layout), output 'logits'.

Example:
    >>> model, info = export_onnx(specs, names, variables)
    >>> onnx.save(model, "export/model.onnx")
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from nas.blocks.quant import act_grid
from nas.latency.build import WorkerMeasurer, stored_timing
from nas.latency.flax_weights import onnx_weights
from nas.latency.measure import TimingConfig
from nas.latency.onnx_blocks import network_to_onnx
from nas.latency.onnx_graph import ActQuantParams, GraphBuilder
from nas.latency.precision import runs_int8
from nas.spec import BlockSpec

INT8_WEIGHT_BITS = 8


class _RecalibratedBuilder(GraphBuilder):
    """Builds the graph with the activation steps replaced by calibrated ones, by (layer, point)."""

    def __init__(self, steps: Mapping[tuple[str, str], float], seed: int = 0):
        super().__init__(seed)
        self.steps = dict(steps)

    def qdq(self, x: str, quant: ActQuantParams) -> str:
        step = self.steps.get((self.layer, quant.point), quant.step)
        return super().qdq(x, ActQuantParams(quant.point, step, quant.signed, quant.bits))


def _session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_with_outputs(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray,
                     batch: int = 64) -> list[np.ndarray]:
    """Runs `model` on `images` and returns the named intermediate tensors, concatenated.

    Args:
        model: an ONNX graph holding the tensors.
        tensors: tensor names (distinct).
        images: inputs [N, H, W, C].
        batch: images per run.

    Returns:
        One array per tensor, batches concatenated on axis 0.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[:]
    for t in tensors:
        model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = _session(model, threads=0)
    outs: list[list[np.ndarray]] = [[] for _ in tensors]
    for i in range(0, len(images), batch):
        for acc, v in zip(outs, sess.run(list(tensors), {"input": np.asarray(images[i:i + batch],
                                                                             np.float32)})):
            acc.append(v)
    return [np.concatenate(a) for a in outs]


def calibrated_steps(model: onnx.ModelProto, points: Sequence[tuple[str, str, str]],
                     quants: Mapping[tuple[str, str], ActQuantParams], images: np.ndarray
                     ) -> dict[tuple[str, str], float]:
    """Post-training steps: max |x| / qp of each activation point on calibration images.

    Args:
        model: the graph (with its trained steps).
        points: (layer, point, tensor) of each point (``GraphBuilder.points``).
        quants: the trained quantizer of each (layer, point).
        images: calibration inputs [N, H, W, C].

    Returns:
        {(layer, point): step}.
    """
    values = run_with_outputs(model, [t for _, _, t in points], images)
    out = {}
    for (layer, point, _), v in zip(points, values):
        q = quants[(layer, point)]
        _, qp = act_grid(q.bits, q.signed)
        amax = float(np.max(np.abs(v))) if q.signed else float(np.max(v, initial=0.0))
        out[(layer, point)] = max(amax, 1e-8) / qp
    return out


def _build(g: GraphBuilder, specs: Sequence[BlockSpec], names: Sequence[str],
           weights: Mapping[str, Any], int8: Sequence[bool], batch: int | str,
           int8_weights: Sequence[bool]) -> onnx.ModelProto:
    """Builds the network into `g` (NHWC input, output 'logits')."""
    model = network_to_onnx(specs, int8=int8, weights=weights, names=names, batch=batch,
                            layout="NHWC", builder=g, int8_weights=int8_weights)
    return _rename_logits(model)


def _rename_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    out = model.graph.output[0].name
    if out != "logits":
        model.graph.node.append(helper.make_node("Identity", [out], ["logits"], name="logits_node"))
        shape = model.graph.output[0].type.tensor_type.shape
        dims = [d.dim_param or d.dim_value for d in shape.dim]
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims))
    model.producer_name = "nas export"
    return model


def export_onnx(specs: Sequence[BlockSpec], names: Sequence[str], variables: Mapping[str, Any],
                calibration: np.ndarray | None = None, batch: int | str = "N",
                int8: Sequence[bool] | None = None, weight_only_int8: bool = False,
                recalibrate: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Returns the ONNX model of a trained network and a description of it.

    Args:
        specs: the network's layers (``space.block_specs(arch)``).
        names: the layers' submodule names ('stem', slot prefixes, 'head').
        variables: {"params", "batch_stats"} (kernels may be the dequantized packed ones).
        calibration: images [N, H, W, C] for `recalibrate`.
        batch: the input's batch dimension (an int, or a name for a dynamic batch).
        int8: per layer, whether it runs int8 kernels (default :func:`runs_int8`).
        weight_only_int8: store the weights of weight-only quantized layers as int8 (smaller
            file, slower onnxruntime inference; see the module docstring).
        recalibrate: replace the trained activation steps by post-training ones from
            `calibration` (another model than the trained one; off by default).

    Returns:
        (model, info): info = {"int8_layers", "weight_only_int8_layers", "recalibrated",
        "activation_points", "layer_outputs" ({layer: tensor name})}.
    """
    weights = onnx_weights(variables)
    int8 = [runs_int8(s) for s in specs] if int8 is None else list(int8)
    stored = [weight_only_int8 and not q and s.bits_w <= INT8_WEIGHT_BITS
              for s, q in zip(specs, int8)]
    weight_only = [n for n, w8 in zip(names, stored) if w8]
    g = GraphBuilder()
    model = _build(g, specs, names, weights, int8, batch, stored)
    recalibrated = False
    if recalibrate and calibration is not None and len(calibration) and g.points:
        steps = calibrated_steps(model, g.points, g.point_quants, calibration)
        g = _RecalibratedBuilder(steps)
        model = _build(g, specs, names, weights, int8, batch, stored)
        recalibrated = True
    onnx.checker.check_model(model)
    info = {"int8_layers": [n for s, n, q in zip(specs, names, int8) if q and s.op != "skip"],
            "weight_only_int8_layers": weight_only, "recalibrated": recalibrated,
            "activation_points": len(g.points), "layer_outputs": dict(g.layer_outputs)}
    return model, info


def run_onnx(model: onnx.ModelProto | bytes, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """Runs an exported model on images [N, H, W, C] and returns the logits."""
    if isinstance(model, bytes):
        model = onnx.ModelProto.FromString(model)
    return _session(model, threads).run(["logits"], {"input": np.asarray(x, np.float32)})[0]


def diverging_layer(model: onnx.ModelProto, layer_outputs: Mapping[str, str],
                    jax_features: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, Any]:
    """Names the layer at which the exported graph starts to differ from the JAX model.

    Each layer's output is compared (mean |difference| / mean |JAX output|); the layer whose
    error grows most over the layer before it is where the export diverges.

    Args:
        model: the exported graph.
        layer_outputs: {layer: output tensor} (``info["layer_outputs"]``).
        jax_features: {layer: the JAX model's output of that layer, NHWC or [N, K]}, in
            network order.
        x: the images both ran on.

    Returns:
        {"layer", "relative_error" (of that layer), "errors" ({layer: relative error})}.
    """
    layers = [n for n in jax_features if n in layer_outputs]
    values = run_with_outputs(model, [layer_outputs[n] for n in layers], x)
    errors, worst, worst_jump, prev = {}, None, -np.inf, 0.0
    for name, got in zip(layers, values):
        ref = np.asarray(jax_features[name], np.float64)
        got = np.asarray(got, np.float64)
        if got.ndim == 4:
            got = got.transpose(0, 2, 3, 1)
        err = float(np.mean(np.abs(got - ref)) / max(np.mean(np.abs(ref)), 1e-12))
        errors[name] = err
        if err - prev > worst_jump:
            worst, worst_jump = name, err - prev
        prev = err
    return {"layer": worst, "relative_error": errors.get(worst, 0.0), "errors": errors}


def measure_latency_ms(model: onnx.ModelProto, image_shape: Sequence[int], core: int | None = None,
                       timing: Any = None, provenance: Mapping[str, Any] | None = None
                       ) -> dict[str, float]:
    """Measures the batch-1 latency of an exported model exactly as the onnxruntime tables time.

    The model runs in a fresh measurement worker (:mod:`nas.latency.worker`): pinned to one core,
    onnxruntime with one intra-op and one inter-op thread, all graph optimizations, input and
    output bound once (io binding), timed in rounds with the lowest-median round kept - the
    session options, threads, pinning, scheduler and timing of a table's entries. Given a
    table's provenance, its threads, scheduler and timing are used.

    Args:
        model: the ONNX model (dynamic or batch-1 input named 'input').
        image_shape: (H, W, C).
        core: core to pin to (default: the last allowed).
        timing: a :class:`nas.latency.measure.TimingConfig` (default: the table's, else its
            defaults).
        provenance: a latency table's ``provenance`` (threads, scheduler, timing) to match.

    Returns:
        {"median_ms", "p10_ms", "p90_ms", "n"}.

    Raises:
        RuntimeError: the worker could not run the model.
    """
    prov = dict(provenance or {})
    if timing is None:
        timing = stored_timing({"provenance": prov}, TimingConfig())
    measurer = WorkerMeasurer("onnxruntime", 1, int(prov.get("threads", 1)), core, timing,
                              realtime=prov.get("scheduler") == "fifo")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        item = {"id": "model", "kind": "model", "path": path, "shape": [1, *image_shape]}
        for reply in measurer.measure([item]):
            if reply["type"] == "result":
                return {k: reply[k] for k in ("median_ms", "p10_ms", "p90_ms", "n")}
            if reply["type"] == "error":
                raise RuntimeError(f"could not time the exported model: {reply['error']}")
    raise RuntimeError("could not time the exported model: the worker returned no result")
