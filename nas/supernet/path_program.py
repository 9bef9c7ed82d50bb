"""What a supernet path needs to know about a block's op program (:mod:`nas.blocks.program`).

A weight-sharing path runs the program of its largest BlockSpec with its knobs applied as
slices, masks and picks. The knobs map onto the ops by rules over the program alone, so a new
block type (a new branch of :func:`~nas.blocks.program.program`) runs in the supernet without
supernet code:

* **kernel**: every conv that is not 1x1 ('depthwise' or 'full') is centre-cropped / masked to
  the chosen kernel size.
* **mid channels** (expand, width): the path's *mid* is the output width of its first kxk conv;
  every conv outside the optional segment (below) whose output has that width, except the last
  conv (the block's output), is sliced to the chosen mid, and its output carries the channel mask.
* **rank**: the 1x1 convs outside the optional segment, in program order, are the path's
  ``rank_in`` and ``rank_out`` convs (full, or factorized ``kernel_u`` -> ``kernel_v``).
* **se**: the *optional segment* is the run of ops that the program of the spec without SE
  lacks (found by comparing the two programs); it is skipped, mixed or picked as a unit, and
  inside it the convs whose output has the squeeze width are sliced to the chosen SE width.

Example:
    >>> pp = path_program(BlockSpec("mbconv", 16, 16, 1, (8, 8), expand=3, se_ratio=0.25))
    >>> pp.rank_stage, pp.mid_convs, pp.optional
    ({'expand': 'rank_in', 'project': 'rank_out'}, frozenset({'expand', 'dw'}), (4, 10))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from nas.blocks.program import Conv, Op, Quantize, program
from nas.spec import BlockSpec

#: The rank stages of a path's 1x1 convs, in program order.
RANK_STAGES = ("rank_in", "rank_out")


@dataclasses.dataclass(frozen=True)
class PathProgram:
    """A block's program with the roles a supernet path gives its ops.

    Attributes:
        ops: the program.
        optional: [start, stop) op indices of the optional (SE) segment, or None.
        rank_stage: {1x1 conv name outside the segment: 'rank_in' | 'rank_out'}.
        kernel_convs: names of the kxk convs the kernel knob sizes.
        mid_convs: names of the convs whose output has the path's mid channels.
        mid: the mid channels of this spec (0 for an empty program).
        se: the squeeze channels of this spec (0 without SE).
        quantized: whether the program quantizes activations (has Quantize ops).
    """

    ops: tuple[Op, ...]
    optional: tuple[int, int] | None
    rank_stage: dict[str, str]
    kernel_convs: frozenset[str]
    mid_convs: frozenset[str]
    mid: int
    se: int
    quantized: bool

    def convs(self, inside: bool | None = None) -> list[tuple[int, Conv]]:
        """Returns [(op index, Conv)]: all (None), inside the segment (True) or outside (False)."""
        out = []
        for i, op in enumerate(self.ops):
            if isinstance(op, Conv) and (inside is None or self.in_segment(i) == inside):
                out.append((i, op))
        return out

    def in_segment(self, index: int) -> bool:
        """Whether op `index` belongs to the optional segment."""
        return self.optional is not None and self.optional[0] <= index < self.optional[1]


def op_key(op: Op) -> tuple[str, str]:
    """Returns a structural key of an op (its type and name / point / function), independent
    of the SSA tensor names, for comparing two programs."""
    label = getattr(op, "name", None) or getattr(op, "point", None) or getattr(op, "fn", "")
    return type(op).__name__, str(label)


def optional_segment(big: tuple[Op, ...], small: tuple[Op, ...]) -> tuple[int, int] | None:
    """Returns the [start, stop) run of `big` that `small` lacks (common prefix and suffix
    removed), or None when the programs have the same ops.

    Raises:
        ValueError: `small` is not `big` less one contiguous run of ops.
    """
    kb, ks = [op_key(o) for o in big], [op_key(o) for o in small]
    if kb == ks:
        return None
    run = removed_run(kb, ks)
    if run is None:
        raise ValueError("the programs differ by more than one contiguous run of ops")
    return run


def removed_run(big: Sequence[Any], small: Sequence[Any]) -> tuple[int, int] | None:
    """Returns the [start, stop) run of `big` whose removal leaves `small` (keys compared by
    equality: the longest common prefix, then suffix), or None when no single run does (or
    `small` is not shorter).

    Args:
        big: the keys of the longer program.
        small: the keys of the shorter one.
    """
    if len(small) >= len(big):
        return None
    pre = 0
    while pre < len(small) and big[pre] == small[pre]:
        pre += 1
    suf = 0
    while suf < len(small) - pre and big[-1 - suf] == small[-1 - suf]:
        suf += 1
    return (pre, len(big) - suf) if pre + suf == len(small) else None


@functools.lru_cache(maxsize=4096)
def path_program(spec: BlockSpec) -> PathProgram:
    """Returns the program of `spec` with the roles of its ops (see the module docstring).

    Args:
        spec: a layer (the path's largest spec, or one option's spec).

    Returns:
        Its :class:`PathProgram`.

    Raises:
        ValueError: more than two 1x1 convs outside the optional segment.
    """
    ops = program(spec)
    optional = None
    if spec.se_channels:
        optional = optional_segment(ops, program(dataclasses.replace(spec, se_ratio=0.0)))
    pp = PathProgram(ops, optional, {}, frozenset(), frozenset(), 0, spec.se_channels,
                     any(isinstance(o, Quantize) for o in ops))
    outside = [c for _, c in pp.convs(inside=False)]
    pointwise = [c.name for c in outside if c.kind == "pointwise"]
    if len(pointwise) > len(RANK_STAGES):
        raise ValueError(f"a supernet path supports at most {len(RANK_STAGES)} 1x1 convs outside "
                         f"its SE, got {pointwise}")
    spatial = [c for _, c in pp.convs() if c.kind != "pointwise"]
    mid = spatial[0].cout if spatial else (outside[0].cout if outside else 0)
    mid_convs = frozenset(c.name for c in outside[:-1] if c.cout == mid)
    return dataclasses.replace(
        pp, rank_stage=dict(zip(pointwise, RANK_STAGES)),
        kernel_convs=frozenset(c.name for c in spatial), mid_convs=mid_convs, mid=mid)


def stage_ranks(spec: BlockSpec) -> tuple[int | None, int | None]:
    """Returns the inner ranks of `spec`'s 'rank_in' and 'rank_out' convs (None: full or absent)."""
    pp = path_program(spec)
    ranks = {stage: conv.rank for _, conv in pp.convs(inside=False)
             for name, stage in pp.rank_stage.items() if conv.name == name}
    return ranks.get("rank_in"), ranks.get("rank_out")

