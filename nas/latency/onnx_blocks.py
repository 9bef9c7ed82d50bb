"""ONNX graphs of BlockSpecs, written with ``onnx.helper``: one block, or a whole network.

Each layer is its op program (:func:`nas.blocks.program.program`, the one definition of every
block), written op by op (BatchNorm folded into the conv before it, so convs get a bias), in
NCHW layout:

- ``stem``: kxk Conv (stride) -> act.
- ``mbconv``: 1x1 expand Conv -> act [-> channel shuffle if groups > 1] -> kxk depthwise Conv
  (``group=C``) -> act [-> SE] -> 1x1 project Conv [-> Add input].
- ``dwsep``: kxk depthwise Conv -> act [-> SE] -> 1x1 pointwise Conv [-> Add input].
- ``skip``: Identity.  ``head``: [1x1 Conv -> act] -> GlobalAveragePool -> Flatten -> Gemm
  (float logits; the classifier's weights are the float values of their grid).
- SE: GlobalAveragePool -> Conv(bias) -> act -> Conv(bias) -> Sigmoid -> Mul.
- rank r: a 1x1 cin->cout conv becomes Conv(cin->r, no bias) -> Conv(r->cout).
- act: relu -> Relu, relu6 -> Clip(0, 6), hswish -> HardSwish, swish -> x * Sigmoid(x).

Quantization is the trained model's, point for point:

- activations: every point of :func:`nas.blocks.act_points.activation_points` passes through
  QuantizeLinear -> DequantizeLinear with the trained step of the Flax quantizer ``q_<point>``
  as scale, stored as uint8: zero point 0 for unsigned points, 128 for signed ones (the grids
  of :mod:`nas.blocks.quant`, [0, 255] and [-128, 127]); below 8 bits a Clip to the b-bit grid
  comes first, so the same integer levels are kept in 8-bit storage;
- weights (``bits_w < 32``): the trained integer levels ``q`` and per-channel steps ``s`` of
  :func:`nas.blocks.quant.fake_quant_weight`; BatchNorm (multiplier ``m`` per channel) is folded
  *into the scale*, ``q * (s m)``, so no weight leaves its grid (a negative ``m`` flips the sign
  of ``q``, which the symmetric grid keeps). In QDQ graphs (``int8=True``) the levels are int8
  initializers behind a per-channel DequantizeLinear and biases int32 at scale ``s_x * s_w``;
  otherwise the float values ``q * s * m``.

onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into int8 kernels (QLinearConv,
QLinearAdd, QLinearGlobalAveragePool, ...). ``int8=True`` on a spec with 32-bit weights or
activations quantizes them at 8 bits (the latency tables time layers this way).

Weights: random (seeded) unless ``weights`` gives them, as ``{layer: {role: {name: array}}}``
with Flax layouts (conv kernels HWIO, depthwise ``[k, k, 1, C]``, dense ``[in, out]``). Roles are
the "/"-joined submodule paths of :mod:`nas.blocks` inside a layer, so
:func:`nas.latency.flax_weights.onnx_weights` maps Flax variables onto them directly:

- stem ``conv`` + ``bn``; mbconv ``expand`` + ``expand_bn``, ``dw`` + ``dw_bn``, ``project`` +
  ``project_bn``, ``se/reduce``, ``se/expand``; dwsep ``dw`` + ``dw_bn``, ``project`` +
  ``project_bn``, SE; head ``conv`` + ``bn``, ``classifier``.
- convs hold ``kernel`` (or ``kernel_u`` and ``kernel_v`` when factorized), their learned steps
  ``<kernel>_step`` and, for SE convs and the classifier, ``bias``; BatchNorms hold ``scale``,
  ``bias``, ``mean``, ``var`` (epsilon :data:`BN_EPSILON`, as :mod:`nas.blocks`).
- activation quantizers ``q_<point>`` (``se/q_<point>`` in SE) hold ``step`` and ``amax``;
  without them a point's step comes from :data:`DEFAULT_RANGES`.

Example:
    >>> model = network_to_onnx(space.block_specs(arch))
    >>> onnx.save(model, "net.onnx")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from nas.blocks.act_points import activation_points
from nas.blocks.program import (INPUT, Act, Add, Conv, Dense, Dropout, Mul, Op, Pool, Quantize,
                                Shuffle, output_of, program)
from nas.blocks.quant import act_grid, weight_grid
from nas.latency.onnx_graph import INT8_BITS, ActQuantParams, GraphBuilder
from nas.spec import BlockSpec

OPSET = 17
BN_EPSILON = 1e-5
FLOAT_BITS = 32
#: Default activation ranges (low, high) of quantized tensors (used without trained steps).
DEFAULT_RANGES = {"relu": (0.0, 8.0), "relu6": (0.0, 6.0), "hswish": (-0.375, 8.0),
                  "swish": (-0.3, 8.0), None: (-8.0, 8.0), "sigmoid": (0.0, 1.0)}

LayerWeights = Mapping[str, Any]


def _act(g: GraphBuilder, x: str, act: str | None) -> str:
    if act is None:
        return x
    if act == "relu":
        return g.node("Relu", [x])
    if act == "relu6":
        lo = g.const(np.array(0.0, np.float32), "clip_lo")
        hi = g.const(np.array(6.0, np.float32), "clip_hi")
        return g.node("Clip", [x, lo, hi], "relu6")
    if act == "hswish":
        return g.node("HardSwish", [x])
    if act == "swish":
        return g.node("Mul", [x, g.node("Sigmoid", [x])], "swish")
    raise ValueError(f"unknown activation {act!r}")


def _same_pads(in_hw: tuple[int, int], kernel: int, stride: int) -> list[int]:
    """ONNX pads [top, left, bottom, right] equal to lax.conv / Flax 'SAME' padding."""
    lows, highs = [], []
    for size in in_hw:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        lows.append(total // 2)
        highs.append(total - total // 2)
    return lows + highs


@dataclasses.dataclass
class QuantizedKernel:
    """A kernel on its integer grid: ``q * scale`` per output channel (last axis of HWIO)."""

    q: np.ndarray
    scale: np.ndarray


class LayerEmitter:
    """One layer being emitted: its spec, weights (given or seeded random) and quantizers.

    Args:
        g: the graph.
        spec: the layer.
        int8: write it as QDQ (int8 kernels); 32-bit weights / activations are then quantized
            at 8 bits.
        given: the layer's weights (see the module docstring), or None.
        int8_weights: store quantized weights as int8 + DequantizeLinear even where the layer
            runs float kernels (weight-only quantization: smaller file).
    """

    def __init__(self, g: GraphBuilder, spec: BlockSpec, int8: bool, given: LayerWeights | None,
                 int8_weights: bool = False):
        self.g = g
        self.spec = spec
        self.int8 = int8
        self.int8_weights = int8 or int8_weights
        self.given = given or {}
        self.bits_w = spec.bits_w if spec.bits_w < FLOAT_BITS else (INT8_BITS if int8 else FLOAT_BITS)
        bits_a = spec.bits_a if spec.bits_a < FLOAT_BITS else (INT8_BITS if int8 else FLOAT_BITS)
        self.bits_a = bits_a
        self.points = activation_points(dataclasses.replace(spec, bits_a=bits_a))

    def array(self, role: str, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
        value = self.given.get(role, {}).get(name)
        if value is not None:
            value = np.asarray(value, np.float32)
            if value.shape != shape:
                raise ValueError(f"weights {role}.{name}: shape {value.shape}, expected {shape}")
            return value
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (self.g.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if kind == "ones":
            return np.ones(shape, np.float32)
        return (0.01 * self.g.rng.standard_normal(shape)).astype(np.float32)

    def kernel(self, role: str, name: str, shape: tuple[int, ...]) -> np.ndarray | QuantizedKernel:
        """Returns a kernel (HWIO), on its trained integer grid when the layer quantizes weights."""
        w = self.array(role, name, shape, "kernel")
        if self.bits_w >= FLOAT_BITS:
            return w
        _, qp = weight_grid(self.bits_w)
        amax = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0)
        step = np.where(amax > 0, amax / qp, 1.0).astype(np.float32)
        learned = self.given.get(role, {}).get(name + "_step")
        if learned is not None:
            learned = np.asarray(learned, np.float32)
            step = np.where(learned > 0, learned, step).astype(np.float32)
        q = np.clip(np.round(w / step), -qp, qp)
        return QuantizedKernel(q.astype(np.float32), step)

    def folded_bn(self, role: str, cout: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (per-channel multiplier, bias) of BatchNorm `role` folded into its conv."""
        bn = self.given.get(role, {})
        scale = self.array(role, "scale", (cout,), "ones")
        beta = self.array(role, "bias", (cout,), "small")
        mean = self.array(role, "mean", (cout,), "small")
        var = np.abs(self.array(role, "var", (cout,), "ones"))
        mult = scale / np.sqrt(var + float(bn.get("epsilon", BN_EPSILON)))
        return mult.astype(np.float32), (beta - mean * mult).astype(np.float32)

    def quant(self, point: str, default_key: Any) -> ActQuantParams | None:
        """The quantizer of activation point `point` (None where the layer has no such point)."""
        if point not in self.points:
            return None
        signed = self.points[point]
        _, qp = act_grid(self.bits_a, signed)
        trained = self.given.get(f"q_{point}") or self.given.get(f"se/q_{point}") or {}
        step = float(np.asarray(trained.get("step", 0.0)))
        if step <= 0:
            amax = float(np.asarray(trained.get("amax", 0.0)))
            if amax <= 0:
                lo, hi = DEFAULT_RANGES[default_key]
                amax = max(abs(lo), abs(hi)) if signed else max(hi, 0.0)
            step = max(amax, 1e-8) / qp
        return ActQuantParams(point, step, signed, self.bits_a)

    def at(self, point: str, x: str, default_key: Any = None) -> str:
        """Returns `x` quantized at `point` (unchanged where the layer has no such point).

        QDQ layers get QuantizeLinear -> DequantizeLinear; layers that run float kernels
        (activation-only quantization) the same arithmetic in float ops, since onnxruntime
        would otherwise quantize their float weights itself (its WeightBiasQuantization pass
        turns DequantizeLinear -> Conv with float weights into an int8 conv).
        """
        quant = self.quant(point, default_key)
        if quant is None:
            return x
        return self.g.qdq(x, quant) if self.int8 else self.g.fake_quant(x, quant)


def _kernel_oihw(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _conv(lw: LayerEmitter, x: str, w: np.ndarray | QuantizedKernel, mult: np.ndarray | None,
          bias: np.ndarray | None, *, stride: int, group: int, in_hw: tuple[int, int],
          hint: str) -> str:
    """Adds one Conv with BatchNorm multiplier `mult` folded into its weights.

    A quantized kernel keeps its integer levels: the fold goes into the per-channel scale. In
    QDQ layers the levels are an int8 initializer behind a DequantizeLinear (`x` must then be a
    dequantized tensor, whose scale sets the int32 bias scale).
    """
    g = lw.g
    k = (w.q if isinstance(w, QuantizedKernel) else w).shape[0]
    attrs = dict(strides=[stride, stride], pads=_same_pads(in_hw, k, stride), group=group,
                 kernel_shape=[k, k])
    cout = (w.q if isinstance(w, QuantizedKernel) else w).shape[-1]
    mult = np.ones(cout, np.float32) if mult is None else mult
    if not isinstance(w, QuantizedKernel):
        inputs = [x, g.const(_kernel_oihw(w * mult).astype(np.float32), hint + "_w")]
        if bias is not None:
            inputs.append(g.const(bias.astype(np.float32), hint + "_b"))
        return g.node("Conv", inputs, hint, **attrs)
    scale = (w.scale * mult).astype(np.float32)
    sign = np.where(scale < 0, -1.0, 1.0).astype(np.float32)
    q, scale = w.q * sign, np.abs(scale)
    if not lw.int8_weights:
        inputs = [x, g.const(_kernel_oihw(q * scale).astype(np.float32), hint + "_w")]
        if bias is not None:
            inputs.append(g.const(bias.astype(np.float32), hint + "_b"))
        return g.node("Conv", inputs, hint, **attrs)
    scale = np.maximum(scale, 1e-12).astype(np.float32)
    w_dq = g.node("DequantizeLinear", [g.const(_kernel_oihw(q).astype(np.int8), hint + "_wq"),
                                       g.const(scale, hint + "_ws"),
                                       g.const(np.zeros(cout, np.int8), hint + "_wz")],
                  hint + "_wdq", axis=0)
    inputs = [x, w_dq]
    if bias is not None and not lw.int8:
        inputs.append(g.const(bias.astype(np.float32), hint + "_b"))
    elif bias is not None:
        b_scale = (g.scale_of(x) * scale).astype(np.float32)
        b_q = np.round(bias / b_scale).astype(np.int32)
        inputs.append(g.node("DequantizeLinear", [g.const(b_q, hint + "_bq"),
                                                  g.const(b_scale, hint + "_bs"),
                                                  g.const(np.zeros(cout, np.int32), hint + "_bz")],
                             hint + "_bdq", axis=0))
    return g.node("Conv", inputs, hint, **attrs)


def _emit_conv(lw: LayerEmitter, x: str, op: Conv) -> str:
    """Emits the conv `op` (its BatchNorm folded in), factorized when it has a rank: u, the
    factor point, v."""
    mult, bias = lw.folded_bn(op.bn, op.cout) if op.bn else (None, None)
    if op.bias:
        bias = lw.array(op.name, "bias", (op.cout,), "small")
    in_hw, shapes = op.in_shape[:2], op.kernel_shapes()
    if op.rank is not None:
        u = lw.kernel(op.name, "kernel_u", shapes["kernel_u"])
        v = lw.kernel(op.name, "kernel_v", shapes["kernel_v"])
        mid = _conv(lw, x, u, None, None, stride=op.stride, group=1, in_hw=in_hw,
                    hint=op.name + "_u")
        if op.mid is not None:
            mid = lw.at(op.mid.point, mid, op.mid.range_key)
        return _conv(lw, mid, v, mult, bias, stride=1, group=1, in_hw=op.out_shape[:2],
                     hint=op.name)
    w = lw.kernel(op.name, "kernel", shapes["kernel"])
    return _conv(lw, x, w, mult, bias, stride=op.stride, group=op.groups, in_hw=in_hw,
                 hint=op.name)


def _shuffle(g: GraphBuilder, x: str, channels: int, groups: int, hw: tuple[int, int]) -> str:
    """Channel shuffle (ShuffleNet): [N, g, C/g, H, W] -> swap the group axes -> [N, C, H, W]."""
    split = g.const(np.array([0, groups, channels // groups, hw[0], hw[1]], np.int64), "shape")
    merged = g.const(np.array([0, channels, hw[0], hw[1]], np.int64), "shape")
    y = g.node("Reshape", [x, split])
    y = g.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [y, merged], "shuffled")


def _emit_dense(lw: LayerEmitter, x: str, op: Dense) -> str:
    """Flatten -> Gemm (float logits; a quantized classifier as the float values of its grid:
    onnxruntime turns DequantizeLinear -> Gemm into MatMulNBits, which quantizes its input on
    the fly, not what was trained)."""
    g = lw.g
    flat = g.node("Flatten", [x], "flat", axis=1)
    w = lw.kernel(op.name, "kernel", (op.cin, op.cout))
    b = lw.array(op.name, "bias", (op.cout,), "small")
    if isinstance(w, QuantizedKernel):
        w = (w.q * w.scale).astype(np.float32)
    return g.node("Gemm", [flat, g.const(w, "fc_w"), g.const(b, "fc_b")], "logits")


def _emit_op(lw: LayerEmitter, op: Op, env: Mapping[str, str]) -> str:
    """Emits one program op reading its inputs from `env`; returns its output tensor."""
    g, x = lw.g, env[op.x]
    if isinstance(op, Quantize):
        return lw.at(op.point, x, op.range_key)
    if isinstance(op, Conv):
        return _emit_conv(lw, x, op)
    if isinstance(op, Act):
        return g.node("Sigmoid", [x]) if op.fn == "sigmoid" else _act(g, x, op.fn)
    if isinstance(op, Shuffle):
        return _shuffle(g, x, op.shape[-1], op.groups, op.shape[:2])
    if isinstance(op, Pool):
        return g.node("GlobalAveragePool", [x], op.name)
    if isinstance(op, (Mul, Add)):
        return g.node(type(op).__name__, [x, env[op.y]], op.name)
    if isinstance(op, Dropout):
        return x
    if isinstance(op, Dense):
        return _emit_dense(lw, x, op)
    raise ValueError(f"cannot export op {op!r}")


def emit_layer(g: GraphBuilder, x: str, spec: BlockSpec, int8: bool,
               weights: LayerWeights | None = None, name: str = "", int8_weights: bool = False
               ) -> str:
    """Appends one layer to the graph: the ops of its program (:func:`nas.blocks.program.program`
    at the activation bit-width the graph quantizes at), one after the other.

    Args:
        g: the graph being built.
        x: the layer's input tensor (float, NCHW).
        spec: the layer.
        int8: whether to write it in QDQ format (int8 kernels).
        weights: the layer's weights (see the module docstring); random where absent.
        name: the layer's name (recorded with its activation points in ``g.points``).
        int8_weights: store quantized weights as int8 where the layer runs float kernels.

    Returns:
        The name of the layer's (float) output tensor.
    """
    g.layer = name
    lw = LayerEmitter(g, spec, int8, weights, int8_weights)
    ops = program(dataclasses.replace(spec, bits_a=lw.bits_a))
    if not ops:  # skip: an Identity, so that the layer has an output tensor of its own
        return g.node("Identity", [x], "skip")
    env = {INPUT: x}
    for op in ops:
        env[op.out] = _emit_op(lw, op, env)
    return env[output_of(ops)]


def _model(g: GraphBuilder, inp: str, out: str, in_shape: Sequence[int], out_shape: Sequence[int],
           name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info(inp, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nas")
    model.ir_version = 8
    return model


def _rename_output(g: GraphBuilder, y: str) -> str:
    return g.node("Identity", [y], "output") if y == "input" else y


def block_to_onnx(spec: BlockSpec, int8: bool, batch: int = 1, weights: LayerWeights | None = None,
                  seed: int = 0) -> onnx.ModelProto:
    """Returns a one-layer ONNX model (input 'input', NCHW float32) for timing or export.

    A quantized layer's output is quantized as the next layer of a quantized network would
    quantize its input (int8, default range), so its last conv runs as an int8 kernel as it
    does inside such a network.

    Args:
        spec: the layer.
        int8: whether the layer runs as int8 (QDQ) kernels.
        batch: batch size of the input.
        weights: the layer's weights (see the module docstring); random where absent.
        seed: seed of random weights.
    """
    g = GraphBuilder(seed)
    y = emit_layer(g, "input", spec, int8, weights)
    if int8 and spec.op not in ("head", "skip"):
        _, qp = act_grid(INT8_BITS, True)
        y = g.qdq(y, ActQuantParams("next_input", DEFAULT_RANGES[None][1] / qp, True, INT8_BITS))
    y = _rename_output(g, y)
    out_shape = [batch, spec.cout] if spec.op == "head" else [batch, spec.cout, *spec.out_hw]
    return _model(g, "input", y, [batch, spec.cin, *spec.in_hw], out_shape, spec.key())


def network_to_onnx(specs: Sequence[BlockSpec], int8: Sequence[bool] | None = None,
                    weights: Mapping[str, LayerWeights] | None = None,
                    names: Sequence[str] | None = None, batch: int | str = 1, layout: str = "NCHW",
                    seed: int = 0, builder: GraphBuilder | None = None,
                    int8_weights: Sequence[bool] | None = None) -> onnx.ModelProto:
    """Returns the ONNX model of a whole network (stem, blocks, head).

    Args:
        specs: the layers, as ``Space.block_specs(arch)`` returns them.
        int8: per layer, whether it runs as int8 (QDQ); default from each spec's bit-widths
            (:func:`nas.latency.precision.runs_int8`).
        weights: ``{layer name: layer weights}`` (see the module docstring); random where absent.
        names: layer names used to look up `weights` (default 'stem', 'b1', ..., 'head'; pass
            the Space's slot prefixes to match a Flax model's submodule names).
        batch: batch size of the input (an int, or a name for a dynamic batch).
        layout: 'NCHW' (input [N, C, H, W]) or 'NHWC' (a Transpose is added in front).
        seed: seed of random weights.
        builder: the GraphBuilder to emit into (its ``points`` then list every activation
            point); default a new one.
        int8_weights: per layer, store quantized weights as int8 + DequantizeLinear even where
            the layer runs float kernels (default: no).

    Returns:
        An ``onnx.ModelProto`` with input 'input' and output logits [batch, classes].
    """
    from nas.latency.precision import runs_int8

    int8 = [runs_int8(s) for s in specs] if int8 is None else list(int8)
    names = list(names) if names is not None else \
        ["stem"] + [f"b{i}" for i in range(1, len(specs) - 1)] + ["head"]
    if not (len(int8) == len(names) == len(specs)):
        raise ValueError("specs, int8 and names must have the same length")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    g = builder or GraphBuilder(seed)
    first = specs[0]
    x = "input"
    in_shape = [batch, first.cin, *first.in_hw]
    if layout == "NHWC":
        in_shape = [batch, *first.in_hw, first.cin]
        x = g.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    stored = list(int8_weights) if int8_weights is not None else [False] * len(specs)
    for spec, q, name, w8 in zip(specs, int8, names, stored):
        x = emit_layer(g, x, spec, q, (weights or {}).get(name), name, w8)
    x = _rename_output(g, x)
    return _model(g, "input", x, in_shape, [batch, specs[-1].cout], "network")
