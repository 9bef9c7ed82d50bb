"""The superkernel block of one slot: the largest MBConv / Fused-MBConv / DWSep of the slot, with
every smaller choice a masked (nested) part of it.

Params use the child layout of :mod:`nas.blocks.layers` (``expand``, ``expand_bn``, ``dw``,
``dw_bn``, ``se/reduce``, ``se/expand``, ``project``, ``project_bn``, input quantizers
``<conv>/input_quant``) at the largest shapes, plus one threshold vector ``t_<ladder>`` per
ladder; a factorized slot holds ``kernel_u`` [cin, R] and ``kernel_v`` [R, cout] with R the full
rank. The child of any choice is a slice of these (:mod:`nas.single_path.export`).

The forward pass computes what the chosen child computes: weights are masked before they are
quantized (per-output-channel scales then see only the kept part), activations are masked after
each act (per-tensor activation ranges see only kept channels), and whole alternatives (skip,
dwsep, SE, full rank) are chosen with the exact :func:`~nas.single_path.indicators.select`.
The convolutions are the project's own (:func:`nas.blocks.convs.pointwise`,
:func:`nas.blocks.depthwise.depthwise_conv`, :func:`nas.blocks.convs.full_conv`), so is the fake
quantizer. A Fused-MBConv's kxk ``expand`` conv takes the depthwise conv's place: its taps and
output channels carry the kernel and mid masks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.activations import NONNEGATIVE, activation
from nas.blocks.convs import conv_init, full_conv, pointwise
from nas.blocks.depthwise import depthwise_conv
from nas.blocks.layers import batch_norm
from nas.blocks.quant import FLOAT_BITS, ActQuant
from nas.blocks.slicing import factor_product
from nas.single_path.gates import (channel_mask, full_rank_gate, init_thresholds, kernel_mask,
                                   outer_log_rms, rank_row_mask, slot_gates)
from nas.single_path.indicators import select
from nas.single_path.nested_quant import nested_fake_quant_weight
from nas.single_path.plan import SlotPlan, space_plan
from nas.space import Space

_factor_v_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class SuperConv(nn.Module):
    """The parameters of one superkernel conv and its input quantizer (child names).

    Attributes:
        shapes: ((param name, shape), ...): 'kernel', 'kernel_u', 'kernel_v', 'bias'.
        bits_a: input-activation bit-width (32 = float, no quantizer).
        signed_input: whether the input can be negative.
    """

    shapes: tuple
    bits_a: int = FLOAT_BITS
    signed_input: bool = True

    def setup(self):
        inits = {"kernel": conv_init, "kernel_u": conv_init, "kernel_v": _factor_v_init,
                 "bias": nn.initializers.zeros}
        self.w = {name: self.param(name, inits[name], tuple(shape)) for name, shape in self.shapes}
        if self.bits_a < FLOAT_BITS:
            self.input_quant = ActQuant(bits=self.bits_a, signed=self.signed_input)

    def weights(self) -> dict[str, jax.Array]:
        """Returns the raw superkernel params {name: array}."""
        return dict(self.w)

    def quant_input(self, x: jax.Array, train: bool) -> jax.Array:
        """Fake-quantizes the conv's input (identity at 32 bits)."""
        if self.bits_a >= FLOAT_BITS:
            return x
        return self.input_quant(x, train)


class SuperSE(nn.Module):
    """Holds the two SE convs ('reduce', 'expand') of a superkernel at the largest width."""

    channels: int
    mid: int
    bits_a: int = FLOAT_BITS
    signed_input: bool = True
    act: str = "relu"

    def setup(self):
        self.reduce = SuperConv((("kernel", (1, 1, self.mid, self.channels)),
                                 ("bias", (self.channels,))), self.bits_a, self.signed_input)
        self.expand = SuperConv((("kernel", (1, 1, self.channels, self.mid)), ("bias", (self.mid,))),
                                self.bits_a, self.act not in NONNEGATIVE)

    def weights(self) -> dict[str, Any]:
        """Returns {'reduce': {...}, 'expand': {...}}."""
        return {"reduce": self.reduce.weights(), "expand": self.expand.weights()}

    def __call__(self, y, train, mid_mask, quant):
        """Applies SE to `y` [N, H, W, M] with the reduce conv's input rows masked."""
        w = self.weights()
        s = jnp.mean(y, axis=(1, 2), keepdims=True)
        s = pointwise(self.reduce.quant_input(s, train),
                      quant(w["reduce"]["kernel"] * mid_mask[:, None])) + w["reduce"]["bias"]
        s = activation(self.act)(s)
        s = pointwise(self.expand.quant_input(s, train), quant(w["expand"]["kernel"])) \
            + w["expand"]["bias"]
        return y * jax.nn.sigmoid(s)


def _pointwise_shapes(cin: int, cout: int, factorized: bool) -> tuple:
    if not factorized:
        return (("kernel", (1, 1, cin, cout)),)
    r = min(cin, cout)
    return (("kernel_u", (1, 1, cin, r)), ("kernel_v", (1, 1, r, cout)))


class SuperBlock(nn.Module):
    """The single-path superkernel of slot `index` of `space` (see the module docstring).

    Attributes:
        space: the Space.
        index: the slot's index in ``space.slots``.
        depthwise_impl: 'auto' | 'shift' | 'xla'.
    """

    space: Space
    index: int
    depthwise_impl: str = "auto"

    @property
    def plan(self) -> SlotPlan:
        """The slot's single-path plan."""
        return space_plan(self.space)[self.index]

    def _pointwise(self, conv, x, train, gates, name, in_mask, quant):
        """One superkernel 1x1 conv: full, factorized, or both selected by the full-rank gate."""
        plan, w = self.plan, conv.weights()
        x = conv.quant_input(x, train)
        rows = (lambda k: k * in_mask[:, None]) if in_mask is not None else (lambda k: k)
        if "kernel" in w:
            return pointwise(x, quant(rows(w["kernel"])))
        u = rows(w["kernel_u"])
        v = w["kernel_v"] * rank_row_mask(plan, gates, name, w["kernel_v"].shape[-2])[:, None]
        y_fact = pointwise(pointwise(x, quant(u)), quant(v))
        g_full = full_rank_gate(plan, gates)
        if g_full is None:
            return y_fact
        y_full = pointwise(x, quant(factor_product(u, w["kernel_v"])))
        return select(g_full, y_fact, y_full)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, gates: dict | None = None) -> jax.Array:
        """Runs the block with the child its gates choose.

        Args:
            x: [N, H, W, cin].
            train: batch statistics (mutable "batch_stats").
            gates: {ladder: [gates]} already computed from this block's params (the search's
                loss computes them once for the cost term and the forward pass); None computes
                them here.

        Returns:
            [N, H', W', cout].
        """
        plan, slot = self.plan, self.plan.slot
        act = activation(plan.act)
        unsigned = plan.act in NONNEGATIVE
        m_max, k_max = plan.max_mid, plan.max_kernel
        se_channels = plan.max_spec().se_channels if plan.has_se else 0
        if not se_channels and plan.has_se:
            se_channels = max(1, int(round(slot.cin * slot.se_ratio)))
        bits_a = plan.bits_a
        convs = {}
        if plan.has_expand:
            convs["expand"] = SuperConv(_pointwise_shapes(slot.cin, m_max, plan.factorized),
                                        bits_a, True, name="expand")
        if plan.fused:
            convs["expand"] = SuperConv((("kernel", (k_max, k_max, slot.cin, m_max)),), bits_a, True,
                                        name="expand")
        else:
            dw_signed = not (plan.has_expand and unsigned) or plan.has_op_gate
            convs["dw"] = SuperConv((("kernel", (k_max, k_max, 1, m_max)),), bits_a, dw_signed,
                                    name="dw")
        if plan.has_se:
            se = SuperSE(se_channels, m_max, bits_a, not unsigned, plan.act, name="se")
        convs["project"] = SuperConv(_pointwise_shapes(m_max, slot.cout, plan.factorized), bits_a,
                                     not unsigned, name="project")
        params = {name: conv.weights() for name, conv in convs.items()}
        if plan.has_se:
            params["se"] = se.weights()
        norms = outer_log_rms(plan, params) if self.is_initializing() else None

        def t_init(rng, name):
            # Flax also calls this (abstractly, for its shape check) when applying.
            if norms is None:
                return jnp.zeros((plan.ladders[name].gates,), jnp.float32)
            return init_thresholds(norms[name])

        for ladder in plan.ladders:
            params[f"t_{ladder}"] = self.param(f"t_{ladder}", t_init, ladder)
        if gates is None:
            gates = slot_gates(plan, params)

        def quant(w):
            return nested_fake_quant_weight(w, plan.bits, gates.get("bits"))

        mid_mask = channel_mask(plan, gates)
        # Weight masks alone cut channels >= m out of every output (project and SE-reduce rows);
        # activations are masked too only where per-tensor activation ranges would see them.
        act_mask = (lambda t: t * mid_mask) if bits_a < FLOAT_BITS else (lambda t: t)
        if plan.has_expand:
            y = self._pointwise(convs["expand"], x, train, gates, "expand", None, quant)
            y = act_mask(act(batch_norm(train, "expand_bn")(y)))
            if plan.has_op_gate:
                y = select(gates["op"][0], x, y)
        else:
            y = x
        spatial = plan.spatial_conv
        kernel = params[spatial]["kernel"] * kernel_mask(plan, gates)[:, :, None, None]
        y = convs[spatial].quant_input(y, train)
        if plan.fused:
            y = full_conv(y, quant(kernel), slot.stride)
        else:
            y = depthwise_conv(y, quant(kernel), slot.stride, self.depthwise_impl)
        y = act_mask(act(batch_norm(train, f"{spatial}_bn")(y)))
        if plan.has_se:
            y_se = se(y, train, mid_mask, quant)
            y = select(gates["se"][0], y, y_se) if "se" in gates else y_se
        y = self._pointwise(convs["project"], act_mask(y), train, gates, "project", mid_mask, quant)
        y = batch_norm(train, "project_bn")(y)
        spec = plan.max_spec()
        if spec.has_residual:
            y = y + x
        if "keep" in gates:
            y = select(gates["keep"][0], x, y)
        self.sow("intermediates", "features", y)
        return y
