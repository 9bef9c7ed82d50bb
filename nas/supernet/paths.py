"""One weight-sharing path of a supernet slot: its weights and its forward pass.

A path holds the weights of its largest option, in the parameter layout of the Linen blocks
(``expand/kernel`` or ``expand/kernel_u`` + ``kernel_v``, ``expand_bn``, ``dw/kernel``,
``dw_bn``, ``se/reduce``, ``se/expand``, ``project/...``, ``project_bn``), so a child's weights
are slices of it. The forward pass reuses the blocks' primitives (``pointwise``,
``depthwise_conv``, ``fake_quant_*``, activations, channel shuffle) on sliced and masked weights:

* a :class:`PathCall` built by :func:`masked_call` runs the path at its largest shape with soft
  masks (FBNetV2-style: kernel = centre masks of the largest kernel, channels = first-k masks,
  rank = first-r masks of the factorized inner dimension, SE and bits as weighted sums);
* one built by :func:`branch_call` runs one option exactly: weights sliced to its shape, bits
  picked with ``lax.switch``. With one-hot masks the two agree.

BatchNorm here always normalizes with the batch's statistics (one-shot NAS practice: running
statistics would mix options); activation quantizers use the batch's range.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from nas.blocks.activations import NONNEGATIVE, activation
from nas.blocks.convs import channel_shuffle, conv_init, pointwise
from nas.blocks.depthwise import depthwise_conv
from nas.blocks.layers import BN_EPSILON
from nas.supernet.mixing import (Choice, Fixed, Pick, apply_choice, center_crop, center_mask,
                                 prefix_mask, quantize_input, quantize_weight, weighted_values)
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
    """Initializes a path's weights at its largest shape (He-normal kernels, BN scale 1).

    Args:
        path: the path plan.
        rng: PRNG key.

    Returns:
        The path's param tree ({} for skip).
    """
    s = path.spec
    if s.op == "skip":
        return {}
    keys = iter(jax.random.split(rng, 16))
    g = s.groups

    def conv(shape):
        return conv_init(next(keys), shape, jnp.float32)

    def bn(c):
        return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}

    def pw(cin, cout, full, rank, groups=1):
        out = {}
        if full:
            out["kernel"] = conv((1, 1, cin // groups, cout))
        if rank:
            out["kernel_u"] = conv((1, 1, cin, rank))
            out["kernel_v"] = conv((1, 1, rank, cout))
        return out

    p: dict[str, Any] = {}
    mid = s.mid_channels
    if s.op == "mbconv":
        p["expand"] = pw(s.cin, mid, path.full_in, path.max_rank_in, g)
        p["expand_bn"] = bn(mid)
    p["dw"] = {"kernel": conv((s.kernel, s.kernel, 1, mid))}
    p["dw_bn"] = bn(mid)
    if s.se_channels:
        p["se"] = {"reduce": {"kernel": conv((1, 1, mid, s.se_channels)),
                              "bias": jnp.zeros((s.se_channels,), jnp.float32)},
                   "expand": {"kernel": conv((1, 1, s.se_channels, mid)),
                              "bias": jnp.zeros((mid,), jnp.float32)}}
    if s.op == "mbconv":
        p["project"] = pw(mid, s.cout, path.full_out, path.max_rank_out, g)
    else:
        p["project"] = pw(s.cin, s.cout, path.full_in, path.max_rank_in, g)
    p["project_bn"] = bn(s.cout)
    return p


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
    mid = s.mid_channels
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
    if s.op == "mbconv" and len(ew) > 1:
        channel_mask = prefix_mask(mid, [(_shape_of(path, dict(v, se_ratio=0.0)).mid, w) for v, w in ew])
    kernels = weighted_values(choices["kernel"])
    kernel_mask = center_mask(s.kernel, kernels) if len(kernels) > 1 else None
    se_weights = None
    if se_ch and len(se_vals) > 1:
        se_weights = (se_vals.get(False, 0.0), se_vals.get(True, 0.0))
    out_terms = terms("rank_out", path.max_rank_out) if s.op == "mbconv" else []
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
    """Normalizes with the batch's statistics (per channel), then scale and bias."""
    c = y.shape[-1]
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y), axis=(0, 1, 2)) - jnp.square(mean)
    return (y - mean) * jax.lax.rsqrt(jnp.maximum(var, 0.0) + BN_EPSILON) * p["scale"][:c] + p["bias"][:c]


def _one_by_one(x, p, terms: Sequence[Term], cin: int, cout: int, groups: int, bits_w: Choice,
                row_mask=None, col_mask=None):
    """Applies a 1x1 conv (full or factorized, weighted terms) on sliced weights."""
    out = None
    for weight, rank, inner in terms:
        if rank is None:
            k = p["kernel"][:, :, :cin // groups, :cout]
            if row_mask is not None:
                k = k * row_mask[:, None]
            if col_mask is not None:
                k = k * col_mask
            y = pointwise(x, quantize_weight(k, bits_w), groups)
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
            y = pointwise(pointwise(x, quantize_weight(u, bits_w)), quantize_weight(v, bits_w))
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


def _conv_1x1(x, p, terms, stage: str, call: PathCall, cin: int, cout: int, groups: int,
              row_mask=None, col_mask=None):
    """A 1x1 conv from weighted terms, or picked among ranks (one switch around this conv)."""
    if not isinstance(terms, Pick):
        return _one_by_one(x, p, terms, cin, cout, groups, call.bits_w, row_mask, col_mask)
    return _picked(terms, stage, call, lambda r, a: _one_by_one(
        a, p, [(1.0, r, None)], cin, cout, groups, call.bits_w, row_mask, col_mask), x)


def _squeeze_excite(y, p, call: PathCall, act, unsigned: bool, se: int):
    c = y.shape[-1]
    s = jnp.mean(y, axis=(1, 2), keepdims=True)
    s = quantize_input(s, call.bits_a, signed=not unsigned)
    k = p["reduce"]["kernel"][:, :, :c, :se]
    if call.channel_mask is not None:
        k = k * call.channel_mask[:, None]
    s = pointwise(s, quantize_weight(k, call.bits_w)) + p["reduce"]["bias"][:se]
    s = act(s)
    s = quantize_input(s, call.bits_a, signed=not unsigned)
    k = p["expand"]["kernel"][:, :, :se, :c]
    s = pointwise(s, quantize_weight(k, call.bits_w)) + p["expand"]["bias"][:c]
    return y * jax.nn.sigmoid(s)


def run_path(path: PathPlan, p: Mapping[str, Any], x: jax.Array, call: PathCall,
             impl: str = "auto") -> jax.Array:
    """Runs one path of a slot.

    Args:
        path: the path plan (op, channels, stride, act, groups, residual).
        p: its params (largest shape).
        x: input [N, H, W, cin].
        call: sizes, masks and choices (see :func:`masked_call`, :func:`branch_call`).
        impl: depthwise implementation.

    Returns:
        [N, H', W', cout].
    """
    s = path.spec
    if s.op == "skip":
        return x
    act = activation(s.act)
    unsigned = s.act in NONNEGATIVE
    cm = call.channel_mask
    if s.op == "mbconv":
        y = quantize_input(x, call.bits_a, signed=True)
        y = _conv_1x1(y, p["expand"], call.in_terms, "rank_in", call, s.cin, call.mid, s.groups,
                      col_mask=cm)
        y = act(batch_norm(y, p["expand_bn"]))
        if cm is not None:
            y = y * cm
        y = channel_shuffle(y, s.groups)
        dw_signed = not unsigned
    else:
        y = x
        dw_signed = True

    def depthwise(k, a):
        kernel = center_crop(p["dw"]["kernel"], k)[..., :call.mid]
        if call.kernel_mask is not None:
            kernel = kernel * call.kernel_mask[:, :, None, None]
        return depthwise_conv(quantize_input(a, call.bits_a, signed=dw_signed),
                              quantize_weight(kernel, call.bits_w), s.stride, impl)

    y = _picked(call.kernel, "kernel", call, depthwise, y)
    y = act(batch_norm(y, p["dw_bn"]))
    if cm is not None:
        y = y * cm
    if isinstance(call.se, Pick):
        y = _picked(call.se, "se", call,
                    lambda n, a: _squeeze_excite(a, p["se"], call, act, unsigned, n) if n else a, y)
    elif call.se:
        y_se = _squeeze_excite(y, p["se"], call, act, unsigned, call.se)
        y = y_se if call.se_weights is None else call.se_weights[0] * y + call.se_weights[1] * y_se
    y = quantize_input(y, call.bits_a, signed=not unsigned)
    if s.op == "mbconv":
        y = _conv_1x1(y, p["project"], call.out_terms, "rank_out", call, call.mid, s.cout,
                      s.groups, row_mask=cm)
    else:
        y = _conv_1x1(y, p["project"], call.in_terms, "rank_in", call, s.cin, s.cout, s.groups)
    y = batch_norm(y, p["project_bn"])
    if s.has_residual:
        y = y + x
    return y
