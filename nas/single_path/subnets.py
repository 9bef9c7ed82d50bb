"""Sub-networks of the single-path superkernel: one level per ladder per slot, as hard gates.

A sub-network of a :class:`~nas.single_path.network.SinglePathNetwork` is one level of every
ladder of every slot (:mod:`nas.single_path.plan`); its *hard gates* (level l of a ladder of n
levels: the first l of its n - 1 gates on, the others off) passed to the network's ``gates``
argument make the superkernel compute exactly that child (:mod:`nas.single_path.indicators`),
whatever its thresholds say. Gates are arrays, so one compiled program serves every
sub-network: this is how the uniform-sampling supernet (``strategy: spos``) trains them and how
sub-networks are scored (:mod:`nas.single_path.scoring`).

Gate trees are ``{slot prefix: {gate key: [gates]}}`` (an op switch's keys: ``op`` and
``<operator>/<ladder>``, :mod:`nas.single_path.op_switch`); level dicts are
``{slot prefix: {ladder: level}}`` as :func:`nas.single_path.plan.levels_to_arch` takes them.

Example:
    >>> plans = space_plan(space)
    >>> gates = network_gates(plans, arch_levels(space, plans, arch))
    >>> logits = net.apply(variables, x, gates=gates)     # == build_model(space, arch) child
    >>> gates = sample_gates(plans, jax.random.key(0))    # a uniform draw (traceable)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from nas.blocks.program import program
from nas.single_path.gates import hard_levels
from nas.single_path.op_switch import OP_LADDER, branch_key
from nas.single_path.plan import SlotPlan
from nas.space import Space
from nas.spec import BlockSpec, op_traits

Levels = dict[str, dict[str, int]]


def ladder_gates(n_levels: int, level: Any) -> jax.Array:
    """Returns the [n_levels - 1] hard gates of one ladder at `level` (an int or a traced scalar).

    Level l turns on the first l gates: ``[1] * l + [0] * (n - 1 - l)``.
    """
    return (jnp.arange(n_levels - 1) < level).astype(jnp.float32)


def slot_level_gates(plan: SlotPlan, levels: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Returns a slot's hard gates {gate key: [gates]} for one level per ladder.

    Args:
        plan: the slot's plan.
        levels: {ladder: level} (ints or traced scalars); a missing ladder is at its top level.
            An op switch takes one level per ladder name for both branches (each reads the
            ladders it has).

    Returns:
        The gates :class:`~nas.single_path.superblock.SuperBlock` takes.
    """
    if plan.branches:
        out = {OP_LADDER: ladder_gates(2, levels.get(OP_LADDER, 1))}
        for branch in plan.branches:
            for name, gates in slot_level_gates(branch, levels).items():
                out[branch_key(branch.base_op, name)] = gates
        return out
    return {name: ladder_gates(ladder.n, levels.get(name, ladder.n - 1))
            for name, ladder in plan.ladders.items()}


def network_gates(plans: Sequence[SlotPlan], levels: Mapping[str, Mapping[str, Any]]
                  ) -> dict[str, dict[str, jax.Array]]:
    """Returns the network's hard gates {slot prefix: {gate key: [gates]}} of a level dict.

    Args:
        plans: :func:`~nas.single_path.plan.space_plan` of the space.
        levels: {slot prefix: {ladder: level}} (missing slots or ladders: top level).
    """
    return {plan.prefix: slot_level_gates(plan, levels.get(plan.prefix, {})) for plan in plans}


def top_levels(plans: Sequence[SlotPlan]) -> Levels:
    """Returns the levels of the largest sub-network (every ladder at its top)."""
    return {p.prefix: {name: ladder.n - 1 for name, ladder in p.ladders.items()} for p in plans}


def bottom_levels(plans: Sequence[SlotPlan]) -> Levels:
    """Returns the levels of the smallest sub-network (every ladder at level 0: skipped layers,
    smallest kernels, channels, ranks and bit-widths, no SE, the first operator)."""
    return {p.prefix: {name: 0 for name in p.ladders} for p in plans}


def sample_gates(plans: Sequence[SlotPlan], key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Draws one sub-network uniformly: every ladder's level independently and uniformly.

    Traceable (jit): one uniform number per ladder from `key`, level ``floor(u * n)``.

    Args:
        plans: the space's plans.
        key: a PRNG key.

    Returns:
        The sub-network's hard gates (as :func:`network_gates`).
    """
    total = sum(len(plan.ladders) for plan in plans)
    u = jax.random.uniform(key, (total,))
    out, i = {}, 0
    for plan in plans:
        levels = {}
        for name, ladder in plan.ladders.items():
            levels[name] = jnp.minimum(jnp.floor(u[i] * ladder.n), ladder.n - 1).astype(jnp.int32)
            i += 1
        out[plan.prefix] = slot_level_gates(plan, levels)
    return out


def gates_levels(plans: Sequence[SlotPlan], gates: Mapping[str, Mapping[str, Any]]) -> Levels:
    """Returns the levels {slot prefix: {ladder: level}} that hard gates select (for an op
    switch: the op level and the chosen branch's ladders)."""
    return {plan.prefix: hard_levels(plan, jax.device_get(gates[plan.prefix])) for plan in plans}


def _mid_level(plan: SlotPlan, values: Mapping[str, Any]) -> int:
    """The mid level of the (expand, width, groups) of `values`: the index of its channel
    count and groups (a grouped level repeats the channels of the one above it)."""
    slot = plan.slot
    m = BlockSpec(plan.base_op, slot.cin, slot.cout, 1, slot.in_hw, expand=values["expand"],
                  width=values["width"]).mid_channels
    return list(zip(plan.mids, plan.mid_groups)).index((m, values["groups"]))


def slot_levels(plan: SlotPlan, values: Mapping[str, Any]) -> dict[str, int]:
    """Returns the levels of a slot's knob values (the inverse of ``plan.level_values``).

    Two (expand, width) pairs with the same channel count are one mid level (the same
    network); a skipped layer's other ladders are at their top (their gates select nothing).

    Args:
        plan: the slot's plan.
        values: {knob: value} of every knob of the slot (``Slot.resolve``).

    Returns:
        {ladder: level}.

    Raises:
        ValueError: the values are not a sub-network of the superkernel (a knob value the plan
            has no level for).
    """
    top = {name: ladder.n - 1 for name, ladder in plan.ladders.items()}
    op = "skip" if values["op"] == "skip_proj" else values["op"]   # the op knob's value
    if op == "skip" and "keep" in plan.ladders:
        return {**top, "keep": 0}
    levels = {"keep": 1} if "keep" in plan.ladders else {}
    if "op" in plan.ladders:       # a skip that changes shape: an op switch's branch
        levels["op"] = plan.ladders["op"].values.index(op)
    if plan.branches:
        branch = plan.branches[levels["op"]]
        inner = slot_levels(branch, values)
        return {**top, **inner, "op": levels["op"]}
    if "mid" in plan.ladders and op_traits(values["op"]).bottleneck:
        levels["mid"] = _mid_level(plan, values)
    found = {"kernel": (plan.kernel_sizes, values["kernel"]), "se": (plan.se, bool(values["se"])),
             "rank": (plan.ranks, values["rank"]), "bits": (plan.bits, values["bits_w"]),
             "bits_a": (plan.bits_a, values["bits_a"])}
    for name, (options, value) in found.items():
        if name in plan.ladders:
            levels[name] = options.index(value)
    return {**top, **levels}


def arch_levels(space: Space, plans: Sequence[SlotPlan], arch: Mapping[str, Any]) -> Levels:
    """Returns the sub-network levels of an Arch of the space (the inverse of
    :func:`~nas.single_path.plan.levels_to_arch`), checked: each slot's sub-network runs the
    op program of the Arch's block.

    Args:
        space: the Space.
        plans: its plans.
        arch: an Arch of it (validated here).

    Returns:
        {slot prefix: {ladder: level}}.

    Raises:
        NasInputError: the Arch is not valid for the space.
        ValueError: a slot's Arch is not a sub-network of the superkernel.
    """
    arch = space.validate(arch)
    out: Levels = {}
    for plan in plans:
        slot = plan.slot
        decided = {label[len(slot.prefix) + 1:]: value for label, value in arch.items()
                   if label.startswith(slot.prefix + "_")}
        wanted = program(slot.spec(decided))
        try:
            levels = slot_levels(plan, slot.resolve(decided))
        except (ValueError, KeyError):
            levels = None
        if levels is None or program(plan.spec(levels)) != wanted:
            # knobs the direct reading does not know: the level combination that runs the
            # same program
            levels = next((dict(c) for c in plan.grid() if program(plan.spec(c)) == wanted), None)
        if levels is None:
            raise ValueError(f"{slot.prefix}: {decided} is not a sub-network of the superkernel")
        out[slot.prefix] = levels
    return out
