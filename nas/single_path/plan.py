"""The single-path plan of a Space: every slot's decisions as nested ladders.

Single-Path NAS needs every decision of a slot to be *nested*: each choice contains the smaller
ones, and a threshold indicator switches the outer part on or off. This module reads the Space
(never a second description of it) and turns each slot's knobs into ladders, ordered from the
smallest level up:

====== ================================ ===============================================
ladder levels                            outer part whose norm feeds the indicator
====== ================================ ===============================================
keep   skip, layer                      the inner channel group of the kxk kernel
op     two operators                    nested (dwsep, mbconv at expand 1): the expand
                                        1x1 conv; not nested (mbconv, fused_mbconv):
                                        none, an op switch (:mod:`.op_switch`)
mid    expanded channel counts (the     the kxk kernel's channels [m(l-1), m(l)); above
       lowest may be grouped)           a grouped level: the off-diagonal blocks of the
                                        grouped 1x1 convs (:mod:`.groups`)
kernel kernel sizes                     the ring of taps of size k(l) not in k(l-1)
se     off, on                          the squeeze-excite reduce conv
rank   ranks ascending, then full       the trailing singular directions [r(l-1), r(l))
bits   bit-widths ascending (32 last)   the quantization residual Q_b(l) - Q_b(l-1)
bits_a activation bit-widths ascending  the activation residual Q_b(l)(x) - Q_b(l-1)(x)
                                        (running estimate, :mod:`.nested_act_quant`)
====== ================================ ===============================================

The kxk kernel is the first kxk conv of the slot's op program (the depthwise conv of an MBConv,
the full conv of a Fused-MBConv); how each ladder acts on the program's ops is read from the
program (:mod:`nas.single_path.roles`).
A ladder of n levels has n - 1 gates (learned thresholds). The mid ladder's levels are the
distinct values of ``round(cin * expand * width)`` over the slot's expand and width choices;
where two (expand, width) pairs give the same channel count, the level maps to the one with the
larger width (the unpruned network).

The superkernel runs the program of the top level of every ladder except bits_a, which it runs
at its lowest bit-width (:meth:`SlotPlan.superkernel_levels`): that program has every activation
point, and each point's nested quantizer covers the other bit-widths.

A slot whose two operators do not nest is an *op switch* (:mod:`nas.single_path.op_switch`):
its plan has one branch plan per operator (``SlotPlan.branches``, each an ordinary plan of
that operator), its ladders are the op ladder plus the union of the branches' ladders, and a
level dict selects the branch of its op level.

A skip where the layer changes shape (``skip_projection``: a 1x1 conv -> BN -> act) is not
nested in the layer's operator: it is the first branch of an op switch (its own superkernel,
with only the ladders a 1x1 conv has), the layer's operator the second.

Grouped 1x1 convs (FBNet's ``e1_g2`` blocks) nest as the lowest level of the mid ladder: the
same channels as the level above it with the off-diagonal blocks of the 1x1 convs masked
(:mod:`nas.single_path.groups`, which also handles the channel shuffle).

A slot with FBNet-style candidate blocks (the ``block`` knob) is planned from the knobs its
candidates set (:mod:`nas.single_path.candidates`): the candidates must be exactly the product
of the ladders' levels (plus skip); each combination of levels maps back to its candidate's
name (:meth:`SlotPlan.level_values`).

Knobs that cannot be nested (searched activation, groups above the lowest channel count,
candidate blocks that are not a product of nested choices) are refused with one clear line.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from typing import Any, Mapping, Sequence

from nas.errors import NasInputError
from nas.space import Space, Slot
from nas.single_path.candidates import (CandidateMatcher, candidate_view, combo_sort_key,
                                        mid_combos)
from nas.single_path.op_switch import OP_LADDER, programs_nest
from nas.spec import BlockSpec, op_traits

LADDER_ORDER = ("keep", "op", "mid", "kernel", "se", "rank", "bits", "bits_a")
#: The knobs each ladder decides (a candidate block is named by the ladders deciding its knobs).
LADDER_KNOBS = {"keep": ("op",), "op": ("op",), "mid": ("expand", "width", "groups"),
                "kernel": ("kernel",), "se": ("se",), "rank": ("rank",), "bits": ("bits_w",),
                "bits_a": ("bits_a",)}


@dataclasses.dataclass(frozen=True)
class Ladder:
    """One nested decision of a slot.

    Attributes:
        name: 'keep', 'op', 'mid', 'kernel', 'se', 'rank', 'bits' (weights) or 'bits_a'
            (activations).
        values: the level values, smallest first (for 'mid': (channels, expand, width,
            groups)).
    """

    name: str
    values: tuple

    @property
    def n(self) -> int:
        """Number of levels."""
        return len(self.values)

    @property
    def gates(self) -> int:
        """Number of gates (thresholds)."""
        return len(self.values) - 1


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """The superkernel of one slot: its largest shapes and its ladders.

    Attributes:
        slot: the Space's slot.
        base_op: the operator of the non-skip levels ('mbconv', 'dwsep', 'fused_mbconv', ...;
            'mbconv' when the op ladder exists; 'skip' for the skip-projection branch of an
            op switch).
        ladders: {name: Ladder} for the searched decisions (fixed knobs have none).
        kernel_sizes: kernel sizes, ascending (one entry when fixed).
        mids: expanded channel counts of the mid levels, ascending (``[cin]`` for dwsep); a
            grouped level repeats the channels of the level above it.
        mid_knobs: (expand, width) of each entry of `mids`.
        mid_groups: groups of the 1x1 convs at each entry of `mids` (> 1 only at level 0).
        ranks: rank fractions ascending, None (full) last; ``(None,)`` when not factorized.
        bits: weight bit-widths ascending.
        bits_a: activation bit-widths ascending.
        se: (False,), (True,) or (False, True).
        can_skip: whether the keep ladder exists.
        branches: for an op switch, the plans of its two operators (op level 0, level 1);
            the other fields are then those of level 1's. Empty otherwise.
        base_values: the knob values no ladder decides (the slot's fixed knobs, a candidate
            slot's knobs that all its candidates share).
        block_ladders: a candidate slot's ladders that decide its candidates' knobs.
        block_names: a candidate slot's {levels of `block_ladders`: candidate name}.
    """

    slot: Slot
    base_op: str
    ladders: Mapping[str, Ladder]
    kernel_sizes: tuple[int, ...]
    mids: tuple[int, ...]
    mid_knobs: tuple[tuple[Any, float], ...]
    mid_groups: tuple[int, ...]
    ranks: tuple
    bits: tuple[int, ...]
    bits_a: tuple[int, ...]
    se: tuple[bool, ...]
    can_skip: bool
    base_values: Mapping[str, Any]
    branches: tuple["SlotPlan", ...] = ()
    block_ladders: tuple[str, ...] = ()
    block_names: Mapping[tuple[int, ...], str] = dataclasses.field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The slot's label prefix (its submodule name)."""
        return self.slot.prefix

    @property
    def max_mid(self) -> int:
        """Channels of the superkernel's expanded tensor."""
        return self.mids[-1]

    @property
    def factorized(self) -> bool:
        """Whether the 1x1 convs are held as factors (some rank level is not full)."""
        return any(r is not None for r in self.ranks)

    def level_values(self, levels: Mapping[str, int]) -> dict[str, Any]:
        """Returns the slot's knob values {knob: value} for one level per ladder.

        Args:
            levels: {ladder name: level index}; missing ladders are at level 0.

        Returns:
            Values for every knob of the slot (as ``Slot.resolve`` expects), and for a slot
            with candidate blocks the chosen candidate's name under 'block'.
        """
        if self.branches:
            branch = self.branches[levels.get(OP_LADDER, 0)]
            return branch.level_values({n: l for n, l in levels.items() if n in branch.ladders})
        v = dict(self.base_values)
        get = lambda name: levels.get(name, 0)  # noqa: E731
        v["op"] = self.base_op
        if "op" in self.ladders:
            v["op"] = self.ladders["op"].values[get("op")]
        mid = get("mid") if "mid" in self.ladders else 0
        if op_traits(v["op"]).expands:
            v["expand"], v["width"] = self.mid_knobs[mid]
        if op_traits(v["op"]).bottleneck:
            v["groups"] = self.mid_groups[mid]
        relevant = op_traits(v["op"]).knobs       # a skip branch keeps the slot's kernel value
        if "kernel" in relevant:
            v["kernel"] = self.kernel_sizes[get("kernel") if "kernel" in self.ladders else 0]
        if "se" in relevant:
            v["se"] = self.se[get("se") if "se" in self.ladders else 0]
        if "rank" in relevant:
            v["rank"] = self.ranks[get("rank") if "rank" in self.ladders else 0]
        v["bits_w"] = self.bits[get("bits") if "bits" in self.ladders else 0]
        v["bits_a"] = self.bits_a[get("bits_a") if "bits_a" in self.ladders else 0]
        if self.can_skip and get("keep") == 0:
            v["op"] = "skip"
        if self.block_names:
            v["block"] = self.block_names[tuple(get(name) for name in self.block_ladders)]
        return v

    def spec(self, levels: Mapping[str, int]) -> BlockSpec:
        """Returns the BlockSpec of one level per ladder."""
        return self.slot.spec(self.level_values(levels))

    def max_spec(self) -> BlockSpec:
        """Returns the BlockSpec of the largest level of every ladder (full rank, most bits)."""
        return self.spec({name: ladder.n - 1 for name, ladder in self.ladders.items()})

    def superkernel_levels(self) -> dict[str, int]:
        """Returns the levels whose program the superkernel runs: every ladder at its top, but
        bits_a at its lowest (a quantized program, with every activation point)."""
        levels = {name: ladder.n - 1 for name, ladder in self.ladders.items()}
        if "bits_a" in self.ladders:
            levels["bits_a"] = 0
        return levels

    def grid(self) -> list[dict[str, int]]:
        """Returns every combination of ladder levels ({name: level}), in ladder order (for an
        op switch: the op level, then the combinations of that branch's ladders)."""
        if self.branches:
            return [{OP_LADDER: i, **levels} for i, branch in enumerate(self.branches)
                    for levels in branch.grid()]
        names = [n for n in LADDER_ORDER if n in self.ladders]
        return [dict(zip(names, combo))
                for combo in itertools.product(*(range(self.ladders[n].n) for n in names))]

    def threshold_paths(self) -> list[str]:
        """Returns the params paths of the slot's thresholds ('t_kernel'; for an op switch
        't_op' and each branch's 'fused_mbconv/t_kernel'...)."""
        if self.branches:
            return [f"t_{OP_LADDER}"] + [f"{b.base_op}/{path}" for b in self.branches
                                         for path in b.threshold_paths()]
        return [f"t_{name}" for name in self.ladders]

    def branch(self, operator: str) -> "SlotPlan":
        """Returns the branch plan of `operator` (an op switch's).

        Raises:
            KeyError: the slot has no branch of that operator.
        """
        for branch in self.branches:
            if branch.base_op == operator:
                return branch
        raise KeyError(f"{self.prefix}: no {operator!r} branch")

    def rank_channels(self, cin: int, cout: int, rank_level: int) -> int | None:
        """Returns the inner width of a factorized cin->cout 1x1 conv at one rank level."""
        return dataclasses.replace(self.max_spec(), rank=self.ranks[rank_level]).rank_channels(cin, cout)


def _refuse(space: Space, slot: Slot, knob: str, why: str) -> NasInputError:
    """The one-line refusal of a knob (named by the slot's 'block' label where the knob is set
    by its candidate blocks)."""
    label = slot.label("block" if knob not in slot.choices and len(slot.candidates) > 1
                       else knob)
    return NasInputError(f"single_path cannot search {knob!r} ({why}); fix it to one value in "
                         "the space or use strategy fbnet/proxyless", space.source, label)


def _mid_ladder(space: Space, slot: Slot, op: str, combos: Sequence[tuple[Any, float, int]]
                ) -> tuple[tuple[int, ...], tuple[tuple[Any, float], ...], tuple[int, ...]]:
    """The mid levels (channels, (expand, width), groups) of `combos`: distinct (channels,
    groups) ascending by channels, a grouped level below the ungrouped one of its channels.

    Raises:
        NasInputError: groups > 1 anywhere but at the lowest channel count, or without an
            ungrouped level of the same channels above it (not nested).
    """
    best: dict[tuple[int, int], tuple[Any, float]] = {}
    for e, w, g in combos:
        m = BlockSpec(op, slot.cin, slot.cout, 1, slot.in_hw, expand=e, width=w).mid_channels
        if (m, g) not in best or w > best[(m, g)][1]:
            best[(m, g)] = (e, w)
    keys = sorted(best, key=combo_sort_key)
    mids, groups = tuple(m for m, _ in keys), tuple(g for _, g in keys)
    grouped = [i for i, g in enumerate(groups) if g != 1]
    if grouped and (grouped != [0] or len(mids) < 2 or mids[1] != mids[0]):
        raise _refuse(space, slot, "groups", "grouped 1x1 convs nest only at the lowest channel "
                      "count, below the same block with ungrouped convs")
    return mids, tuple(best[k] for k in keys), groups


def _operator_plan(space: Space, slot: Slot, view: Slot, op: str, can_skip: bool) -> SlotPlan:
    """The plan of one operator of a slot (with its keep ladder where the slot can skip),
    built from the slot's candidate view (:func:`~nas.single_path.candidates.candidate_view`).
    Only the knobs that change a block of the operator (``op_traits(op).knobs``, of
    'skip_proj' for a skip that changes shape) get ladders."""
    ch = view.choices
    resolved = view.spec({"op": op})
    relevant = op_traits(resolved.op).knobs
    one = lambda knob: (ch.get(knob, (view.fixed[knob],)) if knob in relevant  # noqa: E731
                        else (getattr(resolved, knob),))
    ladders: dict[str, Ladder] = {}
    if can_skip:
        ladders["keep"] = Ladder("keep", ("skip", "layer"))
    if op_traits(op).bottleneck:
        mids, mid_knobs, mid_groups = _mid_ladder(space, slot, op, mid_combos(slot, view, op))
    else:
        mids, mid_knobs, mid_groups = (slot.cin,), ((1, 1.0),), (1,)
    if len(mids) > 1:
        ladders["mid"] = Ladder("mid", tuple((m, *k, g)
                                             for m, k, g in zip(mids, mid_knobs, mid_groups)))
    kernels = tuple(sorted(one("kernel")))
    if len(kernels) > 1:
        ladders["kernel"] = Ladder("kernel", kernels)
    se = tuple(sorted(ch.get("se", (view.fixed["se"],)) if "se" in relevant else (False,)))
    if len(se) > 1:
        ladders["se"] = Ladder("se", se)
    rank_choices = ch.get("rank", (view.fixed["rank"],)) if "rank" in relevant else (None,)
    ranks = tuple(sorted(r for r in rank_choices if r is not None))
    if None in rank_choices or not ranks:
        ranks = ranks + (None,)
    if len(ranks) > 1:
        ladders["rank"] = Ladder("rank", ranks)
    if max(mid_groups) > 1 and ranks != (None,):
        raise _refuse(space, slot, "rank", "grouped 1x1 convs cannot be factorized")
    bits = tuple(sorted(one("bits_w")))
    if len(bits) > 1:
        ladders["bits"] = Ladder("bits", bits)
    bits_a = tuple(sorted(one("bits_a")))
    if len(bits_a) > 1:
        ladders["bits_a"] = Ladder("bits_a", bits_a)
    # knobs no ladder decides keep the slot's values (a candidate knob: the slot's default)
    base = {**view.fixed, **{knob: vals[0] for knob, vals in slot.choices.items()}}
    return SlotPlan(slot=slot, base_op=op, ladders=ladders, kernel_sizes=kernels, mids=mids,
                    mid_knobs=mid_knobs, mid_groups=mid_groups, ranks=ranks, bits=bits,
                    bits_a=bits_a, se=se, can_skip=can_skip, base_values=base)


def _with_op_ladder(plan: SlotPlan, ops: tuple[str, str],
                    branches: tuple[SlotPlan, ...] = ()) -> SlotPlan:
    """`plan` with the op ladder (levels `ops`) added, in ladder order."""
    ladders = {**plan.ladders, OP_LADDER: Ladder(OP_LADDER, ops)}
    for branch in branches:
        ladders.update(branch.ladders)
    ordered = {name: ladders[name] for name in LADDER_ORDER if name in ladders}
    return dataclasses.replace(plan, ladders=ordered, branches=branches)


def _two_operators(space: Space, slot: Slot, view: Slot, ops: list[str], can_skip: bool
                   ) -> SlotPlan:
    """A slot choosing between two operators: nested (a segment switch, e.g. DWSep inside an
    MBConv at expand 1) or an op switch with one branch per operator (:mod:`.op_switch`; a
    skip that changes shape is always the first branch)."""
    plans = {op: _operator_plan(space, slot, view, op, can_skip) for op in ops}
    for low, high in (ops, ops[::-1]):
        small, big = plans[low], plans[high]
        if (small.mids, small.mid_groups) == (big.mids, big.mid_groups) \
                and programs_nest(big.max_spec(), small.max_spec()):
            return _with_op_ladder(big, (low, high))
    first, second = plans[ops[0]], plans[ops[1]]
    for name in set(first.ladders) & set(second.ladders):
        if first.ladders[name] != second.ladders[name]:
            raise _refuse(space, slot, "op", f"its operators {ops[0]} and {ops[1]} give the "
                          f"{name} knob different levels")
    return _with_op_ladder(second, (ops[0], ops[1]), (first, second))


def _name_blocks(space: Space, slot: Slot, view: Slot, plan: SlotPlan,
                 matcher: CandidateMatcher) -> SlotPlan:
    """`plan` (of one operator, or an op switch) with the candidate name of each combination of
    its ladders' levels.

    Raises:
        NasInputError: a combination is no candidate (the candidates are not a product).
    """
    if plan.branches:
        branches = tuple(_name_blocks(space, slot, view, b, matcher) for b in plan.branches)
        return dataclasses.replace(plan, branches=branches)
    knobs = matcher.knobs
    names = tuple(n for n in LADDER_ORDER if n in plan.ladders and set(LADDER_KNOBS[n]) & knobs)
    blocks = {}
    for combo in itertools.product(*(range(plan.ladders[n].n) for n in names)):
        values = plan.level_values(dict(zip(names, combo)))
        name = matcher.name(values, view.spec(values))
        if name is None:
            shown = {k: values[k] for k in sorted(knobs & set(values))}
            raise _refuse(space, slot, "block", "candidate blocks are not a product of nested "
                          f"choices: no candidate is {shown}")
        blocks[combo] = name
    return dataclasses.replace(plan, block_ladders=names, block_names=blocks)


def _plan_view(space: Space, slot: Slot, view: Slot) -> SlotPlan:
    """The plan of a slot from its candidate view (the slot itself when it has none)."""
    ch = view.choices
    if len(ch.get("act", ())) > 1:
        raise _refuse(space, slot, "act", "its choices are not nested")
    listed = ch.get("op", (view.fixed["op"],))
    ops = [op for op in dict.fromkeys(listed) if op != "skip"]
    can_skip = "skip" in listed
    if can_skip and not slot.can_skip:
        if not slot.skip_projection:
            raise _refuse(space, slot, "op", "a skip that changes shape is a 1x1 conv, not nested")
        ops, can_skip = ["skip"] + ops, False     # skip projection | the operator: an op switch
    if len(ops) == 1:
        return _operator_plan(space, slot, view, ops[0], can_skip)
    if len(ops) > 2:
        raise _refuse(space, slot, "op", "a layer can choose between two operators (besides "
                      "an identity skip), not more")
    return _two_operators(space, slot, view, ops, can_skip)


def slot_plan(space: Space, slot: Slot) -> SlotPlan:
    """Returns the single-path plan of one slot.

    Raises:
        NasInputError: the slot searches a knob that cannot be nested (one line naming it).
    """
    view = candidate_view(slot)
    plan = _plan_view(space, slot, view)
    if not slot.candidates:
        return plan
    matcher = CandidateMatcher(slot)
    plan = _name_blocks(space, slot, view, plan, matcher)
    missing = [name for name in slot.candidates if name not in matcher.reached]
    if missing:
        raise _refuse(space, slot, "block", f"candidate {missing[0]!r} is no combination of "
                      "the nested choices of the others")
    return plan


#: space_plan's results by Space (a Space does not change once built).
_PLANS: "weakref.WeakKeyDictionary[Space, tuple[SlotPlan, ...]]" = weakref.WeakKeyDictionary()


def space_plan(space: Space) -> tuple[SlotPlan, ...]:
    """Returns the plan of every slot of a Space (checking that each can be nested; cached per
    Space object).

    Raises:
        NasInputError: a slot searches a knob single_path cannot nest.
    """
    plans = _PLANS.get(space)
    if plans is None:
        plans = _PLANS[space] = tuple(slot_plan(space, slot) for slot in space.slots)
    return plans


def levels_to_arch(space: Space, plans: Sequence[SlotPlan], levels: Mapping[str, Mapping[str, int]]
                   ) -> dict[str, Any]:
    """Returns the canonical Arch of one level per ladder of every slot.

    Args:
        space: the Space.
        plans: :func:`space_plan` of it.
        levels: {slot prefix: {ladder name: level}}.

    Returns:
        A valid canonical Arch.
    """
    arch = {}
    for plan in plans:
        values = plan.level_values(levels.get(plan.prefix, {}))
        for label, _ in space.decisions():
            if label.startswith(plan.prefix + "_"):
                arch[label] = values[label[len(plan.prefix) + 1:]]
    return space.validate(arch)


def max_arch(space: Space, plans: Sequence[SlotPlan]) -> dict[str, Any]:
    """Returns the largest Arch the single-path superkernel contains (every ladder at its top)."""
    return levels_to_arch(space, plans, {p.prefix: {n: l.n - 1 for n, l in p.ladders.items()}
                                         for p in plans})
