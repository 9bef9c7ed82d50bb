"""The superkernel block of one slot: the op program of the slot's largest BlockSpec
(:func:`nas.blocks.program.program`, where each block is defined once), interpreted with every
smaller choice a masked (nested) part of it.

Variables use the child layout of :mod:`nas.blocks.layers`, named by the program (``expand``,
``expand_bn``, ``dw``, ``se/reduce``, ``project``, activation quantizers ``q_<point>``) at the
largest shapes, plus one threshold vector ``t_<ladder>`` per ladder; a factorized 1x1 conv
holds ``kernel_u`` [cin, R] and ``kernel_v`` [R, cout] with R the full rank. The child of any
choice is a slice of these (:mod:`nas.single_path.export`).

How each ladder acts on the ops is read from the program (:mod:`nas.single_path.roles`): switch
ladders (keep, op, se) choose a segment or its input with the exact
:func:`~nas.single_path.indicators.select`; kxk convs carry the kernel ring mask; 1x1 convs
reading the mid channels have their input rows masked; the 1x1 convs a grouped mid level groups
carry its off-diagonal mask (:mod:`nas.single_path.groups`: no shuffle runs, its permutation is
in the mask and the exported weights); factorized convs keep their first inner
directions (or, at the full-rank level, run the product of their factors); every weight goes
through the nested quantizer (masks applied first, so per-output-channel scales see only the
kept part); where activations are quantized, mid tensors are masked before each quantizer and
after each activation, so per-tensor ranges see only kept channels. Where the slot searches
bits_a, every activation point is a :class:`~nas.single_path.nested_act_quant.NestedActQuant`
(child name ``q_<point>``, its running range ``amax``), and the block keeps the running mean
squares of the activation residuals its bits_a gates decide on (batch_stats
``bits_a_residual_ms`` and ``bits_a_residual_ms_first``, pooled over the slot's points).

A slot choosing between two operators that do not nest (an op switch,
:mod:`nas.single_path.op_switch`) holds one such block per operator (submodules named by the
operator, each with its own weights and thresholds) and the op gate's threshold ``t_op``, and
selects the output of one: both run during the search.

So the superkernel computes what the chosen child computes: exactly in training mode and in
float (or float-weight) layers at inference; an int8 layer's child additionally rounds its
BatchNorm bias onto the integer kernel's grid at inference (:mod:`nas.blocks.layers`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.convs import conv_init, full_conv, pointwise
from nas.blocks.depthwise import depthwise_conv
from nas.blocks.layers import BN_EPSILON, BN_MOMENTUM
from nas.blocks.plain_ops import plain_op
from nas.blocks.program import INPUT, Act, Conv, Op, Quantize, output_of
from nas.blocks.quant import ActQuant
from nas.blocks.slicing import factor_product, set_path
from nas.single_path.gates import (THRESHOLD_SCALE, channel_mask, full_rank_gate, group_masks,
                                   init_thresholds, kernel_mask, outer_log_rms, rank_row_mask,
                                   slot_gates)
from nas.single_path.indicators import indicator, select
from nas.single_path.nested_act_quant import (FIRST_RESIDUAL_STAT, RESIDUAL_STAT, NestedActQuant,
                                              update_residual_stats)
from nas.single_path.nested_quant import nested_fake_quant_weight
from nas.single_path.op_switch import OP_LADDER, branch_gates, threshold_path
from nas.single_path.plan import SlotPlan, space_plan
from nas.single_path.roles import SlotProgram, slot_program
from nas.space import Space

_factor_v_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class ConvWeights(nn.Module):
    """The parameters of one superkernel conv at its largest shape (child param names).

    Attributes:
        conv: the conv's op in the slot's program.
        factorized: held as factors at the full rank R = min(cin, cout).
    """

    conv: Conv
    factorized: bool = False

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        """Returns {name: array}: 'kernel' or 'kernel_u' + 'kernel_v', and 'bias'."""
        c = self.conv
        if self.factorized:
            r = min(c.cin, c.cout)
            shapes = {"kernel_u": (1, 1, c.cin, r), "kernel_v": (1, 1, r, c.cout)}
        else:
            shapes = c.kernel_shapes()
        inits = {"kernel": conv_init, "kernel_u": conv_init, "kernel_v": _factor_v_init}
        out = {name: self.param(name, inits[name], tuple(shape)) for name, shape in shapes.items()}
        if c.bias:
            out["bias"] = self.param("bias", nn.initializers.zeros, (c.cout,))
        return out


class _Scope(nn.Module):
    """A submodule (e.g. 'se') holding the variables of the ops run inside it."""

    @nn.compact
    def __call__(self, make: Callable[[], Any]) -> Any:
        return make()


class Scopes:
    """Creates modules under their submodule path ('se/reduce' inside an 'se' submodule) while
    the block's ``__call__`` runs (so that they belong to the block).

    Raises:
        ValueError: a path nested deeper than one submodule.
    """

    def __init__(self):
        self.scopes: dict[str, _Scope] = {}

    def make(self, path: str, make: Callable[[str], Any]) -> Any:
        """Returns ``make(leaf)`` created under the submodule of `path`'s parent."""
        parent, _, leaf = path.rpartition("/")
        if not parent:
            return make(leaf)
        if "/" in parent:
            raise ValueError(f"superkernel variables nest one submodule deep, not {path!r}")
        if parent not in self.scopes:
            self.scopes[parent] = _Scope(name=parent)
        return self.scopes[parent](lambda: make(leaf))


class _Run:
    """Interprets a slot's program once, inside :class:`SuperBlock`'s ``__call__`` (see the
    module docstring). Tensors live in ``env``."""

    def __init__(self, block: "SuperBlock", scopes: Scopes, sp: SlotProgram,
                 weights: Mapping[str, Any], gates: Mapping[str, jax.Array], train: bool):
        self.block, self.scopes, self.sp, self.w, self.gates, self.train = \
            block, scopes, sp, weights, gates, train
        self.plan = block.plan
        self.mid_mask = channel_mask(self.plan, gates)
        self.group_masks = group_masks(self.plan, gates)
        self.kernel_mask = kernel_mask(self.plan, gates)
        self.quantized = any(isinstance(op, Quantize) for op in sp.ops)
        self.env: dict[str, jax.Array] = {}
        # bits_a ladder: the batch's activation residual sums of squares and their element count
        self.residual_squares: jax.Array | None = None
        self.residual_count = 0

    def quant_w(self, w: jax.Array) -> jax.Array:
        """The nested fake-quantizer of the bits ladder."""
        return nested_fake_quant_weight(w, self.plan.bits, self.gates.get("bits"))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.env[INPUT] = x
        self._run(0, len(self.sp.ops), frozenset())
        return self.env[output_of(self.sp.ops)]

    def _run(self, start: int, stop: int, entered: frozenset[str]) -> None:
        """Runs ops [start, stop); a switch segment starting inside is run as a unit."""
        i = start
        while i < stop:
            seg = next(((name, s, e) for name, (s, e) in self.sp.segments.items()
                        if s == i and e <= stop and name not in entered), None)
            if seg is None:
                self._op(self.sp.ops[i])
                i += 1
                continue
            name, s, e = seg
            self._run(s, e, entered | {name})
            off, out = self.sp.ops[s].x, self.sp.ops[e - 1].out
            self.env[out] = select(self.gates[name][0], self.env[off], self.env[out])
            i = e

    def _mask_mid(self, name: str, y: jax.Array) -> jax.Array:
        """Masks a mid tensor where activations are quantized (ranges see kept channels only)."""
        return y * self.mid_mask if self.quantized and name in self.sp.mid_tensors else y

    def _op(self, op: Op) -> None:
        env, x = self.env, self.env[op.x]
        if isinstance(op, Quantize):
            y = self._quantize(op, self._mask_mid(op.x, x))
        elif isinstance(op, Conv):
            y = self._conv(op, x)
        else:
            y = plain_op(op, env)
            if y is None:
                raise ValueError(f"a superkernel cannot run {type(op).__name__} ops")
            if isinstance(op, Act):
                y = self._mask_mid(op.out, y)
        env[op.out] = y

    def _quantize(self, op: Quantize, x: jax.Array) -> jax.Array:
        if "bits_a" not in self.plan.ladders:
            quant = self.scopes.make(op.module,
                                     lambda leaf: ActQuant(op.bits, op.signed, name=leaf))
            return quant(x, self.train)
        quant = self.scopes.make(op.module, lambda leaf: NestedActQuant(
            self.plan.bits_a, op.signed, name=leaf))
        y, squares = quant(x, self.train, self.gates["bits_a"])
        self.residual_squares = squares if self.residual_squares is None \
            else self.residual_squares + squares
        self.residual_count += x.size
        return y

    def _conv(self, op: Conv, x: jax.Array) -> jax.Array:
        w, q = self.w[op.name], self.quant_w
        if op.kind != "pointwise":
            kernel = q(w["kernel"] * self.kernel_mask[:, :, None, None])
            if op.kind == "depthwise":
                y = depthwise_conv(x, kernel, op.stride, self.block.depthwise_impl)
            else:
                y = full_conv(x, kernel, op.stride)
        else:
            y = self._pointwise(op, x, w)
        if op.bias:
            y = y + w["bias"]
        if op.bn is None:
            return y
        bn = self.scopes.make(op.bn, lambda leaf: nn.BatchNorm(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=leaf))
        return bn(y, use_running_average=not self.train)

    def _pointwise(self, op: Conv, x: jax.Array, w: Mapping[str, jax.Array]) -> jax.Array:
        """A 1x1 conv: full, factorized, or both chosen by the full-rank gate."""
        q = self.quant_w
        rows = ((lambda k: k * self.mid_mask[:, None]) if self.sp.reads_mid(op)
                else (lambda k: k))
        if "kernel" in w:
            kernel = rows(w["kernel"])
            if op.name in self.group_masks:         # a grouped mid level (never factorized)
                kernel = kernel * self.group_masks[op.name]
            return pointwise(x, q(kernel), op.groups)
        u, v = rows(w["kernel_u"]), w["kernel_v"]
        keep = rank_row_mask(self.plan, self.gates, op, v.shape[-2])
        inner = pointwise(x, q(u))
        point = self.sp.inner_points[op.name]
        if point is not None:  # the inner tensor's quantizer sees only the kept directions
            inner = self._quantize(point, inner * keep)
        y_fact = pointwise(inner, q(v * keep[:, None]))
        g_full = full_rank_gate(self.plan, self.gates)
        if g_full is None:
            return y_fact
        return select(g_full, y_fact, pointwise(x, q(factor_product(u, v))))


class SuperBlock(nn.Module):
    """The single-path superkernel of slot `index` of `space` (see the module docstring).

    Attributes:
        space: the Space.
        index: the slot's index in ``space.slots``.
        depthwise_impl: 'auto' | 'shift' | 'xla'.
        branch: for one branch of an op switch (:mod:`nas.single_path.op_switch`), its
            operator; '' for the slot itself.
    """

    space: Space
    index: int
    depthwise_impl: str = "auto"
    branch: str = ""

    @property
    def plan(self) -> SlotPlan:
        """The slot's single-path plan (or that of its branch)."""
        plan = space_plan(self.space)[self.index]
        return plan.branch(self.branch) if self.branch else plan

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, gates: dict | None = None) -> jax.Array:
        """Runs the block with the child its gates choose.

        Args:
            x: [N, H, W, cin].
            train: batch statistics (mutable "batch_stats").
            gates: {ladder: [gates]} (an op switch's: by gate key, :mod:`.op_switch`) already
                computed from this block's variables (the search's loss computes them once for
                the cost term and the forward pass); None computes them here.

        Returns:
            [N, H', W', cout].
        """
        plan = self.plan
        if plan.branches:
            return self._switch(plan, x, train, gates)
        sp = slot_program(plan)
        scopes = Scopes()
        weights: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for conv in sp.convs():
            factors = conv.name in sp.inner_points
            weights[conv.name] = scopes.make(
                conv.name, lambda leaf, c=conv, f=factors: ConvWeights(c, f, name=leaf)())
            set_path(params, conv.name, weights[conv.name])
        residual = {name: self.variable("batch_stats", name, jnp.zeros,
                                        (plan.ladders["bits_a"].gates,), jnp.float32)
                    for name in (RESIDUAL_STAT, FIRST_RESIDUAL_STAT) if "bits_a" in plan.ladders}
        stats = {name: var.value for name, var in residual.items()}
        norms = outer_log_rms(plan, params, stats) if self.is_initializing() else None

        def t_init(rng, name):
            # Flax also calls this (abstractly, for its shape check) when applying.
            if norms is None:
                return jnp.zeros((plan.ladders[name].gates,), jnp.float32)
            return init_thresholds(norms[name])

        for ladder in plan.ladders:
            params[f"t_{ladder}"] = self.param(f"t_{ladder}", t_init, ladder)
        if gates is None:
            gates = slot_gates(plan, params, stats)
        run = _Run(self, scopes, sp, weights, gates, train)
        y = run(x)
        if residual and run.residual_squares is not None and train \
                and not self.is_initializing():
            new = update_residual_stats(stats, run.residual_squares, run.residual_count)
            for name, var in residual.items():
                var.value = new[name]
        if not self.branch:
            self.sow("intermediates", "features", y)
        return y

    def _switch(self, plan: SlotPlan, x: jax.Array, train: bool, gates: dict | None
                ) -> jax.Array:
        """An op switch: both branches run (each at its own gates), the op gate selects one."""
        t_op = self.param(threshold_path(OP_LADDER),
                          lambda rng: init_thresholds(jnp.zeros((1,), jnp.float32)))
        outs = []
        for branch in plan.branches:
            op = branch.base_op
            block = SuperBlock(self.space, self.index, self.depthwise_impl, op, name=op)
            outs.append(block(x, train, None if gates is None else branch_gates(gates, op)))
        g = (indicator(-THRESHOLD_SCALE * t_op) if gates is None else gates[OP_LADDER])[0]
        y = select(g, outs[0], outs[1])
        self.sow("intermediates", "features", y)
        return y
