"""Grouped 1x1 convs nested in a single-path superkernel (FBNet's ``e1_g2`` candidate blocks).

A mid ladder (:mod:`nas.single_path.plan`) may start with a *grouped* level: the channels of
the level above it, with the block's 1x1 convs in g groups (and, in an MBConv, a ShuffleNet
channel shuffle after the expand conv). A grouped 1x1 conv is the full conv times a
block-diagonal mask, so it nests in the full conv: the mid gate between the two levels is the
threshold indicator of the norm of the *off-diagonal* blocks, and while it is off they are
masked to zero.

The shuffle is a fixed permutation ``P`` of the mid channels (``shuffled[j] = h[perm[j]]``).
Everything after it up to the project conv is per channel (depthwise conv, BatchNorm,
activation; squeeze-excite pools per channel and its convs read / write whole channel
vectors), so ``project(dw_k(P h)) = (project P) (dw_{P^-1 k}(h))``: the superkernel runs
without the shuffle, the project conv's mask is the block-diagonal pattern with its rows
permuted, and the exported child takes the superkernel's weights after the shuffle with their
mid channels permuted (:func:`grouped_child_variables`). The grouped child is then exactly the
ungrouped child of the same channels less its off-diagonal weights.

Example:
    >>> level = group_level(plan)            # None when the slot has no grouped level
    >>> level.off["project"].shape           # [max_mid, cout]: 1 at the weights g2 drops
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from nas.blocks.program import Conv, Shuffle, program
from nas.blocks.slicing import get_path, set_path, slice_block_variables
from nas.single_path.plan import SlotPlan
from nas.single_path.roles import SlotProgram, slot_program
from nas.spec import BlockSpec


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """Returns ``perm`` with ``channel_shuffle(x, groups)[..., j] == x[..., perm[j]]``."""
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


@dataclasses.dataclass(frozen=True)
class GroupLevel:
    """The grouped level of a slot's mid ladder.

    Attributes:
        level: its mid level (0); the mid gate of the same index switches the off-diagonal
            blocks on.
        groups: the 1x1 convs' groups.
        channels: its mid channels.
        perm: the shuffle's permutation of those channels, or None (no shuffle).
        after_shuffle: names of the child's convs after the shuffle (their mid channels are
            permuted in the child).
        off: {grouped conv name: [cin, cout] 0/1 array over the superkernel conv: 1 at the
            weights the grouped child lacks (off-diagonal blocks inside its channels)}.
    """

    level: int
    groups: int
    channels: int
    perm: np.ndarray | None
    after_shuffle: frozenset[str]
    off: Mapping[str, np.ndarray]


def _block_off(cin: int, cout: int, groups: int, rows: np.ndarray, cols: np.ndarray,
               shape: tuple[int, int]) -> np.ndarray:
    """The off-diagonal pattern of a grouped cin->cout conv placed at `rows` x `cols` of a
    larger [shape] kernel."""
    same = (np.arange(cin)[:, None] // (cin // groups)) == (np.arange(cout)[None, :] // (cout // groups))
    off = np.zeros(shape, np.float32)
    off[np.ix_(rows, cols)] = (~same).astype(np.float32)
    return off


#: group_level's results by (grouped spec, level, superkernel spec).
_LEVELS: dict[tuple[BlockSpec, int, BlockSpec], GroupLevel] = {}


def _group_level(grouped: BlockSpec, level: int, sp: SlotProgram) -> GroupLevel:
    ops = program(grouped)
    shuffle = next((i for i, op in enumerate(ops) if isinstance(op, Shuffle)), None)
    perm = None if shuffle is None else shuffle_permutation(ops[shuffle].shape[-1],
                                                            ops[shuffle].groups)
    after = frozenset(op.name for op in ops[shuffle or len(ops):] if isinstance(op, Conv))
    m = grouped.mid_channels
    supers = {conv.name: conv for conv in sp.convs()}
    off = {}
    for conv in ops:
        if not (isinstance(conv, Conv) and conv.kind == "pointwise" and conv.groups > 1):
            continue
        big = supers[conv.name]
        ident_in, ident_out = np.arange(conv.cin), np.arange(conv.cout)
        shuffled = perm is not None and conv.name in after
        rows = perm if shuffled and sp.reads_mid(big) else ident_in
        cols = perm if shuffled and sp.writes_mid(big) else ident_out
        off[conv.name] = _block_off(conv.cin, conv.cout, conv.groups, rows, cols,
                                    (big.cin, big.cout))
    return GroupLevel(level, grouped.groups, m, perm, after, off)


def group_level(plan: SlotPlan) -> GroupLevel | None:
    """Returns the grouped level of a slot's (or a branch's) mid ladder, or None.

    Args:
        plan: a plan without op switch (a slot or one branch).
    """
    if plan.branches or max(plan.mid_groups) == 1:
        return None
    level = plan.mid_groups.index(max(plan.mid_groups))
    top = plan.superkernel_levels()
    key = (plan.spec({**top, "mid": level}), level, plan.spec(top))
    if key not in _LEVELS:
        _LEVELS[key] = _group_level(key[0], level, slot_program(plan))
    return _LEVELS[key]


def _to_grouped(kernel: Any, groups: int) -> Any:
    """A full 1x1 kernel [1, 1, cin, cout] whose off-diagonal blocks are dropped, in the
    grouped layout [1, 1, cin / groups, cout] of :func:`nas.blocks.convs.pointwise`."""
    cin, cout = kernel.shape[-2:]
    cin_g = cin // groups
    rows = (np.arange(cout)[None, :] // (cout // groups)) * cin_g + np.arange(cin_g)[:, None]
    return kernel[0, 0][rows, np.arange(cout)[None, :]][None, None]


def grouped_child_variables(plan: SlotPlan, spec: BlockSpec, params: Mapping[str, Any],
                            stats: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """Returns the variables of a grouped child cut from its slot's superkernel.

    The ungrouped block of the same channels is sliced (:func:`slice_block_variables`); the
    mid channels of the convs after the shuffle (and their BatchNorms) are permuted as the
    superkernel's mask assumes, then the grouped convs keep their diagonal blocks.

    Args:
        plan: the slot's plan (or its branch's).
        spec: the grouped child's BlockSpec.
        params: the superkernel block's params.
        stats: its batch_stats.

    Returns:
        (params, batch_stats) for ``make_block(spec)``.
    """
    level = group_level(plan)
    sp = slot_program(plan)
    supers = {conv.name: conv for conv in sp.convs()}
    p, s = slice_block_variables(dataclasses.replace(spec, groups=1), params, stats)
    for conv in program(spec):
        if not isinstance(conv, Conv):
            continue
        w = dict(get_path(p, conv.name))
        if level.perm is not None and conv.name in level.after_shuffle:
            perm = level.perm
            if sp.reads_mid(supers[conv.name]) and conv.kind != "depthwise":
                w["kernel"] = w["kernel"][:, :, perm, :]
            if sp.writes_mid(supers[conv.name]):
                w["kernel"] = w["kernel"][..., perm]
                if "bias" in w:
                    w["bias"] = w["bias"][perm]
                if conv.bn is not None:
                    p[conv.bn] = {k: v[perm] for k, v in p[conv.bn].items()}
                    if conv.bn in s:
                        s[conv.bn] = {k: v[perm] for k, v in s[conv.bn].items()}
        if conv.kind == "pointwise" and conv.groups > 1:
            w["kernel"] = _to_grouped(w["kernel"], conv.groups)
        set_path(p, conv.name, w)
    return p, s
