"""TFLite (LiteRT) models of BlockSpecs, written directly as TFLite flatbuffers from each layer's
op program (:func:`nas.blocks.program.program`), in NHWC: no TensorFlow, no converter. The
schema and the interpreter come from ``ai-edge-litert``.

Each program op becomes TFLite builtins: Conv -> CONV_2D (BatchNorm folded into the kernel and
bias; grouped 1x1 convs as SPLIT -> one CONV_2D per group -> CONCATENATION; factorized ones as
two CONV_2D) or DEPTHWISE_CONV_2D; Act -> RELU / RELU6 / HARD_SWISH / LOGISTIC (swish: x *
LOGISTIC(x)); Shuffle -> RESHAPE -> TRANSPOSE -> RESHAPE; Pool -> MEAN; Mul / Add -> MUL / ADD;
Dense -> FULLY_CONNECTED; Dropout -> nothing. Weights are those of
:class:`nas.latency.onnx_blocks.LayerEmitter` (given Flax weights, or seeded random): quantized
kernels as the float values of their trained grid, so the model computes what the Flax model
computes at inference. Activation points (``bits_a`` < 32) are written as the same arithmetic in
float ops (DIV, MAXIMUM, MINIMUM, ROUND, MUL): the graph runs float kernels throughout (the
latency tables of this format therefore time every layer as float, precision rule ``float``).

Example:
    >>> data = network_to_tflite(space.block_specs(arch))
    >>> interpreter = Interpreter(model_content=data)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from nas.blocks.act_points import runs_int8
from nas.blocks.program import (INPUT, Act, Add, Conv, Dense, Dropout, Mul, Op, Pool, Quantize,
                                Shuffle, output_of, program)
from nas.latency.onnx_blocks import LayerEmitter, QuantizedKernel
from nas.spec import BlockSpec

_OPS = tfl.BuiltinOperator
_OPTIONS = tfl.BuiltinOptions
_ACTS = {"relu": _OPS.RELU, "relu6": _OPS.RELU6, "hswish": _OPS.HARD_SWISH,
         "sigmoid": _OPS.LOGISTIC}


class TFLiteGraph:
    """Tensors, constant buffers and operators of one TFLite subgraph being built.

    Args:
        seed: seed of random weights (:class:`LayerEmitter` reads ``rng``).
    """

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Any] = []
        self.shapes: list[tuple[int, ...]] = []
        self.buffers: list[Any] = [tfl.BufferT()]  # buffer 0: the empty buffer
        self.operators: list[Any] = []
        self.codes: dict[int, int] = {}

    def tensor(self, shape: Sequence[int], name: str, data: np.ndarray | None = None) -> int:
        """Adds a tensor (a constant when `data` is given); returns its index."""
        t = tfl.TensorT()
        t.shape = np.asarray(shape, np.int32)
        t.type = tfl.TensorType.INT32 if data is not None and data.dtype == np.int32 \
            else tfl.TensorType.FLOAT32
        t.name = f"{name}_{len(self.tensors)}"
        t.buffer = 0
        if data is not None:
            buf = tfl.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        self.shapes.append(tuple(int(s) for s in shape))
        return len(self.tensors) - 1

    def const(self, array: np.ndarray, name: str) -> int:
        """Adds a float32 (or int32) constant."""
        array = np.asarray(array)
        array = array.astype(np.int32 if array.dtype.kind in "iu" else np.float32)
        return self.tensor(array.shape, name, array)

    def op(self, code: int, inputs: Sequence[int], out_shape: Sequence[int], name: str,
           options_type: int = 0, options: Any = None, outputs: int = 1) -> int | list[int]:
        """Adds an operator; returns its output tensor (a list when `outputs` > 1)."""
        if code not in self.codes:
            self.codes[code] = len(self.codes)
        outs = [self.tensor(out_shape, name) for _ in range(outputs)]
        o = tfl.OperatorT()
        o.opcodeIndex = self.codes[code]
        o.inputs = np.asarray(inputs, np.int32)
        o.outputs = np.asarray(outs, np.int32)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)
        return outs[0] if outputs == 1 else outs

    def serialize(self, inputs: Sequence[int], outputs: Sequence[int]) -> bytes:
        """Returns the TFLite flatbuffer of the graph."""
        sub = tfl.SubGraphT()
        sub.tensors, sub.operators = self.tensors, self.operators
        sub.inputs, sub.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        sub.name = "main"
        model = tfl.ModelT()
        model.version = 3
        model.description = "nas"
        model.subgraphs, model.buffers = [sub], self.buffers
        model.operatorCodes = []
        for code in sorted(self.codes, key=self.codes.get):
            c = tfl.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            model.operatorCodes.append(c)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _conv2d(g: TFLiteGraph, x: int, w_hwio: np.ndarray, bias: np.ndarray, stride: int,
            name: str) -> int:
    n, h, w, _ = g.shapes[x]
    opts = tfl.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = tfl.Padding.SAME, stride, stride
    out = (n, -(-h // stride), -(-w // stride), w_hwio.shape[-1])
    return g.op(_OPS.CONV_2D, [x, g.const(w_hwio.transpose(3, 0, 1, 2), name + "_w"),
                               g.const(bias, name + "_b")], out, name, _OPTIONS.Conv2DOptions, opts)


def _kernel_values(w: np.ndarray | QuantizedKernel, mult: np.ndarray | None) -> np.ndarray:
    """The float kernel (HWIO) with a BatchNorm multiplier folded into its output channels."""
    values = w.q * w.scale if isinstance(w, QuantizedKernel) else w
    return (values * (1.0 if mult is None else mult)).astype(np.float32)


def _on_grid(lw: LayerEmitter, op: Conv, kernel: np.ndarray | QuantizedKernel,
             mult: np.ndarray | None, bias: np.ndarray) -> np.ndarray:
    """The bias an int8 layer's kernel adds: rounded to its int32 grid ``s_x * |s_w * m|``, as
    the Flax blocks do at inference (:func:`nas.blocks.quant.deployed_bias`)."""
    if not runs_int8(lw.spec) or not isinstance(kernel, QuantizedKernel) or op.input_point is None:
        return bias
    quant = lw.quant(op.input_point, None)
    if quant is None:
        return bias
    unit = quant.step * np.abs(kernel.scale * (1.0 if mult is None else mult))
    return np.where(unit > 0, np.round(bias / np.where(unit > 0, unit, 1.0)) * unit,
                    bias).astype(np.float32)


def _emit_conv(lw: LayerEmitter, g: TFLiteGraph, x: int, op: Conv) -> int:
    mult, bias = lw.folded_bn(op.bn, op.cout) if op.bn else (None, None)
    if op.bias:
        bias = lw.array(op.name, "bias", (op.cout,), "small")
    bias = np.zeros(op.cout, np.float32) if bias is None else bias
    shapes = op.kernel_shapes()
    if op.rank is not None:
        u = _kernel_values(lw.kernel(op.name, "kernel_u", shapes["kernel_u"]), None)
        y = _conv2d(g, x, u, np.zeros(u.shape[-1], np.float32), op.stride, op.name + "_u")
        if op.mid is not None:
            y = _fake_quant(lw, g, y, op.mid)
        v_kernel = lw.kernel(op.name, "kernel_v", shapes["kernel_v"])
        return _conv2d(g, y, _kernel_values(v_kernel, mult),
                       _on_grid(lw, op, v_kernel, mult, bias), 1, op.name)
    kernel = lw.kernel(op.name, "kernel", shapes["kernel"])
    bias = _on_grid(lw, op, kernel, mult, bias)
    w = _kernel_values(kernel, mult)
    if op.kind == "depthwise":
        n, h, wd, c = g.shapes[x]
        opts = tfl.DepthwiseConv2DOptionsT()
        opts.padding, opts.strideH, opts.strideW = tfl.Padding.SAME, op.stride, op.stride
        opts.depthMultiplier = 1
        out = (n, -(-h // op.stride), -(-wd // op.stride), c)
        return g.op(_OPS.DEPTHWISE_CONV_2D, [x, g.const(w.transpose(2, 0, 1, 3), op.name + "_w"),
                                             g.const(bias, op.name + "_b")], out, op.name,
                    _OPTIONS.DepthwiseConv2DOptions, opts)
    if op.groups == 1:
        return _conv2d(g, x, w, bias, op.stride, op.name)
    # grouped 1x1: SPLIT -> one conv per group -> CONCATENATION
    n, h, wd, c = g.shapes[x]
    split = tfl.SplitOptionsT()
    split.numSplits = op.groups
    parts = g.op(_OPS.SPLIT, [g.const(np.array(3, np.int32), "axis"), x],
                 (n, h, wd, c // op.groups), op.name + "_split", _OPTIONS.SplitOptions, split,
                 outputs=op.groups)
    per = op.cout // op.groups
    ys = [_conv2d(g, part, w[..., i * per:(i + 1) * per], bias[i * per:(i + 1) * per], op.stride,
                  f"{op.name}_g{i}") for i, part in enumerate(parts)]
    cat = tfl.ConcatenationOptionsT()
    cat.axis = 3
    return g.op(_OPS.CONCATENATION, ys, (*g.shapes[ys[0]][:3], op.cout), op.name,
                _OPTIONS.ConcatenationOptions, cat)


def _fake_quant(lw: LayerEmitter, g: TFLiteGraph, x: int, op: Quantize) -> int:
    """``step * round(clip(x / step, qn, qp))`` in float ops (the Flax quantizer at inference)."""
    quant = lw.quant(op.point, op.range_key)
    if quant is None:
        return x
    qn, qp = quant.grid
    shape = g.shapes[x]
    y = g.op(_OPS.DIV, [x, g.const(np.array(quant.step, np.float32), "step")], shape, "div",
             _OPTIONS.DivOptions, tfl.DivOptionsT())
    y = g.op(_OPS.MAXIMUM, [y, g.const(np.array(qn, np.float32), "qn")], shape, "max")
    y = g.op(_OPS.MINIMUM, [y, g.const(np.array(qp, np.float32), "qp")], shape, "min")
    y = g.op(_OPS.ROUND, [y], shape, "round")
    return g.op(_OPS.MUL, [y, g.const(np.array(quant.step, np.float32), "step")], shape,
                op.point, _OPTIONS.MulOptions, tfl.MulOptionsT())


def _emit_op(lw: LayerEmitter, g: TFLiteGraph, op: Op, env: Mapping[str, int]) -> int:
    x = env[op.x]
    shape = g.shapes[x]
    if isinstance(op, Quantize):
        return _fake_quant(lw, g, x, op)
    if isinstance(op, Conv):
        return _emit_conv(lw, g, x, op)
    if isinstance(op, Act):
        if op.fn == "swish":
            s = g.op(_OPS.LOGISTIC, [x], shape, "sigmoid")
            return g.op(_OPS.MUL, [x, s], shape, "swish", _OPTIONS.MulOptions, tfl.MulOptionsT())
        return g.op(_ACTS[op.fn], [x], shape, op.fn)
    if isinstance(op, Shuffle):
        n, h, w, c = shape
        split = g.op(_OPS.RESHAPE, [x, g.const(np.array([-1, h, w, op.groups, c // op.groups],
                                                        np.int32), "shape")],
                     (n, h, w, op.groups, c // op.groups), "split")
        swapped = g.op(_OPS.TRANSPOSE, [split, g.const(np.array([0, 1, 2, 4, 3], np.int32), "perm")],
                       (n, h, w, c // op.groups, op.groups), "swap")
        return g.op(_OPS.RESHAPE, [swapped, g.const(np.array([-1, h, w, c], np.int32), "shape")],
                    shape, "shuffled")
    if isinstance(op, Pool):
        keep = len(op.out_shape) == 3
        opts = tfl.ReducerOptionsT()
        opts.keepDims = keep
        out = (shape[0], 1, 1, shape[3]) if keep else (shape[0], shape[3])
        return g.op(_OPS.MEAN, [x, g.const(np.array([1, 2], np.int32), "axes")], out, op.name,
                    _OPTIONS.ReducerOptions, opts)
    if isinstance(op, Mul):
        return g.op(_OPS.MUL, [x, env[op.y]], shape, op.name, _OPTIONS.MulOptions, tfl.MulOptionsT())
    if isinstance(op, Add):
        return g.op(_OPS.ADD, [x, env[op.y]], shape, op.name, _OPTIONS.AddOptions, tfl.AddOptionsT())
    if isinstance(op, Dropout):
        return x
    if isinstance(op, Dense):
        w = lw.kernel(op.name, "kernel", (op.cin, op.cout))
        w = _kernel_values(w, None)
        b = lw.array(op.name, "bias", (op.cout,), "small")
        return g.op(_OPS.FULLY_CONNECTED, [x, g.const(w.T, "fc_w"), g.const(b, "fc_b")],
                    (shape[0], op.cout), "logits", _OPTIONS.FullyConnectedOptions,
                    tfl.FullyConnectedOptionsT())
    raise ValueError(f"cannot write op {op!r} to TFLite")


def emit_layer(g: TFLiteGraph, x: int, spec: BlockSpec, weights: Mapping[str, Any] | None = None
               ) -> int:
    """Appends one layer (its program's ops) to the graph; returns its output tensor.

    Args:
        g: the graph.
        x: the layer's input tensor (NHWC float).
        spec: the layer.
        weights: the layer's weights (``{role: {name: array}}``, Flax layouts), random where absent.
    """
    lw = LayerEmitter(g, spec, False, weights)
    ops = program(spec)
    env = {INPUT: x}
    for op in ops:
        env[op.out] = _emit_op(lw, g, op, env)
    return env[output_of(ops)] if ops else x


def _identity(g: TFLiteGraph, x: int) -> int:
    """A RESHAPE to the same shape: a model whose layer is a skip still has an operator."""
    shape = g.shapes[x]
    return g.op(_OPS.RESHAPE, [x, g.const(np.array([-1, *shape[1:]], np.int32), "shape")], shape,
                "identity")


def block_to_tflite(spec: BlockSpec, batch: int = 1, seed: int = 0) -> bytes:
    """Returns a one-layer TFLite model (input NHWC float32, random weights) for timing."""
    g = TFLiteGraph(seed)
    x = g.tensor((batch, *spec.in_hw, spec.cin), "input")
    y = emit_layer(g, x, spec)
    if y == x:
        y = _identity(g, x)
    return g.serialize([x], [y])


def network_to_tflite(specs: Sequence[BlockSpec], weights: Mapping[str, Any] | None = None,
                      names: Sequence[str] | None = None, batch: int = 1, seed: int = 0) -> bytes:
    """Returns the TFLite model of a whole network (input [batch, H, W, C], output logits).

    Args:
        specs: the layers, as ``Space.block_specs(arch)`` returns them.
        weights: ``{layer name: {role: {name: array}}}``
            (:func:`nas.latency.flax_weights.onnx_weights` of Flax variables); random where absent.
        names: the layer names `weights` is keyed by (default 'stem', 'b1', ..., 'head').
        batch: batch size.
        seed: seed of random weights.
    """
    names = list(names) if names is not None else \
        ["stem"] + [f"b{i}" for i in range(1, len(specs) - 1)] + ["head"]
    g = TFLiteGraph(seed)
    first = specs[0]
    x = inp = g.tensor((batch, *first.in_hw, first.cin), "input")
    for spec, name in zip(specs, names):
        x = emit_layer(g, x, spec, (weights or {}).get(name))
    return g.serialize([inp], [x])


def interpreter(model: bytes, threads: int = 1):
    """Returns an allocated LiteRT interpreter of a model (its default delegate: XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    return it


def run_tflite(model: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Runs a batch-1 TFLite model on images [N, H, W, C] one at a time; returns the outputs."""
    it = interpreter(model, threads)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    outputs = []
    for image in np.asarray(x, np.float32):
        it.set_tensor(inp, image[None])
        it.invoke()
        outputs.append(np.array(it.get_tensor(out)[0]))
    return np.stack(outputs)
