"""Cost metrics of a network, computed from its BlockSpecs alone (no tracing, no compute).

Every layer is broken into its primitive ops (:class:`Op`: convolutions, the classifier), read
from the layer's op program (:func:`nas.blocks.program.program`, the one definition of each
block); the metrics are sums over those ops:

- ``params``: conv/dense weights, plus BatchNorm scale and bias (2 per channel), plus the biases
  of the SE convs and of the classifier (other convs have no bias: BatchNorm follows them).
- ``macs``: multiply-accumulates of every conv (depthwise and SE convs included) and of the
  classifier, at batch 1.
- ``bops``: bit operations, MACs x bits_w x bits_a of the layer the op belongs to.
- ``size_bytes``: model size with weights stored at bits_w and BatchNorm parameters and biases at
  32 bit (float); ``size_bytes_fp32`` stores everything at 32 bit.
- ``peak_activation_bytes``: the largest amount of activation memory live at one op (its input,
  its output, and the block input kept for a residual add), at batch 1 and bits_a.
- ``energy_mj``: an estimate from published per-operation energies, see :func:`mac_energy_pj`.

Example:
    >>> from nas.space import Space
    >>> space = Space.by_name("tiny")
    >>> arch_metrics(space, space.sample(0))["params"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from nas.blocks.program import Conv, Dense, program
from nas.spec import BlockSpec

# Energy per operation, 45 nm CMOS at 0.9 V, in picojoules. Source: M. Horowitz, "Computing's
# energy problem (and what we can do about it)", ISSCC 2014, as tabulated in Han et al.,
# "Learning both Weights and Connections for Efficient Neural Networks" (NeurIPS 2015, Table 1)
# and Sze et al., "Efficient Processing of Deep Neural Networks" (Proc. IEEE 2017, Fig. 4).
INT8_MULT_PJ = 0.2
INT8_ADD_PJ = 0.03
FP32_MULT_PJ = 3.7
FP32_ADD_PJ = 0.9
SRAM_32BIT_PJ = 5.0    # one 32-bit word from a small on-chip SRAM (cache)
DRAM_32BIT_PJ = 640.0  # one 32-bit word from off-chip DRAM

FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class Op:
    """One primitive op of a layer: a convolution or the dense classifier.

    Attributes:
        name: the op's role inside its layer ('expand', 'depthwise', 'se_reduce', ...).
        cin: input channels.
        cout: output channels.
        kernel: square kernel size (1 for 1x1 convs and the classifier).
        groups: channel groups (cin for a depthwise conv).
        in_hw: input height and width.
        out_hw: output height and width.
        bias: whether the op has a bias (SE convs and the classifier).
        batchnorm: whether a BatchNorm follows (2 parameters per output channel).
    """

    name: str
    cin: int
    cout: int
    kernel: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    bias: bool = False
    batchnorm: bool = False

    @property
    def weights(self) -> int:
        """Number of weights (kernel entries)."""
        return self.cout * (self.cin // self.groups) * self.kernel * self.kernel

    @property
    def extra_params(self) -> int:
        """Bias and BatchNorm parameters (kept at 32 bit)."""
        return (self.cout if self.bias else 0) + (2 * self.cout if self.batchnorm else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1."""
        return self.out_hw[0] * self.out_hw[1] * self.weights

    @property
    def in_elems(self) -> int:
        """Elements of the input tensor at batch 1."""
        return self.in_hw[0] * self.in_hw[1] * self.cin

    @property
    def out_elems(self) -> int:
        """Elements of the output tensor at batch 1."""
        return self.out_hw[0] * self.out_hw[1] * self.cout


def _conv_ops(conv: Conv) -> list[Op]:
    """Returns the op(s) of one program conv: one, or a factorized conv's two 1x1 factors
    (cin->r->cout, no BatchNorm between them)."""
    name = conv.name.replace("/", "_")
    hw, out = conv.in_shape[:2], conv.out_shape[:2]
    if conv.rank is None:
        return [Op(name, conv.cin, conv.cout, conv.kernel, conv.groups, hw, out, bias=conv.bias,
                   batchnorm=conv.bn is not None)]
    return [Op(f"{name}_u", conv.cin, conv.rank, 1, 1, hw, out),
            Op(f"{name}_v", conv.rank, conv.cout, 1, 1, out, out, bias=conv.bias,
               batchnorm=conv.bn is not None)]


def layer_ops(spec: BlockSpec) -> list[Op]:
    """Returns the primitive ops of one layer, in execution order: the convs and the dense
    classifier of its :func:`nas.blocks.program.program` (elementwise ops, pools and
    quantizers cost no parameters and are not counted).

    Args:
        spec: the layer (stem, mbconv, dwsep, skip, skip_proj or head).

    Returns:
        The list of :class:`Op` (empty for 'skip'), named after the Flax submodules ('conv',
        'expand' or 'expand_u' + 'expand_v', 'dw', 'se_reduce', 'se_expand', 'project',
        'classifier').
    """
    ops: list[Op] = []
    one = (1, 1)
    for op in program(spec):
        if isinstance(op, Conv):
            ops += _conv_ops(op)
        elif isinstance(op, Dense):
            ops.append(Op(op.name, op.cin, op.cout, 1, 1, one, one, bias=True))
    return ops


def mac_energy_pj(bits_w: int, bits_a: int) -> float:
    """Returns the energy of one multiply-accumulate in pJ (Horowitz, ISSCC 2014, 45 nm).

    A float operand (32 bit) makes it a 32-bit float multiply plus add (3.7 + 0.9 pJ). Otherwise
    it is an integer multiply of bits_w x bits_a bits plus an add of the product's width. Scaling
    rule for widths other than 8: a multiplier's energy grows with the product of its operand
    widths (~b^2, so 4x4 bit = 1/4 of 8x8 = 0.05 pJ, 2x2 bit = 0.0125 pJ); an adder's energy grows
    linearly with its width (0.03 pJ per 8 bits, so the 16-bit add after an 8x8 multiply costs
    0.06 pJ).

    Args:
        bits_w: weight bit-width.
        bits_a: activation bit-width.
    """
    if bits_w >= FLOAT_BITS or bits_a >= FLOAT_BITS:
        return FP32_MULT_PJ + FP32_ADD_PJ
    mult = INT8_MULT_PJ * (bits_w * bits_a) / 64.0
    add = INT8_ADD_PJ * (bits_w + bits_a) / 8.0
    return mult + add


def memory_energy_pj(weight_bits: int, activation_bits: int) -> float:
    """Returns the memory-access energy in pJ of running one layer once.

    Model: every weight (and bias / BatchNorm value) is read once from DRAM at 640 pJ per 32-bit
    word; every op's input and output activations are read / written once in on-chip SRAM at
    5 pJ per 32-bit word (Horowitz, ISSCC 2014). Narrow values pack into words (bits / 32).

    Args:
        weight_bits: bits of parameters the layer reads.
        activation_bits: bits of activations the layer reads and writes.
    """
    return weight_bits / 32.0 * DRAM_32BIT_PJ + activation_bits / 32.0 * SRAM_32BIT_PJ


def _peak_activation_bits(spec: BlockSpec, ops: Sequence[Op]) -> int:
    """Returns the largest activation bits live at one op of a layer (input + output + residual)."""
    block_in = spec.in_hw[0] * spec.in_hw[1] * spec.cin
    keep = block_in if spec.has_residual else 0
    peak = 0
    for i, op in enumerate(ops):
        live = op.in_elems + op.out_elems + (keep if i > 0 else 0)
        peak = max(peak, live)
    return peak * spec.bits_a


def layer_costs(spec: BlockSpec) -> dict[str, Any]:
    """Returns the cost metrics of one layer.

    Args:
        spec: the layer.

    Returns:
        A dict with key (the latency-table key), op, params, macs, bops, size_bits (weights at
        bits_w, biases and BatchNorm at 32 bit), peak_activation_bits, energy_pj.
    """
    ops = layer_ops(spec)
    weights = sum(o.weights for o in ops)
    extra = sum(o.extra_params for o in ops)
    macs = sum(o.macs for o in ops)
    size_bits = weights * spec.bits_w + extra * FLOAT_BITS
    act_bits = sum(o.in_elems + o.out_elems for o in ops) * spec.bits_a
    return {
        "key": spec.key(),
        "op": spec.op,
        "params": weights + extra,
        "macs": macs,
        "bops": macs * spec.bits_w * spec.bits_a,
        "size_bits": size_bits,
        "peak_activation_bits": _peak_activation_bits(spec, ops),
        "energy_pj": macs * mac_energy_pj(spec.bits_w, spec.bits_a)
        + memory_energy_pj(size_bits, act_bits),
    }


def network_costs(specs: Sequence[BlockSpec]) -> dict[str, Any]:
    """Returns the cost metrics of a whole network.

    Args:
        specs: its layers, e.g. ``Space.block_specs(arch)``.

    Returns:
        A dict with params, macs, bops, size_bytes (weights at their bits_w, BatchNorm and
        biases at 32 bit), size_bytes_fp32 (everything at 32 bit), peak_activation_bytes (batch 1,
        at bits_a), energy_mj, and layers (the per-layer :func:`layer_costs`).
    """
    layers = [layer_costs(s) for s in specs]
    params = sum(layer["params"] for layer in layers)
    return {
        "params": params,
        "macs": sum(layer["macs"] for layer in layers),
        "bops": sum(layer["bops"] for layer in layers),
        "size_bytes": math.ceil(sum(layer["size_bits"] for layer in layers) / 8),
        "size_bytes_fp32": params * FLOAT_BITS // 8,
        "peak_activation_bytes": math.ceil(max(layer["peak_activation_bits"] for layer in layers) / 8),
        "energy_mj": sum(layer["energy_pj"] for layer in layers) * 1e-9,
        "layers": layers,
    }


def arch_metrics(space: Any, arch: Mapping[str, Any]) -> dict[str, Any]:
    """Returns :func:`network_costs` of an Arch, with its space name and id.

    Args:
        space: the :class:`nas.space.Space`.
        arch: a valid Arch of `space`.

    Returns:
        The network costs plus 'space' and 'arch_id'.
    """
    out = {"space": space.name, "arch_id": space.arch_id(arch)}
    out.update(network_costs(space.block_specs(arch)))
    return out


def largest_arch(space: Any) -> dict[str, Any]:
    """Returns the space's largest Arch: every slot at its most expressive option.

    A slot's shapes (input, output, stride) do not depend on any decision, so the network with
    the most MACs is the one whose every slot holds its option with the most MACs. Ties are
    broken by params, then BOPs (32-bit weights and activations beat fewer bits), then model
    size; options equal on all four (e.g. another activation) keep the space's first choice. The
    result has the largest kernel, expansion, width and SE where they add MACs, full rank,
    ungrouped 1x1 convs, 32-bit weights and activations, and no skip.

    Args:
        space: the :class:`nas.space.Space`.

    Returns:
        A valid canonical Arch whose MACs (and, slot by slot, params) no Arch of `space` exceeds.
    """
    labels = set(space.labels())
    arch: dict[str, Any] = {}
    for slot in space.slots:
        def size_key(values: Mapping[str, Any]) -> tuple:
            c = layer_costs(slot.spec(values))
            return c["macs"], c["params"], c["bops"], c["size_bits"]

        best = max(space.slot_options(slot), key=size_key)  # first of equals: declaration order
        arch.update({slot.label(k): v for k, v in best.items() if slot.label(k) in labels})
    return space.validate(arch)
