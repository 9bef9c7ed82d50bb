"""One weight-sharing path of a supernet slot: its weights and its forward pass, both read from
the op program of the path's largest BlockSpec (:mod:`nas.blocks.program`, where each block is
defined once).

A path holds the weights of its largest option, in the parameter layout of the Linen blocks
(one entry per conv of the program: ``expand/kernel`` or ``expand/kernel_u`` + ``kernel_v``,
``expand_bn``, ``dw/kernel``, ``dw_bn``, ``se/reduce``, ...), so a child's weights are slices of
it (:func:`slice_path_params`). The forward pass (:func:`run_path`) interprets the program on
sliced and masked weights; how each knob maps onto the ops (kxk convs, mid-channel convs, rank
stages, the optional SE segment) is decided from the program alone
(:mod:`nas.supernet.path_program`), so a new block type runs here without supernet code:

* a :class:`PathCall` built by :func:`masked_call` runs the path at its largest shape with soft
  masks (FBNetV2-style: kernel = centre masks of the largest kernel, channels = first-k masks,
  rank = first-r masks of the factorized inner dimension, SE and bits as weighted sums);
* one built by :func:`branch_call` runs one option exactly: weights sliced to its shape, bits
  picked with ``lax.switch``; :func:`picked_call` picks each size around the one op it changes.
  With one-hot masks they agree.

Activations are quantized at the points of the program (those of the Linen blocks, see
:mod:`nas.blocks.act_points`, plus the inner point of a factorized conv) wherever a bit-width
choice is below 32. BatchNorm here always normalizes with the batch's statistics (one-shot NAS
practice: running statistics would mix options); activation quantizers use the batch's range,
as the Linen blocks do on their first training step.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from nas.blocks.convs import conv_init, full_conv, full_conv_dot_grad, pointwise
from nas.blocks.depthwise import depthwise_conv
from nas.blocks.layers import BN_EPSILON
from nas.blocks.plain_ops import plain_op
from nas.blocks.program import FLOAT_BITS, INPUT, Act, Conv, Op, Quantize, output_of
from nas.blocks.slicing import get_path, set_path, slice_block_variables
from nas.supernet.mixing import (Choice, Fixed, Pick, apply_choice, center_crop, center_mask,
                                 prefix_mask, quantize_input, quantize_weight, weighted_values)
from nas.supernet.path_program import PathProgram, path_program
from nas.supernet.plan import PathPlan, Shape, option_shape

Term = tuple[Any, int | None, Any]  # (weight, inner rank or None = full conv, inner mask or None)


@dataclasses.dataclass
class PathCall:
    """How to run a path once: sizes to slice to, masks and choices.

    Attributes:
        mid: depthwise channels to slice to.
        kernel: depthwise kernel size, or a :class:`Pick` over kernel sizes (one ``lax.switch``
            around the depthwise conv alone).
        se: squeeze channels (0 = no SE), or a :class:`Pick` over them.
        channel_mask: [mid] soft mask, or None.
        kernel_mask: [kernel, kernel] soft mask, or None.
        se_weights: (weight without SE, weight with SE), or None (SE on iff se > 0).
        in_terms, out_terms: weighted full/factorized forms of the first / project 1x1 conv, or
            a :class:`Pick` over inner ranks (None = full conv), switched around that conv alone.
        bits_w, bits_a: bit-width choices.
        on_run: optional ``f(stage, value)`` called while tracing each executed piece
            (('kernel', k), ('se', s), ('rank_in', r), ('rank_out', r)); used to count ops.
    """

    mid: int
    kernel: int | Pick
    se: int | Pick
    channel_mask: Any
    kernel_mask: Any
    se_weights: tuple[Any, Any] | None
    in_terms: list[Term] | Pick
    out_terms: list[Term] | Pick
    bits_w: Choice
    bits_a: Choice
    on_run: Callable[[str, Any], None] | None = None


# ------------------------------------------------------------------------------------ init
def init_path_params(path: PathPlan, rng: jax.Array) -> dict[str, Any]:
    """Initializes a path's weights at its largest shape (He-normal kernels, BN scale 1), one
    entry per conv of its program: 1x1 convs of a rank stage get ``kernel`` where some option
    runs them full and ``kernel_u`` / ``kernel_v`` at the largest rank where some option
    factorizes them.

    Args:
        path: the path plan.
        rng: PRNG key.

    Returns:
        The path's param tree ({} for skip).
    """
    pp = path_program(path.spec)
    if not pp.ops:
        return {}
    convs = [conv for _, conv in pp.convs()]
    keys = iter(jax.random.split(rng, max(16, 3 * len(convs))))
    stages = {"rank_in": (path.full_in, path.max_rank_in),
              "rank_out": (path.full_out, path.max_rank_out)}

    def init(shape):
        return conv_init(next(keys), shape, jnp.float32)

    p: dict[str, Any] = {}
    for conv in convs:
        out: dict[str, Any] = {}
        full, rank = stages.get(pp.rank_stage.get(conv.name), (True, 0))
        if full:
            out["kernel"] = init(conv.kernel_shapes()["kernel"])
        if rank:
            out["kernel_u"] = init((1, 1, conv.cin, rank))
            out["kernel_v"] = init((1, 1, rank, conv.cout))
        if conv.bias:
            out["bias"] = jnp.zeros((conv.cout,), jnp.float32)
        set_path(p, conv.name, out)
        if conv.bn is not None:
            p[conv.bn] = {"scale": jnp.ones((conv.cout,), jnp.float32),
                          "bias": jnp.zeros((conv.cout,), jnp.float32)}
    return p


def slice_path_params(path: PathPlan, p: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """Returns the Linen params of one option of a path (a child block), sliced from the
    path's weights: every kernel of the option's program is the centre crop / first channels
    of the path's, every bias and BatchNorm the first channels.

    Args:
        path: the path.
        p: its params (largest shape).
        shape: the option's shape (one of ``path.shapes``).

    Returns:
        A params tree for ``make_block(spec)`` (without weight steps: minmax quantization).
    """
    return slice_block_variables(path.option_spec(shape), p)[0]


# ------------------------------------------------------------------------------ building
def _shape_of(path: PathPlan, values: Mapping[str, Any]) -> Shape:
    return option_shape(dataclasses.replace(path.spec, **values))


def masked_call(path: PathPlan, choices: Mapping[str, Choice]) -> PathCall:
    """Returns the call running `path` at its largest shape with masks from Fixed/Mix choices.

    Args:
        path: the path.
        choices: {knob: Fixed | Mix} for kernel, expand, width, se, rank, bits_w, bits_a.
    """
    s = path.spec
    mid = path_program(s).mid
    if not path_program(s).ops:  # a skip path: no conv to mask (its rank choice means nothing)
        return PathCall(0, s.kernel, 0, None, None, None, [], [], choices["bits_w"],
                        choices["bits_a"])
    se_ch = s.se_channels
    ew = [(dict(expand=e, width=w), we * ww) for (e, we), (w, ww)
          in itertools.product(weighted_values(choices["expand"]), weighted_values(choices["width"]))]
    se_vals = dict(weighted_values(choices["se"]))
    ranks = weighted_values(choices["rank"])

    def terms(which: str, size: int) -> list[Term]:
        out = []
        for rho, w_rho in ranks:
            if rho is None:
                out.append((w_rho, None, None))
                continue
            counts = [(getattr(_shape_of(path, dict(v, rank=rho, se_ratio=0.0)), which), w)
                      for v, w in ew]
            out.append((w_rho, size, prefix_mask(size, counts)))
        return out

    channel_mask = None
    mids = [(_shape_of(path, dict(v, se_ratio=0.0)).mid, w) for v, w in ew]
    if len({m for m, _ in mids}) > 1:
        channel_mask = prefix_mask(mid, mids)
    kernels = weighted_values(choices["kernel"])
    kernel_mask = center_mask(s.kernel, kernels) if len(kernels) > 1 else None
    se_weights = None
    if se_ch and len(se_vals) > 1:
        se_weights = (se_vals.get(False, 0.0), se_vals.get(True, 0.0))
    stages = path_program(s).rank_stage.values()
    out_terms = terms("rank_out", path.max_rank_out) if "rank_out" in stages else []
    return PathCall(mid, s.kernel, se_ch if (True in se_vals or not se_vals) else 0, channel_mask,
                    kernel_mask, se_weights, terms("rank_in", path.max_rank_in), out_terms,
                    choices["bits_w"], choices["bits_a"])


def branch_call(path: PathPlan, shape: Shape, bits_w: Choice, bits_a: Choice) -> PathCall:
    """Returns the call running one option of `path` exactly (sliced weights, no masks)."""
    return PathCall(shape.mid, shape.kernel, shape.se, None, None, None,
                    [(1.0, shape.rank_in, None)], [(1.0, shape.rank_out, None)], bits_w, bits_a)


def picked_call(mid: int, kernel: Pick, se: Pick, rank_in: Pick, rank_out: Pick, bits_w: Choice,
                bits_a: Choice, on_run: Callable[[str, Any], None] | None = None) -> PathCall:
    """Returns the call running one option of a path at `mid` channels, its other sizes picked.

    Each picked size is a ``lax.switch`` around the one op it changes (depthwise conv, SE, a 1x1
    conv), so a path's traced ops grow with the sum of its kernel, SE and rank choices per
    channel count, not with their product; only the picked branch of each switch runs.

    Args:
        mid: depthwise channels (static: a channel count changes every tensor after it).
        kernel, se, rank_in, rank_out: picks over the values this channel count allows.
        bits_w, bits_a: bit-width choices.
        on_run: see :class:`PathCall`.
    """
    return PathCall(mid, kernel, se, None, None, None, rank_in, rank_out, bits_w, bits_a, on_run)


# ------------------------------------------------------------------------------- forward
def batch_norm(y: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
    """Normalizes with the batch's statistics (per channel), then scale and bias, in the
    order of operations of Flax's BatchNorm (so quantizers downstream round alike)."""
    c = y.shape[-1]
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.maximum(jnp.mean(jax.lax.square(y), axis=(0, 1, 2)) - jax.lax.square(mean), 0.0)
    mul = jax.lax.rsqrt(var + BN_EPSILON) * p["scale"][:c]
    return (y - mean) * mul + p["bias"][:c]


def _one_by_one(x, p, terms: Sequence[Term], cin: int, cout: int, groups: int, call: PathCall,
                row_mask=None, col_mask=None, mid_signed: bool | None = None):
    """Applies a 1x1 conv (full or factorized, weighted terms) on sliced weights; a factorized
    conv quantizes its inner tensor (signed: `mid_signed`) where the path quantizes activations."""
    out = None
    for weight, rank, inner in terms:
        if rank is None:
            k = p["kernel"][:, :, :cin // groups, :cout]
            if row_mask is not None:
                k = k * row_mask[:, None]
            if col_mask is not None:
                k = k * col_mask
            y = pointwise(x, quantize_weight(k, call.bits_w), groups)
        else:
            u = p["kernel_u"][:, :, :cin, :rank]
            v = p["kernel_v"][:, :, :rank, :cout]
            if row_mask is not None:
                u = u * row_mask[:, None]
            if inner is not None:
                u = u * inner
                v = v * inner[:, None]
            if col_mask is not None:
                v = v * col_mask
            y = pointwise(x, quantize_weight(u, call.bits_w))
            if mid_signed is not None:
                y = quantize_input(y, call.bits_a, signed=mid_signed)
            y = pointwise(y, quantize_weight(v, call.bits_w))
        term = y if isinstance(weight, float) and weight == 1.0 else weight * y
        out = term if out is None else out + term
    return out


def _picked(choice, stage: str, call: PathCall, fn, x):
    """Runs ``fn(value, x)`` under an int/None size or a Pick of sizes, reporting each branch."""
    def run(value, a):
        if call.on_run is not None:
            call.on_run(stage, value)
        return fn(value, a)
    return apply_choice(choice if isinstance(choice, Pick) else Fixed(choice), run, x)


def _spatial_conv(x, p, conv: Conv, k: int, cout: int, call: PathCall, impl: str):
    """A kxk conv ('depthwise' or 'full') on the centre k x k of the path's kernel."""
    kernel = center_crop(p["kernel"], k)
    kernel = kernel[..., :cout] if conv.kind == "depthwise" else kernel[:, :, :x.shape[-1], :cout]
    if call.kernel_mask is not None:
        kernel = kernel * call.kernel_mask[:, :, None, None]
    kernel = quantize_weight(kernel, call.bits_w)
    if conv.kind == "depthwise":
        return depthwise_conv(x, kernel, conv.stride, impl)
    if impl == "shift":  # CPU: the kernel gradient as dots (fast inside ProxylessNAS's switch)
        return full_conv_dot_grad(x, kernel.astype(x.dtype), conv.stride)
    return full_conv(x, kernel.astype(x.dtype), conv.stride)


class _Interpreter:
    """Runs a path's program under one :class:`PathCall` (see :mod:`nas.supernet.path_program`
    for how the knobs map onto the ops). Tensors live in ``env``; ``mid`` marks those with the
    path's mid channels (they carry the channel mask: after each activation, and before a
    quantizer that reads a conv's output directly, e.g. a pre-activation point)."""

    def __init__(self, pp: PathProgram, p: Mapping[str, Any], call: PathCall, impl: str):
        self.pp, self.p, self.call, self.impl = pp, p, call, impl
        self.env: dict[str, jax.Array] = {}
        self.mid: dict[str, bool] = {INPUT: False}
        self.raw: dict[str, bool] = {}  # tensors straight out of a conv (unmasked)

    def run(self, x: jax.Array) -> jax.Array:
        """Args: x, the block's input [N, H, W, cin]. Returns: the program's output."""
        ops, seg = self.pp.ops, self.pp.optional
        self.env[INPUT] = x
        i = 0
        while i < len(ops):
            if seg is not None and i == seg[0]:
                self._optional(ops[seg[0]:seg[1]])
                i = seg[1]
                continue
            self._op(ops[i], se=0)
            i += 1
        return self.env[output_of(ops)]

    def _optional(self, ops: Sequence[Op]) -> None:
        """The optional (SE) segment: skipped, mixed with its input, or picked."""
        call, x_name = self.call, ops[0].x
        self.mid[ops[-1].out] = self.mid[x_name]

        def segment(n: int, a: jax.Array) -> jax.Array:
            if not n:
                return a
            self.env[x_name] = a
            for op in ops:
                self._op(op, se=n)
            return self.env[ops[-1].out]

        y = self.env[x_name]
        if isinstance(call.se, Pick):
            out = _picked(call.se, "se", call, segment, y)
        elif not call.se:
            out = y
        else:
            y_se = segment(call.se, y)
            out = y_se if call.se_weights is None else (call.se_weights[0] * y
                                                         + call.se_weights[1] * y_se)
        self.env[x_name] = y
        self.env[ops[-1].out] = out

    def _op(self, op: Op, se: int) -> None:
        env, call = self.env, self.call
        x = env[op.x]
        mid = self.mid[op.x]
        masked = mid and call.channel_mask is not None
        if isinstance(op, Quantize):
            if masked and self.raw.get(op.x, False):  # a conv's output before its activation:
                x = x * call.channel_mask  # masked so pruned channels do not set the range
            y = quantize_input(x, call.bits_a, signed=op.signed)
        elif isinstance(op, Conv):
            y = self._conv(op, x, se)
            mid = op.name in self.pp.mid_convs and not se
            self.raw[op.out] = True
        else:
            y = plain_op(op, env)
            if y is None:
                raise ValueError(f"a supernet path cannot run {type(op).__name__} ops")
            if isinstance(op, Act) and masked:
                y = y * call.channel_mask
        env[op.out] = y
        self.mid[op.out] = mid

    def _conv(self, op: Conv, x: jax.Array, se: int) -> jax.Array:
        call, pp = self.call, self.pp
        q = get_path(self.p, op.name)
        cm = call.channel_mask
        if se:  # inside the optional segment: squeeze width, else the segment's input width
            cout = se if op.cout == pp.se else self.env[pp.ops[pp.optional[0]].x].shape[-1]
        else:
            cout = call.mid if op.name in pp.mid_convs else op.cout
        row_mask = cm if self.mid[op.x] else None
        col_mask = cm if op.name in pp.mid_convs else None
        stage = pp.rank_stage.get(op.name)
        if op.name in pp.kernel_convs:
            y = _picked(call.kernel, "kernel", call,
                        lambda k, a: _spatial_conv(a, q, op, k, cout, call, self.impl), x)
        elif stage is not None:
            terms = call.in_terms if stage == "rank_in" else call.out_terms
            mid_signed = True if pp.quantized else None
            args = (x.shape[-1], cout, op.groups, call, row_mask, col_mask, mid_signed)
            if isinstance(terms, Pick):
                y = _picked(terms, stage, call,
                            lambda r, a: _one_by_one(a, q, [(1.0, r, None)], *args), x)
            else:
                y = _one_by_one(x, q, terms, *args)
        else:
            y = _one_by_one(x, q, [(1.0, None, None)], x.shape[-1], cout, op.groups, call,
                            row_mask, None)
        if op.bias:
            y = y + q["bias"][:cout]
        return y if op.bn is None else batch_norm(y, self.p[op.bn])


def run_path(path: PathPlan, p: Mapping[str, Any], x: jax.Array, call: PathCall,
             impl: str = "auto") -> jax.Array:
    """Runs one path of a slot: interprets the op program of its largest spec (with activation
    quantizers where a bit-width choice is below 32) under `call`'s slices, masks and picks.

    Args:
        path: the path plan.
        p: its params (largest shape).
        x: input [N, H, W, cin].
        call: sizes, masks and choices (see :func:`masked_call`, :func:`branch_call`).
        impl: depthwise implementation.

    Returns:
        [N, H', W', cout].
    """
    spec = path.spec
    if any(b < FLOAT_BITS for b in call.bits_a.values):
        spec = dataclasses.replace(spec, bits_a=min(call.bits_a.values))
    return _Interpreter(path_program(spec), p, call, impl).run(x)
