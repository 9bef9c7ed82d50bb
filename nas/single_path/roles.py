"""What each single-path ladder does to a slot's op program, read from the program alone.

The superkernel of a slot runs the op program (:func:`nas.blocks.program.program`) of the
slot's largest BlockSpec; its ladders (:mod:`nas.single_path.plan`) act on that program by rules
that name no block type, so a new block type runs in the superkernel without single-path code:

* **keep, op, se** (switches): the ops that the program of the ladder's level 0 lacks (the
  whole program for keep, whose level 0 is a skip; the expand conv and its activation for op,
  whose level 0 is a DWSep; the squeeze-excite ops for se) form one contiguous *segment*; when
  the gate is off the segment's output is its input (:func:`optional_segment`).
* **kernel**: the kxk convs ('full' or 'depthwise') carry the ring mask of their taps.
* **mid**: the tensors with the block's mid channels (the output of its first kxk conv, of
  every conv outside SE writing that width and of the SE conv restoring it, then everything
  computed from them) carry the
  channel mask; a 1x1 conv that reads one has its input rows masked (so pruned channels reach
  nothing), and where activations are quantized the tensor itself is masked (so per-tensor
  ranges see only kept channels).
* **rank**: the factorized 1x1 convs keep their first r inner directions; their widths follow
  from the mid level (:meth:`SlotProgram.conv_io`).
* **bits**: every weight is quantized by the nested quantizer.
* **bits_a**: the program is that of the lowest activation bit-width (so it has every
  activation point, :meth:`~nas.single_path.plan.SlotPlan.superkernel_levels`); each point is
  quantized by the nested activation quantizer (:mod:`nas.single_path.nested_act_quant`).

Example:
    >>> sp = slot_program(plan)
    >>> sp.segments, sp.spatial, sorted(sp.mid_tensors)[:2]
    ({'se': (6, 11)}, ('dw',), [...])
"""

from __future__ import annotations

import dataclasses
import functools

from nas.blocks.program import INPUT, Conv, Op, Quantize, program
from nas.single_path.plan import SlotPlan
from nas.spec import BlockSpec
from nas.supernet.path_program import PathProgram, optional_segment, path_program

#: Ladders that switch a run of the program on or off (level 0 = off).
SWITCH_LADDERS = ("keep", "op", "se")


@dataclasses.dataclass(frozen=True)
class SlotProgram:
    """The op program of a slot's largest BlockSpec with the roles its ladders give the ops.

    Attributes:
        path: the program with its supernet roles (kxk convs, mid convs, SE segment).
        segments: {switch ladder: [start, stop) op indices it switches}, outermost first.
        spatial: names of the kxk convs (the first is the one whose norms feed the keep, mid
            and kernel gates).
        mid_tensors: names of the tensors with the block's mid channels (outside SE).
        mids: the mid channel count of each mid level (the plan's).
        inner_points: {name of a 1x1 conv held as factors: the quantizer of its inner tensor
            (None for float activations)}; empty when no rank level factorizes.
    """

    path: PathProgram
    segments: dict[str, tuple[int, int]]
    spatial: tuple[str, ...]
    mid_tensors: frozenset[str]
    mids: tuple[int, ...]
    inner_points: dict[str, Quantize | None]

    @property
    def ops(self) -> tuple[Op, ...]:
        """The program."""
        return self.path.ops

    def convs(self) -> list[Conv]:
        """Every conv of the program, in order."""
        return [conv for _, conv in self.path.convs()]

    def reads_mid(self, conv: Conv) -> bool:
        """Whether `conv` reads a tensor with the mid channels."""
        return conv.x in self.mid_tensors

    def writes_mid(self, conv: Conv) -> bool:
        """Whether `conv`'s output has the mid channels."""
        return conv.out in self.mid_tensors

    def conv_io(self, conv: Conv, mid_level: int) -> tuple[int, int]:
        """Returns (cin, cout) of `conv` in the child of one mid level."""
        m = self.mids[mid_level]
        return (m if self.reads_mid(conv) else conv.cin, m if self.writes_mid(conv) else conv.cout)

    def factorized(self) -> list[Conv]:
        """The 1x1 convs held as factors ``kernel_u`` / ``kernel_v`` (some rank level
        factorizes them)."""
        return [c for c in self.convs() if c.name in self.inner_points]

    def segment_convs(self, ladder: str) -> list[Conv]:
        """The convs inside the segment a switch ladder turns on or off."""
        start, stop = self.segments[ladder]
        return [op for op in self.ops[start:stop] if isinstance(op, Conv)]


def _mid_tensors(pp: PathProgram) -> frozenset[str]:
    """Outputs of the mid convs outside SE, of convs inside SE that restore the width of a mid
    SE input (the SE's expand conv), and every tensor computed from them."""
    mid = {INPUT: False}
    seg_in = pp.ops[pp.optional[0]].x if pp.optional is not None else None
    for i, op in enumerate(pp.ops):
        if isinstance(op, Conv) and pp.in_segment(i):
            mid[op.out] = bool(mid.get(seg_in)) and op.cout == pp.mid
        elif isinstance(op, Conv):
            mid[op.out] = op.name in pp.mid_convs
        else:
            mid[op.out] = mid[op.x]
        if isinstance(op, Conv) and op.mid is not None:
            mid[op.mid.out] = False
    return frozenset(name for name, is_mid in mid.items() if is_mid)


@functools.lru_cache(maxsize=1024)
def _slot_program(top: BlockSpec, lows: tuple[tuple[str, BlockSpec], ...],
                  mids: tuple[int, ...], low_rank: BlockSpec | None) -> SlotProgram:
    pp = path_program(top)
    segments = {}
    for ladder, low in lows:
        seg = optional_segment(pp.ops, program(low))
        if seg is None:
            raise ValueError(f"ladder {ladder!r}: its level 0 runs the same ops as its top")
        segments[ladder] = seg
    spatial = tuple(c.name for _, c in pp.convs() if c.kind != "pointwise")
    inner = {}
    if low_rank is not None:
        inner = {c.name: c.mid for c in program(low_rank) if isinstance(c, Conv) and c.rank}
    return SlotProgram(pp, segments, spatial, _mid_tensors(pp), mids, inner)


def slot_program(plan: SlotPlan) -> SlotProgram:
    """Returns the program of a slot's largest BlockSpec with its ladders' roles.

    Args:
        plan: the slot's single-path plan.

    Returns:
        Its :class:`SlotProgram` (cached).

    Raises:
        ValueError: a switch ladder's level 0 is not the top program less one run of ops, or
            `plan` is an op switch (each of its branches has a program, not the slot).
    """
    if plan.branches:
        raise ValueError(f"{plan.prefix}: an op switch runs one program per branch; pass "
                         "plan.branch(operator)")
    top_levels = plan.superkernel_levels()
    lows = tuple((name, plan.spec({**top_levels, name: 0}))
                 for name in SWITCH_LADDERS if name in plan.ladders)
    low_rank = plan.spec({**top_levels, "rank": 0}) if plan.factorized else None
    return _slot_program(plan.spec(top_levels), lows, tuple(plan.mids), low_rank)
