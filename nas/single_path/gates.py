"""The gates of a single-path slot, computed from its variables alone.

Every gate is ``indicator(log_rms(outer part) - t)`` with a learned threshold ``t`` per gate
(param ``t_<ladder>`` of the slot, scaled by :data:`THRESHOLD_SCALE`), so the same function
serves the forward pass, the latency term of the loss and ``derive``. The outer parts are listed
in :mod:`nas.single_path.plan`; all are read from the slot's params except the activation
residuals of the bits_a ladder, whose running estimates are in the slot's batch_stats
(:mod:`nas.single_path.nested_act_quant`).

Also here: the 0/1 masks the gates switch (channels of the mid ladder, the off-diagonal blocks of
a grouped mid level's 1x1 convs, taps of the kernel ladder, singular directions of the rank
ladder), built as sums of gate products over disjoint groups so
that hard gates give exact 0/1 masks.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.blocks.program import Conv
from nas.blocks.slicing import get_path
from nas.single_path.indicators import NORM_EPS, hard_level, indicator, ladder_levels, log_rms, reached
from nas.single_path.nested_act_quant import RESIDUAL_STAT, residual_growth
from nas.single_path.nested_quant import residual_parts
from nas.single_path.groups import GroupLevel, group_level
from nas.single_path.op_switch import OP_LADDER, branch_gates, branch_key, threshold_path
from nas.single_path.plan import SlotPlan
from nas.single_path.roles import slot_program

#: Thresholds are stored divided by this factor: a threshold moves THRESHOLD_SCALE times the
#: learning rate per step at most about (its rule, :mod:`nas.single_path.threshold_opt`, divides by
#: the RMS of all threshold gradients), so at lr 3e-3 a gate flips after some tens of steps.
THRESHOLD_SCALE = 20.0
#: Initial margin (in log-RMS units) of every indicator: all gates start on, as in the paper.
INIT_MARGIN = 1.0


def ring_masks(sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Returns [K, K] masks: the k0 x k0 centre, then each ring of size k(l) not in k(l-1)."""
    big = sizes[-1]
    boxes = []
    for k in sizes:
        m = np.zeros((big, big), np.float32)
        lo = (big - k) // 2
        m[lo:lo + k, lo:lo + k] = 1.0
        boxes.append(m)
    return [boxes[0]] + [boxes[i] - boxes[i - 1] for i in range(1, len(boxes))]


def range_masks(bounds: tuple[int, ...], size: int) -> list[np.ndarray]:
    """Returns [size] masks of the index groups [0, b0), [b0, b1), ..."""
    out, lo = [], 0
    for b in bounds:
        m = np.zeros((size,), np.float32)
        m[lo:b] = 1.0
        out.append(m)
        lo = b
    return out


def _weights(p: Mapping[str, Any]) -> list[jax.Array]:
    return [v for k, v in p.items() if k.startswith("kernel")]


def block_weights(plan: SlotPlan, params: Mapping[str, Any]) -> list[jax.Array]:
    """Returns every quantized weight tensor of a slot's superkernel (its program's convs)."""
    return [w for conv in slot_program(plan).convs() for w in _weights(get_path(params, conv.name))]


def rank_bounds(plan: SlotPlan, cin: int, cout: int) -> tuple[int, ...]:
    """Returns the inner widths of the factorized levels of a cin->cout 1x1 conv."""
    return tuple(plan.rank_channels(cin, cout, i) for i, r in enumerate(plan.ranks) if r is not None)


def outer_log_rms(plan: SlotPlan, params: Mapping[str, Any],
                  stats: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    """Returns {ladder: [gates] log RMS of each gate's outer part}.

    Args:
        plan: the slot's plan.
        params: the slot's params (child layout: the convs of its program by name).
        stats: the slot's batch_stats (read only by a bits_a ladder: the growth of its
            activation residuals' log RMS since the first batch).

    Returns:
        For an op switch, keyed by gate key (:mod:`nas.single_path.op_switch`): the op gate's
        constant score 0 under 'op', each branch's norms under '<operator>/<ladder>'.

    Raises:
        ValueError: the slot has a bits_a ladder and `stats` lacks its residual statistics.
    """
    if plan.branches:
        return switch_log_rms(plan, params, stats)
    sp = slot_program(plan)
    out: dict[str, jax.Array] = {}
    kxk = get_path(params, sp.spatial[0])["kernel"]  # [K, K, 1 (depthwise) or cin (full), M]
    mids = plan.mids
    k, fan = kxk.shape[0], kxk.shape[2]
    if "keep" in plan.ladders or "mid" in plan.ladders:
        # mean squares of the channel groups: one reduction and one constant matrix product
        groups = np.stack(range_masks(mids, plan.max_mid), axis=1)          # [M, levels]
        per_channel = jnp.sum(jnp.square(kxk), axis=(0, 1, 2))              # [M]
        sizes = np.maximum(groups.sum(0), 1)       # a grouped level adds no channels
        group_ms = jnp.dot(per_channel, groups / (sizes * k * k * fan))
        log_group = 0.5 * jnp.log(group_ms + NORM_EPS)
        if "keep" in plan.ladders:
            out["keep"] = log_group[:1]
        if "mid" in plan.ladders:
            out["mid"] = log_group[1:]
            level = group_level(plan)
            if level is not None:  # its gate: the grouped convs' off-diagonal blocks
                out["mid"] = out["mid"].at[level.level].set(_off_diagonal_log_rms(level, params))
    for switch in ("op", "se"):  # the first conv of the segment the gate turns on
        if switch in plan.ladders:
            first = sp.segment_convs(switch)[0]
            out[switch] = jnp.stack([log_rms(*_weights(get_path(params, first.name)))])
    if "kernel" in plan.ladders:
        rings = np.stack(ring_masks(plan.kernel_sizes)[1:], axis=-1).reshape(k * k, -1)
        per_tap = jnp.sum(jnp.square(kxk), axis=(2, 3)).reshape(k * k)
        ring_ms = jnp.dot(per_tap, rings / (rings.sum(0) * fan * kxk.shape[-1]))
        out["kernel"] = 0.5 * jnp.log(ring_ms + NORM_EPS)
    if "rank" in plan.ladders:
        top_mid = len(plan.mids) - 1
        parts = []
        for i in range(1, len(plan.ranks)):
            tail = []
            for conv in sp.factorized():
                v = get_path(params, conv.name)["kernel_v"]
                bounds = rank_bounds(plan, *sp.conv_io(conv, top_mid)) + (v.shape[-2],)
                tail.append(v[..., bounds[i - 1]:bounds[i], :])
            parts.append(log_rms(*tail))
        out["rank"] = jnp.stack(parts)
    if "bits" in plan.ladders:
        # d(Q_b(w) - Q_b'(w))/dw = I - I = 0 under the STE: only the thresholds learn here.
        residuals = [residual_parts(jax.lax.stop_gradient(w), plan.bits)
                     for w in block_weights(plan, params)]
        out["bits"] = jnp.stack([log_rms(*[r[i] for r in residuals])
                                 for i in range(len(plan.bits) - 1)])
    if "bits_a" in plan.ladders:
        if stats is None or RESIDUAL_STAT not in stats:
            raise ValueError(f"{plan.prefix}: the bits_a gates read the slot's batch_stats "
                             f"({RESIDUAL_STAT}); pass the network's batch_stats")
        out["bits_a"] = residual_growth(stats)
    return out


def _off_diagonal_log_rms(level: GroupLevel, params: Mapping[str, Any]) -> jax.Array:
    """log RMS of the weights a grouped level drops (:mod:`nas.single_path.groups`)."""
    total = sum(jnp.sum(jnp.square(get_path(params, name)["kernel"][0, 0]) * off)
                for name, off in level.off.items())
    count = sum(float(off.sum()) for off in level.off.values())
    return 0.5 * jnp.log(total / max(count, 1.0) + NORM_EPS)


def switch_log_rms(plan: SlotPlan, params: Mapping[str, Any],
                   stats: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    """Returns the norms of an op switch's gates: 0 for the op gate (its threshold alone
    decides, see :mod:`nas.single_path.op_switch`), each branch's outer norms by gate key.

    Args:
        plan: the op switch's plan.
        params: the slot's params (each branch's under its operator's name).
        stats: the slot's batch_stats (each branch's under its operator's name), or None.
    """
    out = {OP_LADDER: jnp.zeros((1,), jnp.float32)}
    for branch in plan.branches:
        op = branch.base_op
        sub = None if stats is None else stats.get(op, {})
        for name, norms in outer_log_rms(branch, params[op], sub).items():
            out[branch_key(op, name)] = norms
    return out


def init_thresholds(log_rms_values: jax.Array) -> jax.Array:
    """Initial stored thresholds: every gate on with margin :data:`INIT_MARGIN`."""
    return (jax.lax.stop_gradient(log_rms_values) - INIT_MARGIN) / THRESHOLD_SCALE


def slot_gates(plan: SlotPlan, params: Mapping[str, Any],
               stats: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    """Returns {ladder: [gates]} of a slot (exactly 0./1. forward, relaxed gradients).

    Args:
        plan: the slot's plan.
        params: the slot's params, including the thresholds ``t_<ladder>``.
        stats: the slot's batch_stats (needed where the slot searches bits_a).

    Returns:
        {ladder: [gates]}; for an op switch {gate key: [gates]} (:mod:`.op_switch`).
    """
    norms = outer_log_rms(plan, params, stats)
    return {key: indicator(value - THRESHOLD_SCALE * get_path(params, threshold_path(key)))
            for key, value in norms.items()}


def channel_mask(plan: SlotPlan, gates: Mapping[str, jax.Array]) -> jax.Array:
    """Returns the [max_mid] 0/1 mask of the channels the mid ladder keeps."""
    groups = range_masks(plan.mids, plan.max_mid)
    on = reached(gates["mid"]) if "mid" in gates else jnp.ones((1,))
    return sum(on[i] * g for i, g in enumerate(groups))


def group_masks(plan: SlotPlan, gates: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Returns {1x1 conv name: [cin, cout] mask} of the convs a grouped mid level groups:
    1 except at the off-diagonal blocks, which take the gate of the level above it (exactly
    0 or 1 with hard gates); empty without a grouped level."""
    level = group_level(plan)
    if level is None:
        return {}
    on = reached(gates["mid"])[level.level + 1]
    return {name: 1.0 - off * (1.0 - on) for name, off in level.off.items()}


def kernel_mask(plan: SlotPlan, gates: Mapping[str, jax.Array]) -> jax.Array:
    """Returns the [K, K] 0/1 mask of the kxk kernel's taps the kernel ladder keeps."""
    rings = ring_masks(plan.kernel_sizes)
    on = reached(gates["kernel"]) if "kernel" in gates else jnp.ones((1,))
    return sum(on[i] * r for i, r in enumerate(rings))


def rank_row_mask(plan: SlotPlan, gates: Mapping[str, jax.Array], conv: Conv, width: int
                  ) -> jax.Array:
    """Returns the [width] mask of the singular directions a factorized conv keeps.

    The rank of a level depends on the conv's channels, hence on the mid level: the mask is the
    sum over mid levels (hard one-hot, no gradient) of that level's nested direction groups.

    Args:
        plan: the slot's plan.
        gates: the slot's gates.
        conv: the factorized conv (an op of the slot's program).
        width: rows of the conv's ``kernel_v``.
    """
    sp = slot_program(plan)
    mid_p = (jax.lax.stop_gradient(ladder_levels(gates["mid"])) if "mid" in gates
             else jnp.ones((1,)))
    rank_on = reached(gates["rank"]) if "rank" in gates else jnp.ones((1,))
    total = 0.0
    for j in range(len(plan.mids)):
        groups = range_masks(rank_bounds(plan, *sp.conv_io(conv, j)), width)
        total = total + mid_p[j] * sum(rank_on[i] * g for i, g in enumerate(groups))
    return total


def full_rank_gate(plan: SlotPlan, gates: Mapping[str, jax.Array]) -> jax.Array | None:
    """Returns the gate of the full-rank (not factorized) level, or None if it is not a choice."""
    if plan.ranks[-1] is not None or not plan.factorized:
        return None
    return reached(gates["rank"])[-1]


def hard_levels(plan: SlotPlan, gates: Mapping[str, Any]) -> dict[str, int]:
    """Returns {ladder: chosen level} of hard gates (of an op switch: the op level and the
    levels of the chosen branch's ladders)."""
    if plan.branches:
        branch = plan.branches[hard_level(np.asarray(gates[OP_LADDER]))]
        return {OP_LADDER: plan.branches.index(branch),
                **hard_levels(branch, branch_gates(gates, branch.base_op))}
    return {name: hard_level(np.asarray(gates[name])) for name in plan.ladders}
