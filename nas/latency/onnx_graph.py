"""The ONNX graph being built: nodes, initializers, and the quantization of activation points.

:class:`GraphBuilder` collects the nodes of one graph (``onnx.helper``) and writes an activation
point either as QuantizeLinear -> DequantizeLinear (:meth:`GraphBuilder.qdq`, layers that run
int8 kernels) or as the same arithmetic in float ops (:meth:`GraphBuilder.fake_quant`); it
records every point, which layer emitted each node, and each layer's output tensor.
:mod:`nas.latency.onnx_blocks` emits the layers into it.

Example:
    >>> g = GraphBuilder()
    >>> y = g.qdq("x", ActQuantParams("input", step=0.05, signed=True, bits=8))
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nas.blocks.quant import act_grid

INT8_BITS = 8
#: uint8 zero point of signed activation grids ([-128, 127] stored as [0, 255]).
SIGNED_ZERO_POINT = 128


@dataclasses.dataclass(frozen=True)
class ActQuantParams:
    """One activation point's quantizer: ``step * clip(round(x / step), qn, qp)``.

    Attributes:
        point: the point's name.
        step: the scale (> 0).
        signed: signed grid (uint8, zero point 128) or unsigned (uint8, zero point 0).
        bits: bit-width (<= 8); below 8 the graph clips to the b-bit grid first.
    """

    point: str
    step: float
    signed: bool
    bits: int

    @property
    def grid(self) -> tuple[int, int]:
        """The integer grid (qn, qp)."""
        return act_grid(self.bits, self.signed)


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
        self._scales: dict[str, float] = {}
        #: (layer name, point, quantized tensor) of every activation point, in graph order.
        self.points: list[tuple[str, str, str]] = []
        #: {(layer name, point): its quantizer}.
        self.point_quants: dict[tuple[str, str], ActQuantParams] = {}
        #: {node name: layer name} and {layer name: its last output tensor}.
        self.node_layer: dict[str, str] = {}
        self.layer_outputs: dict[str, str] = {}
        #: the layer being emitted (set by :func:`emit_layer`).
        self.layer = ""

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
        self.node_layer[out + "_node"] = self.layer
        if self.layer:
            self.layer_outputs[self.layer] = out
        return out

    def qdq(self, x: str, quant: ActQuantParams) -> str:
        """Returns `x` passed through [Clip ->] QuantizeLinear -> DequantizeLinear.

        Args:
            x: a float tensor name.
            quant: the point's quantizer (scale, signedness, bits).

        Returns:
            The name of the dequantized tensor.
        """
        qn, qp = quant.grid
        step = np.float32(quant.step)
        if quant.bits < INT8_BITS:
            lo = self.const(np.array(qn * step, np.float32), "grid_lo")
            hi = self.const(np.array(qp * step, np.float32), "grid_hi")
            x = self.node("Clip", [x, lo, hi], "grid_clip")
        s = self.const(np.array(step, np.float32), "a_scale")
        # uint8 storage everywhere (onnxruntime's fastest int8 form on x86): a signed grid
        # [-128, 127] is uint8 with zero point 128
        z = self.const(np.array(SIGNED_ZERO_POINT if quant.signed else 0, np.uint8), "a_zero")
        q = self.node("QuantizeLinear", [x, s, z], "q_" + quant.point)
        dq = self.node("DequantizeLinear", [q, s, z], "dq_" + quant.point)
        self._scales[dq] = float(step)
        self.points.append((self.layer, quant.point, x))
        self.point_quants[(self.layer, quant.point)] = quant
        return dq

    def fake_quant(self, x: str, quant: ActQuantParams) -> str:
        """Returns ``step * clip(round(x / step), qn, qp)`` of `x` in float ops (Div, Round,
        Clip, Mul): the quantizer's arithmetic without an integer tensor.

        Args:
            x: a float tensor name.
            quant: the point's quantizer.

        Returns:
            The name of the fake-quantized tensor.
        """
        qn, qp = quant.grid
        step = self.const(np.array(quant.step, np.float32), "fq_step")
        r = self.node("Round", [self.node("Div", [x, step], "fq_div")], "fq_round")
        lo = self.const(np.array(qn, np.float32), "fq_lo")
        hi = self.const(np.array(qp, np.float32), "fq_hi")
        out = self.node("Mul", [self.node("Clip", [r, lo, hi], "fq_clip"), step], "fq_" + quant.point)
        self.points.append((self.layer, quant.point, x))
        self.point_quants[(self.layer, quant.point)] = quant
        return out

    def scale_of(self, dq: str) -> float:
        """Returns the scale of a tensor made by :meth:`qdq`."""
        return self._scales[dq]
