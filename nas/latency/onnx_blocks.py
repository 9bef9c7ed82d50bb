"""ONNX graphs of BlockSpecs, written with ``onnx.helper``: one block, or a whole network.

Each layer follows the block semantics of :mod:`nas.spec` (BatchNorm folded into the conv before
it, so convs get a bias), in NCHW layout:

- ``stem``: kxk Conv (stride) -> act.
- ``mbconv``: 1x1 expand Conv -> act [-> channel shuffle if groups > 1] -> kxk depthwise Conv
  (``group=C``) -> act [-> SE] -> 1x1 project Conv [-> Add input].
- ``dwsep``: kxk depthwise Conv -> act [-> SE] -> 1x1 pointwise Conv [-> Add input].
- ``skip``: Identity.  ``head``: [1x1 Conv -> act] -> GlobalAveragePool -> Flatten -> Gemm.
- SE: GlobalAveragePool -> Conv(bias) -> act -> Conv(bias) -> Sigmoid -> Mul.
- rank r: a 1x1 cin->cout conv becomes Conv(cin->r, no bias) -> Conv(r->cout).
- act: relu -> Relu, relu6 -> Clip(0, 6), hswish -> HardSwish, swish -> x * Sigmoid(x).

Quantized layers (``int8=True``, see :func:`nas.latency.precision.runs_int8`) are written in QDQ
format: every activation tensor a quantized conv reads or writes passes once through
QuantizeLinear -> DequantizeLinear (uint8, per tensor), weights are int8 initializers with a
per-output-channel DequantizeLinear, biases int32 with scale ``s_x * s_w``. onnxruntime fuses
these into int8 kernels (QLinearConv, QLinearAdd, ...); bits below 8 run as int8 kernels too.

Weights: random (seeded) unless ``weights`` gives them, as ``{layer: {role: {name: array}}}``
with Flax layouts (conv kernels HWIO, depthwise ``[k, k, 1, C]``, dense ``[in, out]``). Roles are
the "/"-joined submodule paths of :mod:`nas.blocks` inside a layer, so
:func:`nas.latency.flax_weights.onnx_weights` maps Flax variables onto them directly:

- stem ``conv`` + ``bn``; mbconv ``expand`` + ``expand_bn``, ``dw`` + ``dw_bn``, ``project`` +
  ``project_bn``, ``se/reduce``, ``se/expand``; dwsep ``dw`` + ``dw_bn``, ``project`` +
  ``project_bn``, SE; head ``conv`` + ``bn``, ``classifier``.
- convs hold ``kernel`` (or ``kernel_u`` and ``kernel_v`` when factorized) and, for SE convs and
  the classifier, ``bias``; BatchNorms hold ``scale``, ``bias``, ``mean``, ``var``
  (epsilon :data:`BN_EPSILON`, as :mod:`nas.blocks`).
- optional ``ranges``: ``{tensor_role: (low, high)}`` activation ranges of quantized tensors.

Example:
    >>> model = network_to_onnx(space.block_specs(arch))
    >>> onnx.save(model, "net.onnx")
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nas.spec import BlockSpec

OPSET = 17
BN_EPSILON = 1e-5
#: Default activation ranges of quantized tensors (used without trained ranges).
DEFAULT_RANGES = {"relu": (0.0, 8.0), "relu6": (0.0, 6.0), "hswish": (-0.375, 8.0),
                  "swish": (-0.3, 8.0), None: (-8.0, 8.0), "sigmoid": (0.0, 1.0)}

LayerWeights = Mapping[str, Any]


class GraphBuilder:
    """Collects nodes and initializers of one ONNX graph, quantizing tensors on request.

    Args:
        seed: seed of the random weights used where none are given.
    """

    def __init__(self, seed: int = 0):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._count = 0
        self._dq_of: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        """Returns a new unique tensor name."""
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        """Adds an initializer and returns its name."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
        """Adds a node with one output and returns the output's name."""
        out = self.fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def qdq(self, x: str, value_range: tuple[float, float]) -> str:
        """Returns `x` passed through QuantizeLinear -> DequantizeLinear (once per tensor).

        Args:
            x: a float tensor name.
            value_range: (low, high) the uint8 grid must cover (0 is always included).

        Returns:
            The name of the dequantized tensor (the same name on repeated calls).
        """
        if x in self._dq_of or x in self._dq_of.values():
            return self._dq_of.get(x, x)
        lo, hi = min(0.0, float(value_range[0])), max(0.0, float(value_range[1]))
        scale = max(hi - lo, 1e-6) / 255.0
        zero = int(np.clip(round(-lo / scale), 0, 255))
        s = self.const(np.array(scale, np.float32), "a_scale")
        z = self.const(np.array(zero, np.uint8), "a_zero")
        q = self.node("QuantizeLinear", [x, s, z], "q")
        dq = self.node("DequantizeLinear", [q, s, z], "dq")
        self._dq_of[x] = dq
        return dq

    def scale_of(self, dq: str) -> float:
        """Returns the scale of a tensor made by :meth:`qdq`."""
        for n in self.nodes:
            if n.output[0] == dq:
                return float(self._init(n.input[1]))
        raise KeyError(dq)

    def _init(self, name: str) -> np.ndarray:
        for t in self.initializers:
            if t.name == name:
                return numpy_helper.to_array(t)
        raise KeyError(name)


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


FUSABLE_ACTS = ("relu", "relu6")


def _conv_act(g: GraphBuilder, lw: "_Layer", y: str, act: str | None, int8: bool, role: str) -> str:
    """Applies `act` to a conv output; when int8 and onnxruntime cannot fuse `act` into the
    conv's QuantizeLinear (anything but relu/relu6), the conv output gets its own Q/DQ first,
    so the conv itself still runs as an int8 kernel."""
    if int8 and act not in FUSABLE_ACTS:
        y = g.qdq(y, lw.value_range(role + "_pre_act", None))
    return _act(g, y, act)


def _same_pads(in_hw: tuple[int, int], kernel: int, stride: int) -> list[int]:
    """ONNX pads [top, left, bottom, right] equal to lax.conv / Flax 'SAME' padding."""
    lows, highs = [], []
    for size in in_hw:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        lows.append(total // 2)
        highs.append(total - total // 2)
    return lows + highs


class _Layer:
    """Weights of one layer: given ones (Flax layout) or seeded random ones."""

    def __init__(self, g: GraphBuilder, given: LayerWeights | None):
        self.g = g
        self.given = given or {}

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

    def folded_bn(self, role: str, cout: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (per-channel multiplier, bias) of BatchNorm `role` folded into its conv."""
        bn = self.given.get(role, {})
        scale = self.array(role, "scale", (cout,), "ones")
        beta = self.array(role, "bias", (cout,), "small")
        mean = self.array(role, "mean", (cout,), "small")
        var = np.abs(self.array(role, "var", (cout,), "ones"))
        mult = scale / np.sqrt(var + float(bn.get("epsilon", BN_EPSILON)))
        return mult.astype(np.float32), (beta - mean * mult).astype(np.float32)

    def value_range(self, tensor_role: str, default_key: Any) -> tuple[float, float]:
        given = self.given.get("ranges", {}).get(tensor_role)
        return tuple(given) if given is not None else DEFAULT_RANGES[default_key]


def _conv(g: GraphBuilder, x: str, w_oihw: np.ndarray, bias: np.ndarray | None, *, stride: int,
          group: int, in_hw: tuple[int, int], int8: bool, hint: str) -> str:
    """Adds one Conv (QDQ-wrapped when int8; `x` must then already be a dequantized tensor)."""
    k = w_oihw.shape[-1]
    attrs = dict(strides=[stride, stride], pads=_same_pads(in_hw, k, stride), group=group,
                 kernel_shape=[k, k])
    if not int8:
        inputs = [x, g.const(w_oihw, hint + "_w")]
        if bias is not None:
            inputs.append(g.const(bias, hint + "_b"))
        return g.node("Conv", inputs, hint, **attrs)
    cout = w_oihw.shape[0]
    w_scale = np.maximum(np.abs(w_oihw).reshape(cout, -1).max(axis=1), 1e-8) / 127.0
    w_q = np.clip(np.round(w_oihw / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    w_dq = g.node("DequantizeLinear", [g.const(w_q, hint + "_wq"),
                                       g.const(w_scale.astype(np.float32), hint + "_ws"),
                                       g.const(np.zeros(cout, np.int8), hint + "_wz")],
                  hint + "_wdq", axis=0)
    inputs = [x, w_dq]
    if bias is not None:
        b_scale = (g.scale_of(x) * w_scale).astype(np.float32)
        b_q = np.round(bias / b_scale).astype(np.int32)
        inputs.append(g.node("DequantizeLinear", [g.const(b_q, hint + "_bq"),
                                                  g.const(b_scale, hint + "_bs"),
                                                  g.const(np.zeros(cout, np.int32), hint + "_bz")],
                             hint + "_bdq", axis=0))
    return g.node("Conv", inputs, hint, **attrs)


def _conv_role(g: GraphBuilder, lw: _Layer, x: str, role: str, *, cin: int, cout: int, kernel: int,
               stride: int, group: int, in_hw: tuple[int, int], int8: bool, bn: str | None,
               rank: int | None = None, bias_from_role: bool = False) -> str:
    """Emits the conv `role` (with BatchNorm role `bn` folded in), factorized when `rank`."""
    if rank is not None:
        u = lw.array(role, "kernel_u", (1, 1, cin, rank), "kernel")
        v = lw.array(role, "kernel_v", (1, 1, rank, cout), "kernel")
        mid = _conv(g, x, u.transpose(3, 2, 0, 1), None, stride=stride, group=1, in_hw=in_hw,
                    int8=int8, hint=role + "_u")
        if int8:
            mid = g.qdq(mid, lw.value_range(role + "_u", None))
        out_hw = (-(-in_hw[0] // stride), -(-in_hw[1] // stride))
        return _emit_bn_conv(g, lw, mid, role, v, out_hw, 1, 1, int8, bn)
    w = lw.array(role, "kernel", (kernel, kernel, cin // group, cout), "kernel")
    if bias_from_role:
        b = lw.array(role, "bias", (cout,), "small")
        return _conv(g, x, w.transpose(3, 2, 0, 1), b, stride=stride, group=group, in_hw=in_hw,
                     int8=int8, hint=role)
    return _emit_bn_conv(g, lw, x, role, w, in_hw, stride, group, int8, bn)


def _emit_bn_conv(g, lw, x, role, w_hwio, in_hw, stride, group, int8, bn) -> str:
    cout = w_hwio.shape[-1]
    w = w_hwio.transpose(3, 2, 0, 1)
    bias = None
    if bn:
        mult, bias = lw.folded_bn(bn, cout)
        w = (w * mult[:, None, None, None]).astype(np.float32)
    return _conv(g, x, w, bias, stride=stride, group=group, in_hw=in_hw, int8=int8, hint=role)


def _maybe_q(g: GraphBuilder, lw: _Layer, x: str, int8: bool, role: str, key: Any) -> str:
    return g.qdq(x, lw.value_range(role, key)) if int8 else x


def _shuffle(g: GraphBuilder, x: str, channels: int, groups: int, hw: tuple[int, int]) -> str:
    """Channel shuffle (ShuffleNet): [N, g, C/g, H, W] -> swap the group axes -> [N, C, H, W]."""
    split = g.const(np.array([0, groups, channels // groups, hw[0], hw[1]], np.int64), "shape")
    merged = g.const(np.array([0, channels, hw[0], hw[1]], np.int64), "shape")
    y = g.node("Reshape", [x, split])
    y = g.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [y, merged], "shuffled")


def _se(g: GraphBuilder, lw: _Layer, x: str, spec: BlockSpec, channels: int, int8: bool) -> str:
    se = spec.se_channels
    pooled = _maybe_q(g, lw, g.node("GlobalAveragePool", [x], "se_pool"), int8, "se_pool", None)
    h = _conv_role(g, lw, pooled, "se/reduce", cin=channels, cout=se, kernel=1, stride=1, group=1,
                   in_hw=(1, 1), int8=int8, bn=None, bias_from_role=True)
    h = _maybe_q(g, lw, _conv_act(g, lw, h, spec.act, int8, "se/reduce"), int8, "se_act", spec.act)
    h = _conv_role(g, lw, h, "se/expand", cin=se, cout=channels, kernel=1, stride=1, group=1,
                   in_hw=(1, 1), int8=int8, bn=None, bias_from_role=True)
    gate = _maybe_q(g, lw, g.node("Sigmoid", [_maybe_q(g, lw, h, int8, "se/expand_out", None)]),
                    int8, "se_gate", "sigmoid")
    return _maybe_q(g, lw, g.node("Mul", [x, gate], "se_out"), int8, "se_out", spec.act)


def emit_layer(g: GraphBuilder, x: str, spec: BlockSpec, int8: bool,
               weights: LayerWeights | None = None) -> str:
    """Appends one layer to the graph.

    Args:
        g: the graph being built.
        x: the layer's input tensor (float, NCHW).
        spec: the layer.
        int8: whether to write it in QDQ format (int8 kernels).
        weights: the layer's weights (see the module docstring); random where absent.

    Returns:
        The name of the layer's (float) output tensor.
    """
    lw = _Layer(g, weights)
    if spec.op == "skip":
        return g.node("Identity", [x], "skip")
    inp = _maybe_q(g, lw, x, int8, "input", None)
    if spec.op == "stem":
        y = _conv_role(g, lw, inp, "conv", cin=spec.cin, cout=spec.cout, kernel=spec.kernel,
                       stride=spec.stride, group=1, in_hw=spec.in_hw, int8=int8, bn="bn")
        return _maybe_q(g, lw, _conv_act(g, lw, y, spec.act, int8, "conv"), int8, "output", spec.act)
    if spec.op == "head":
        return _emit_head(g, lw, inp, spec, int8)
    if spec.op not in ("mbconv", "dwsep"):
        raise ValueError(f"cannot export op {spec.op!r}")
    hw, out_hw = spec.in_hw, spec.out_hw
    y, ch = inp, spec.cin
    if spec.op == "mbconv":
        ch = spec.mid_channels
        y = _conv_role(g, lw, y, "expand", cin=spec.cin, cout=ch, kernel=1, stride=1,
                       group=spec.groups if spec.rank is None else 1, in_hw=hw, int8=int8,
                       bn="expand_bn", rank=spec.rank_channels(spec.cin, ch))
        y = _conv_act(g, lw, y, spec.act, int8, "expand")
        if spec.groups > 1 and spec.rank is None:
            y = _shuffle(g, y, ch, spec.groups, hw)
        y = _maybe_q(g, lw, y, int8, "expand_out", spec.act)
    y = _conv_role(g, lw, y, "dw", cin=ch, cout=ch, kernel=spec.kernel, stride=spec.stride,
                   group=ch, in_hw=hw, int8=int8, bn="dw_bn")
    y = _maybe_q(g, lw, _conv_act(g, lw, y, spec.act, int8, "dw"), int8, "dw_out", spec.act)
    if spec.se_channels:
        y = _se(g, lw, y, spec, ch, int8)
    y = _conv_role(g, lw, y, "project", cin=ch, cout=spec.cout, kernel=1, stride=1,
                   group=spec.groups if spec.rank is None else 1, in_hw=out_hw, int8=int8,
                   bn="project_bn", rank=spec.rank_channels(ch, spec.cout))
    y = _maybe_q(g, lw, y, int8, "project_out", None)
    if spec.has_residual:
        y = _maybe_q(g, lw, g.node("Add", [y, inp], "residual"), int8, "output", None)
    return y


def _emit_head(g: GraphBuilder, lw: _Layer, x: str, spec: BlockSpec, int8: bool) -> str:
    ch = spec.cin
    if spec.hidden:
        x = _conv_role(g, lw, x, "conv", cin=spec.cin, cout=spec.hidden, kernel=1, stride=1,
                       group=1, in_hw=spec.in_hw, int8=int8, bn="bn")
        x = _maybe_q(g, lw, _conv_act(g, lw, x, spec.act, int8, "conv"), int8, "head_act", spec.act)
        ch = spec.hidden
    pooled = _maybe_q(g, lw, g.node("GlobalAveragePool", [x], "pool"), int8, "pool", None)
    flat = g.node("Flatten", [pooled], "flat", axis=1)
    w = lw.array("classifier", "kernel", (ch, spec.cout), "kernel")
    b = lw.array("classifier", "bias", (spec.cout,), "small")
    if not int8:
        return g.node("Gemm", [flat, g.const(w, "fc_w"), g.const(b, "fc_b")], "logits")
    # A 1x1 conv on the pooled map is the classifier in a form onnxruntime runs as QLinearConv.
    y = _conv(g, pooled, w.T[:, :, None, None].copy(), b, stride=1, group=1, in_hw=(1, 1),
              int8=True, hint="fc")
    return g.node("Flatten", [g.qdq(y, lw.value_range("logits", None))], "logits", axis=1)


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

    Args:
        spec: the layer.
        int8: whether the layer runs as int8 (QDQ) kernels.
        batch: batch size of the input.
        weights: the layer's weights (see the module docstring); random where absent.
        seed: seed of random weights.
    """
    g = GraphBuilder(seed)
    y = _rename_output(g, emit_layer(g, "input", spec, int8, weights))
    out_shape = [batch, spec.cout] if spec.op == "head" else [batch, spec.cout, *spec.out_hw]
    return _model(g, "input", y, [batch, spec.cin, *spec.in_hw], out_shape, spec.key())


def network_to_onnx(specs: Sequence[BlockSpec], int8: Sequence[bool] | None = None,
                    weights: Mapping[str, LayerWeights] | None = None,
                    names: Sequence[str] | None = None, batch: int = 1, layout: str = "NCHW",
                    seed: int = 0) -> onnx.ModelProto:
    """Returns the ONNX model of a whole network (stem, blocks, head).

    Args:
        specs: the layers, as ``Space.block_specs(arch)`` returns them.
        int8: per layer, whether it runs as int8 (QDQ); default from each spec's bit-widths
            (:func:`nas.latency.precision.runs_int8`).
        weights: ``{layer name: layer weights}`` (see the module docstring); random where absent.
        names: layer names used to look up `weights` (default 'stem', 'b1', ..., 'head'; pass
            the Space's slot prefixes to match a Flax model's submodule names).
        batch: batch size of the input.
        layout: 'NCHW' (input [N, C, H, W]) or 'NHWC' (a Transpose is added in front).
        seed: seed of random weights.

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
    g = GraphBuilder(seed)
    first = specs[0]
    x = "input"
    in_shape = [batch, first.cin, *first.in_hw]
    if layout == "NHWC":
        in_shape = [batch, *first.in_hw, first.cin]
        x = g.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    for spec, q, name in zip(specs, int8, names):
        x = emit_layer(g, x, spec, q, (weights or {}).get(name))
    x = _rename_output(g, x)
    return _model(g, "input", x, in_shape, [batch, specs[-1].cout], "network")
