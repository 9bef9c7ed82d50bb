"""Where a layer quantizes its activations: the ``Quantize`` ops of its program, read by the
Flax blocks and the ONNX builder (the program's writer, :mod:`nas.blocks.program`, places them).

A layer with ``bits_a < 32`` quantizes (per tensor, at ``bits_a`` bits) exactly the tensors an
integer runtime quantizes when it runs the layer with int8 kernels: every conv's input and
output, the SE path, the residual operands. The Flax blocks (:mod:`nas.blocks.layers`) put an
:class:`~nas.blocks.quant.ActQuant` named ``q_<point>`` on each of these tensors and the ONNX
builder (:mod:`nas.latency.onnx_blocks`) a QuantizeLinear -> DequantizeLinear pair with the
trained step of that quantizer, so the exported graph computes what was trained.

Points, in graph order (``[..]``: only when the layer has that part):

- stem, skip_proj (1x1 conv): ``input`` -> conv -> BN [-> ``conv_pre_act``] -> act.
- mbconv: ``input`` -> expand [rank: u -> ``expand_u`` -> v] -> BN [-> ``expand_pre_act``] -> act
  [-> shuffle] -> ``expand_out`` -> depthwise -> BN [-> ``dw_pre_act``] -> act -> ``dw_out``
  [-> SE] [-> project u -> ``project_u``] -> project -> BN [-> ``project_out`` -> + ``input``].
- fused_mbconv: ``input`` -> kxk expand -> BN [-> ``expand_pre_act``] -> act -> ``expand_out``
  [-> SE] [-> ``project_u``] -> project -> BN [-> ``project_out`` -> + ``input``].
- dwsep: ``input`` -> depthwise -> BN [-> ``dw_pre_act``] -> act -> ``dw_out`` [-> SE]
  [-> ``project_u``] -> project -> BN [-> ``project_out`` -> + ``input``].
- SE: global pool -> ``se_pool`` -> reduce conv [-> ``se_reduce_pre_act``] -> act -> ``se_act``
  -> expand conv -> ``se_expand_out`` -> sigmoid -> ``se_gate`` -> x * gate -> ``se_out``.
- head: [``input`` -> conv -> BN [-> ``conv_pre_act``] -> act -> ``head_act``] -> global pool ->
  ``pool`` -> classifier -> logits (float).

A layer's output is quantized by the layer that reads it (its ``input``), so each layer's
activations are at its own ``bits_a``. ``*_pre_act`` points exist only for activations that an
int8 kernel cannot apply by saturating its output (anything but relu / relu6). A point is
*unsigned* (grid ``[0, 2^b-1]``) where the tensor cannot be negative, else signed.

Example:
    >>> activation_points(spec)    # {'input': True, 'expand_out': False, ...}: point -> signed
"""

from __future__ import annotations

from nas.blocks.program import quantizers, program
from nas.spec import BlockSpec

INT8_BITS = 8


def runs_int8(spec: BlockSpec) -> bool:
    """Whether an integer runtime runs this layer with int8 kernels (both bit-widths <= 8)."""
    return spec.bits_w <= INT8_BITS and spec.bits_a <= INT8_BITS


def activation_points(spec: BlockSpec) -> dict[str, bool]:
    """Returns the quantized activation tensors of a layer, in graph order.

    Args:
        spec: the layer.

    Returns:
        {point name: signed} (empty for float activations and for skip layers): the quantizers
        of the layer's op program (:func:`nas.blocks.program.quantizers`).
    """
    return {q.point: q.signed for q in quantizers(program(spec))}
