"""A block is defined once: :func:`program` turns a BlockSpec into a small op program.

Every layer of a network (stem, mbconv, fused_mbconv, dwsep, skip, skip_proj, head) is written
here, and only here, as a tuple of primitive ops. Interpreters walk the ops without knowing which
block they belong to: the Flax blocks (:mod:`nas.blocks.layers`), the supernet paths
(:mod:`nas.supernet.path_program`), the cost metrics (:mod:`nas.metrics`), the parameter layout
(:func:`param_shapes`), the ONNX builder (:mod:`nas.latency.onnx_blocks`). A new block type is a
new branch of :func:`program` and an entry of :data:`nas.spec.BLOCK_OPS`.

The program is in SSA form: each op reads named tensors (``x``, and ``y`` for binary ops) and
writes one new tensor ``out``; the block's input is :data:`INPUT`, its output the ``out`` of
the last op (the input itself for an empty program: 'skip'). Shapes are per example, without
the batch: ``(H, W, C)``, or ``(C,)`` once pooled and flattened.

Ops:

- :class:`Quantize`: an activation-quantization point of :mod:`nas.blocks.act_points`
  (present only where the layer has that point), ActQuant ``q_<point>`` in the Flax blocks.
- :class:`Conv`: a convolution followed by its BatchNorm (``bn``) if any: ``kind`` 'full'
  (dense kxk), 'pointwise' (1x1, grouped, or factorized at ``rank`` into ``kernel_u`` ->
  ``mid`` point -> ``kernel_v``) or 'depthwise'. ``name`` is its Flax submodule path.
- :class:`Act` (relu / relu6 / hswish / swish / sigmoid), :class:`Shuffle` (channel shuffle),
  :class:`Pool` (global average), :class:`Mul` (SE gate), :class:`Add` (residual),
  :class:`Dropout`, :class:`Dense` (classifier with bias).

Parameter names are those of the Flax blocks (:mod:`nas.blocks.layers`), so the parameter
layout follows from the program (:func:`param_shapes`, :func:`batch_stats_shapes`).

Example:
    >>> ops = program(BlockSpec("dwsep", 16, 16, 1, (8, 8)))
    >>> [type(op).__name__ for op in ops]
    ['Conv', 'Act', 'Conv', 'Add']
"""

from __future__ import annotations

import dataclasses
from typing import Union

from nas.blocks.activations import NONNEGATIVE
from nas.spec import BlockSpec

#: Name of a block's input tensor in its program.
INPUT = "input"
FLOAT_BITS = 32
#: Activations an int8 conv applies by saturating its output: no pre-activation point.
SATURATING_ACTS = frozenset({"relu", "relu6"})
#: Ranges (``Quantize.range_key``) of tensors that cannot be negative: unsigned points.
UNSIGNED_RANGES = NONNEGATIVE | {"sigmoid"}

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Quantize:
    """Fake-quantizes a tensor at an activation point (per tensor, ``bits`` bits).

    Attributes:
        x: input tensor.
        out: output tensor.
        point: the point's name (see :mod:`nas.blocks.act_points`).
        signed: signed grid (else unsigned, after ReLU-like activations).
        bits: bit-width.
        module: the quantizer's Flax submodule path ('q_input', 'se/q_se_pool').
        range_key: the activation whose default range the ONNX builder assumes without trained
            statistics (a key of ``onnx_blocks.DEFAULT_RANGES``; None = symmetric).
        shape: the tensor's shape.
    """

    x: str
    out: str
    point: str
    signed: bool
    bits: int
    module: str
    range_key: str | None
    shape: Shape


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution ('SAME' padding, no bias unless `bias`), then BatchNorm `bn` if any.

    Attributes:
        x: input tensor.
        out: output tensor (after the BatchNorm).
        name: the conv's Flax submodule path ('conv', 'expand', 'dw', 'se/reduce', 'project').
        kind: 'full' (dense kxk), 'pointwise' (1x1, grouped or factorized) or 'depthwise'.
        cin: input channels.
        cout: output channels.
        kernel: kernel size k.
        stride: spatial stride.
        groups: channel groups (cin for depthwise).
        rank: inner channels of a factorized 1x1 conv (``kernel_u`` [1, 1, cin, r] then
            ``kernel_v`` [1, 1, r, cout]), or None.
        mid: the quantization point between the two factors of a factorized conv, or None (its
            ``x`` / ``out`` name the conv's inner tensor, which no other op reads).
        bias: whether the conv has a bias (SE convs).
        bn: the BatchNorm's Flax submodule name, or None.
        bits_w: weight bit-width (32 = float).
        input_point: the activation point that quantized the conv's input, or None (int8
            kernels add their bias on that point's grid).
        in_shape: (H, W, cin).
        out_shape: (H', W', cout).
    """

    x: str
    out: str
    name: str
    kind: str
    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    rank: int | None
    mid: Quantize | None
    bias: bool
    bn: str | None
    bits_w: int
    input_point: str | None
    in_shape: Shape
    out_shape: Shape

    def kernel_shapes(self) -> dict[str, Shape]:
        """Returns {kernel param name: HWIO shape} ('kernel', or 'kernel_u' and 'kernel_v')."""
        if self.rank is not None:
            return {"kernel_u": (1, 1, self.cin, self.rank),
                    "kernel_v": (1, 1, self.rank, self.cout)}
        return {"kernel": (self.kernel, self.kernel, self.cin // self.groups, self.cout)}


@dataclasses.dataclass(frozen=True)
class Act:
    """An elementwise activation.

    Attributes:
        x: input tensor.
        out: output tensor.
        fn: 'relu', 'relu6', 'hswish', 'swish' or 'sigmoid'.
        shape: the tensor's shape.
    """

    x: str
    out: str
    fn: str
    shape: Shape


@dataclasses.dataclass(frozen=True)
class Shuffle:
    """ShuffleNet channel shuffle over `groups` groups (after a grouped 1x1 conv).

    Attributes:
        x: input tensor.
        out: output tensor.
        groups: number of groups.
        shape: the tensor's shape (H, W, C).
    """

    x: str
    out: str
    groups: int
    shape: Shape


@dataclasses.dataclass(frozen=True)
class Pool:
    """Global average pool; out_shape (1, 1, C) keeps the spatial axes, (C,) flattens.

    Attributes:
        x: input tensor.
        out: output tensor.
        name: the op's name ('se_pool', 'pool').
        in_shape: (H, W, C).
        out_shape: (1, 1, C) or (C,).
    """

    x: str
    out: str
    name: str
    in_shape: Shape
    out_shape: Shape


@dataclasses.dataclass(frozen=True)
class Binary:
    """An elementwise op of two tensors (the fields of :class:`Mul` and :class:`Add`).

    Attributes:
        x: input tensor.
        y: second operand.
        out: output tensor.
        name: the op's name.
        shape: the output shape.
    """

    x: str
    y: str
    out: str
    name: str
    shape: Shape


@dataclasses.dataclass(frozen=True)
class Mul(Binary):
    """Elementwise product ``x * y`` (y broadcast: the SE gate)."""


@dataclasses.dataclass(frozen=True)
class Add(Binary):
    """Elementwise sum ``x + y`` (the residual connection)."""


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Dropout at `rate` in training (identity at inference).

    Attributes:
        x: input tensor.
        out: output tensor.
        rate: drop probability.
        shape: the tensor's shape.
    """

    x: str
    out: str
    rate: float
    shape: Shape


@dataclasses.dataclass(frozen=True)
class Dense:
    """Fully connected layer with bias (the classifier); float logits.

    Attributes:
        x: input tensor ((cin,)).
        out: output tensor ((cout,)).
        name: its Flax submodule name ('classifier').
        cin: inputs.
        cout: outputs.
        bits_w: weight bit-width (32 = float).
    """

    x: str
    out: str
    name: str
    cin: int
    cout: int
    bits_w: int


Op = Union[Quantize, Conv, Act, Shuffle, Pool, Mul, Add, Dropout, Dense]


class _Writer:
    """Appends ops to a program, naming each new tensor and tracking the current one.

    The writer also decides the activation points (see :mod:`nas.blocks.act_points`): every
    ``quant`` of a layer with ``bits_a < 32`` is a point, signed unless its range says the tensor
    cannot be negative; a pre-activation point only where the activation does not saturate.
    """

    def __init__(self, spec: BlockSpec):
        self.spec = spec
        self.quantized = spec.bits_a < FLOAT_BITS
        self.ops: list[Op] = []
        self.cur = INPUT
        self.shape: Shape = (*spec.in_hw, spec.cin)
        self.point: str | None = None  # the point that last quantized the current tensor

    def emit(self, op: Op) -> str:
        self.ops.append(op)
        self.cur = op.out
        return op.out

    def fresh(self, label: str) -> str:
        return f"{len(self.ops)}:{label}"

    def quant(self, point: str, range_key: str | None = None, prefix: str = "") -> None:
        """Quantizes the current tensor at `point` when the layer quantizes activations."""
        if self.quantized:
            self.emit(Quantize(self.cur, self.fresh(point), point,
                               range_key not in UNSIGNED_RANGES, self.spec.bits_a,
                               f"{prefix}q_{point}", range_key, self.shape))
            self.point = point

    def conv(self, name: str, kind: str, cout: int, kernel: int = 1, stride: int = 1,
             groups: int = 1, rank: int | None = None, bias: bool = False,
             bn: str | None = None) -> None:
        """A conv on the current tensor (its input point: the last quantized point)."""
        h, w, cin = self.shape
        out_shape = (-(-h // stride), -(-w // stride), cout)
        mid = None
        if rank is not None and self.quantized:
            label = f"{name}_u"
            mid = Quantize(self.fresh(label + "_in"), self.fresh(label), label, True,
                           self.spec.bits_a, f"q_{label}", None, (h, w, rank))
        self.emit(Conv(self.cur, self.fresh(name), name, kind, cin, cout, kernel, stride,
                       groups if rank is None else 1, rank, mid, bias, bn, self.spec.bits_w,
                       self.point if mid is None else mid.point, self.shape, out_shape))
        self.shape = out_shape
        self.point = None

    def act(self, fn: str, pre_act: str | None = None, prefix: str = "") -> None:
        """[The pre-activation point `pre_act` unless `fn` saturates, then] activation `fn`."""
        if pre_act is not None and fn not in SATURATING_ACTS:
            self.quant(pre_act, None, prefix)
        self.emit(Act(self.cur, self.fresh(fn), fn, self.shape))
        self.point = None


def _squeeze_excite(w: _Writer) -> None:
    spec, x = w.spec, w.cur
    act, channels, shape = spec.act, w.shape[-1], w.shape
    w.emit(Pool(x, w.fresh("se_pool"), "se_pool", shape, (1, 1, channels)))
    w.shape = (1, 1, channels)
    w.quant("se_pool", act, "se/")
    w.conv("se/reduce", "pointwise", spec.se_channels, bias=True)
    w.act(act, "se_reduce_pre_act", "se/")
    w.quant("se_act", act, "se/")
    w.conv("se/expand", "pointwise", channels, bias=True)
    w.quant("se_expand_out", None, "se/")
    w.act("sigmoid")
    w.quant("se_gate", "sigmoid", "se/")
    w.emit(Mul(x, w.cur, w.fresh("se_mul"), "se_mul", shape))
    w.shape = shape
    w.quant("se_out", act, "se/")


def _bottleneck(w: _Writer) -> None:
    """mbconv / dwsep: [expand ->] depthwise -> [SE ->] project [-> + input]; fused_mbconv:
    kxk expand (Fused-MBConv, EfficientNetV2) -> [SE ->] project [-> + input]."""
    spec = w.spec
    w.quant("input")
    block_in = w.cur
    if spec.op == "fused_mbconv":
        w.conv("expand", "full", spec.mid_channels, spec.kernel, spec.stride, bn="expand_bn")
        w.act(spec.act, "expand_pre_act")
        w.quant("expand_out", spec.act)
    elif spec.op == "mbconv":
        mid = spec.mid_channels
        rank = spec.rank_channels(spec.cin, mid)
        w.conv("expand", "pointwise", mid, groups=spec.groups, rank=rank, bn="expand_bn")
        w.act(spec.act, "expand_pre_act")
        if spec.groups > 1 and rank is None:
            w.emit(Shuffle(w.cur, w.fresh("shuffle"), spec.groups, w.shape))
        w.quant("expand_out", spec.act)
    channels = w.shape[-1]
    if spec.op != "fused_mbconv":
        w.conv("dw", "depthwise", channels, spec.kernel, spec.stride, groups=channels, bn="dw_bn")
        w.act(spec.act, "dw_pre_act")
        w.quant("dw_out", spec.act)
    if spec.se_channels:
        _squeeze_excite(w)
    w.conv("project", "pointwise", spec.cout, groups=spec.groups,
           rank=spec.rank_channels(channels, spec.cout), bn="project_bn")
    if spec.has_residual:
        w.quant("project_out")
        w.emit(Add(w.cur, block_in, w.fresh("residual"), "residual", w.shape))


def _head(w: _Writer) -> None:
    """[1x1 conv -> act] -> global pool -> [dropout] -> classifier."""
    spec = w.spec
    if spec.hidden:
        w.quant("input")
        w.conv("conv", "pointwise", spec.hidden, bn="bn")
        w.act(spec.act, "conv_pre_act")
        w.quant("head_act", spec.act)
    channels = w.shape[-1]
    w.emit(Pool(w.cur, w.fresh("pool"), "pool", w.shape, (channels,)))
    w.shape = (channels,)
    w.quant("pool", spec.act if spec.hidden else None)
    if spec.dropout > 0:
        w.emit(Dropout(w.cur, w.fresh("dropout"), spec.dropout, w.shape))
    w.emit(Dense(w.cur, w.fresh("classifier"), "classifier", channels, spec.cout, spec.bits_w))


def program(spec: BlockSpec) -> tuple[Op, ...]:
    """Returns the op program of one layer.

    Args:
        spec: the layer (op stem / mbconv / fused_mbconv / dwsep / skip / skip_proj / head).

    Returns:
        Its ops in execution order (empty for 'skip': the output is the input; 'skip_proj', a
        skip where the shape changes, is the stem's kxk conv -> BN -> act at kernel 1).

    Raises:
        ValueError: unknown op.
    """
    w = _Writer(spec)
    if spec.op == "skip":
        return ()
    if spec.op in ("stem", "skip_proj"):  # skip_proj: a skip that changes shape, kernel 1
        w.quant("input")
        w.conv("conv", "full", spec.cout, spec.kernel, spec.stride, bn="bn")
        w.act(spec.act, "conv_pre_act")
    elif spec.op in ("mbconv", "fused_mbconv", "dwsep"):
        _bottleneck(w)
    elif spec.op == "head":
        _head(w)
    else:
        raise ValueError(f"unknown block op {spec.op!r}")
    return tuple(w.ops)


def output_of(ops: tuple[Op, ...]) -> str:
    """Returns the name of a program's output tensor (:data:`INPUT` for an empty program)."""
    return ops[-1].out if ops else INPUT


def quantizers(ops: tuple[Op, ...]) -> list[Quantize]:
    """Returns every activation quantizer of a program, in graph order (factor points included)."""
    out: list[Quantize] = []
    for op in ops:
        if isinstance(op, Conv) and op.mid is not None:
            out.append(op.mid)
        if isinstance(op, Quantize):
            out.append(op)
    return out


def param_shapes(spec: BlockSpec) -> dict[str, Shape]:
    """Returns the shapes of a layer's Flax params, from its program.

    Args:
        spec: the layer.

    Returns:
        {"/"-joined param path: shape}, e.g. ``{"expand/kernel": (1, 1, 16, 96), "expand_bn/scale":
        (96,), "q_input/step": (), ...}``: kernels (and their learned steps ``<kernel>_step``
        [out channels] when ``bits_w < 32``), biases, BatchNorm scale and bias, activation
        quantizer steps.
    """
    out: dict[str, Shape] = {}
    ops = program(spec)
    for op in ops:
        if isinstance(op, Conv):
            for kname, shape in op.kernel_shapes().items():
                out[f"{op.name}/{kname}"] = shape
                if op.bits_w < FLOAT_BITS:
                    out[f"{op.name}/{kname}_step"] = (shape[-1],)
            if op.bias:
                out[f"{op.name}/bias"] = (op.cout,)
            if op.bn is not None:
                out[f"{op.bn}/scale"] = (op.cout,)
                out[f"{op.bn}/bias"] = (op.cout,)
        elif isinstance(op, Dense):
            out[f"{op.name}/kernel"] = (op.cin, op.cout)
            out[f"{op.name}/bias"] = (op.cout,)
            if op.bits_w < FLOAT_BITS:
                out[f"{op.name}/kernel_step"] = (op.cout,)
    for q in quantizers(ops):
        if q.bits < FLOAT_BITS:
            out[f"{q.module}/step"] = ()
    return out


def batch_stats_shapes(spec: BlockSpec) -> dict[str, Shape]:
    """Returns the shapes of a layer's Flax batch_stats (BatchNorm mean and var, quantizer
    running ranges ``amax``), from its program.

    Args:
        spec: the layer.

    Returns:
        {"/"-joined path: shape}.
    """
    out: dict[str, Shape] = {}
    ops = program(spec)
    for op in ops:
        if isinstance(op, Conv) and op.bn is not None:
            out[f"{op.bn}/mean"] = (op.cout,)
            out[f"{op.bn}/var"] = (op.cout,)
    for q in quantizers(ops):
        if q.bits < FLOAT_BITS:
            out[f"{q.module}/amax"] = ()
    return out
