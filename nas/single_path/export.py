"""derive and export: the gates of a trained single-path network -> an Arch and its weights.

:func:`derive_levels` reads every slot's hard gates (from the network's variables alone: its
params, and for a bits_a ladder the running activation residuals in its batch_stats);
:func:`derive_arch` turns them into a canonical Arch of the Space. :func:`export_child` cuts
that Arch's variables out of the superkernel in the params layout of
:func:`nas.model.build_model`'s Network, read from the child's op program
(:func:`nas.blocks.slicing.slice_block_variables`): the first m channels, the centre k x k
taps of every kxk conv, the first r singular directions, the convs of a switched segment (SE,
the expand of an MBConv vs DWSep) only when chosen, the chosen branch's convs of an op switch
(:mod:`nas.single_path.op_switch`: a skip that changes shape is its own branch), a grouped
child's diagonal blocks with its shuffle's permutation (:mod:`nas.single_path.groups`),
BatchNorm statistics of the kept channels,
and the running ranges of the activation quantizers the child has (the child's weight and
activation steps are 0, i.e. minmax, which is what the superkernel's nested quantizers compute;
a child built at any searched bits_a takes the shared running range ``amax``). A full-rank
child of a factorized superkernel gets the product of its factors (the superkernel computes the
same product). The child network built from these weights computes what the superkernel network
computes with the same gates (at inference, up to the int8 bias rounding of
:mod:`nas.single_path.superblock`).

Example:
    >>> arch, child_vars = export_child(space, variables)
    >>> build_model(space, arch).apply(child_vars, x)      # == SinglePathNetwork(space).apply(variables, x)
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping

import jax
import numpy as np

from nas.blocks.slicing import set_path, slice_block_variables
from nas.model import add_missing_quant_steps, build_model
from nas.single_path.gates import THRESHOLD_SCALE, hard_levels, outer_log_rms, slot_gates
from nas.single_path.groups import group_level, grouped_child_variables
from nas.single_path.op_switch import OP_LADDER, ladder_of, threshold_path
from nas.single_path.plan import SlotPlan, levels_to_arch, space_plan
from nas.space import Arch, Space

Levels = dict[str, dict[str, int]]


def slot_stats(stats: Mapping[str, Any] | None, prefix: str) -> Mapping[str, Any] | None:
    """Returns one slot's batch_stats out of a network's (None when `stats` is None)."""
    return None if stats is None else stats.get(prefix, {})


#: One compiled gate function per Space (its plans do not change once built).
_GATE_FNS: "weakref.WeakKeyDictionary[Space, Any]" = weakref.WeakKeyDictionary()


def network_gate_values(space: Space, params: Mapping[str, Any],
                        stats: Mapping[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Returns every slot's relaxed gates {slot prefix: {gate key: values}} as host arrays,
    computed by one compiled function per Space (op by op, the gates' norms cost hundreds of
    small compilations and dispatches per call).

    Args:
        space: the Space.
        params: the single-path network's params.
        stats: its batch_stats (needed where a slot searches bits_a).
    """
    fn = _GATE_FNS.get(space)
    if fn is None:
        plans = space_plan(space)

        def gates_of(slot_params, slot_batch_stats):
            return {plan.prefix: slot_gates(plan, slot_params[plan.prefix],
                                            slot_stats(slot_batch_stats, plan.prefix))
                    for plan in plans}

        fn = _GATE_FNS[space] = jax.jit(gates_of)
    prefixes = [plan.prefix for plan in space_plan(space)]
    slot_params = {p: params[p] for p in prefixes}
    slot_batch_stats = None if stats is None else {p: stats.get(p, {}) for p in prefixes}
    return jax.device_get(fn(slot_params, slot_batch_stats))


def derive_levels(space: Space, params: Mapping[str, Any],
                  stats: Mapping[str, Any] | None = None) -> Levels:
    """Returns {slot prefix: {ladder: chosen level}} from the hard gates.

    Args:
        space: the Space.
        params: the single-path network's params.
        stats: its batch_stats (needed where a slot searches bits_a).

    Returns:
        The levels.
    """
    gates = network_gate_values(space, params, stats)
    return {plan.prefix: hard_levels(plan, gates[plan.prefix]) for plan in space_plan(space)}


def derive_arch(space: Space, params: Mapping[str, Any],
                stats: Mapping[str, Any] | None = None) -> Arch:
    """Returns the canonical Arch the thresholds of a single-path network select.

    Args:
        space: the Space.
        params: the network's params.
        stats: its batch_stats (needed where a slot searches bits_a).

    Returns:
        The Arch.
    """
    return levels_to_arch(space, space_plan(space), derive_levels(space, params, stats))


def gate_values(space: Space, params: Mapping[str, Any], stats: Mapping[str, Any] | None = None
                ) -> dict[str, dict[str, list[float]]]:
    """Returns the hard gates {slot: {ladder: [0/1, ...]}} (for logs and best_arch.json).

    Args:
        space: the Space.
        params: the network's params.
        stats: its batch_stats (needed where a slot searches bits_a).
    """
    return {prefix: {k: [float(x) for x in np.asarray(v)] for k, v in gates.items()}
            for prefix, gates in network_gate_values(space, params, stats).items()}


def _child_block(plan: SlotPlan, levels: Mapping[str, int], params, stats) -> tuple[dict, dict]:
    """The chosen child's (params, batch_stats) cut from the slot's superkernel (from the
    chosen branch's variables in an op switch; a grouped child's with its shuffle's
    permutation, :mod:`nas.single_path.groups`)."""
    spec = plan.spec(levels)
    if spec.op == "skip":
        return {}, {}
    if plan.branches:
        plan = plan.branches[levels.get(OP_LADDER, 0)]
        params, stats = params[plan.base_op], stats.get(plan.base_op, {})
    if spec.groups > 1 and group_level(plan) is not None:
        return grouped_child_variables(plan, spec, params, stats)
    return slice_block_variables(spec, params, stats)


def export_child(space: Space, variables: Mapping[str, Any], levels: Levels | None = None
                 ) -> tuple[Arch, dict[str, Any]]:
    """Cuts the derived Arch's variables out of a single-path network's variables.

    Args:
        space: the Space.
        variables: {"params", "batch_stats"} of a :class:`SinglePathNetwork`.
        levels: the levels to cut (default: :func:`derive_levels` of the params).

    Returns:
        (arch, {"params", "batch_stats"}) for ``nas.model.build_model(space, arch)``.
    """
    params, stats = variables["params"], variables.get("batch_stats", {})
    levels = derive_levels(space, params, stats) if levels is None else levels
    plans = space_plan(space)
    arch = levels_to_arch(space, plans, levels)
    child_p = {"stem": params["stem"], "head": params["head"]}
    child_s = {k: stats[k] for k in ("stem", "head") if k in stats}
    for plan in plans:
        p, s = _child_block(plan, levels[plan.prefix], params[plan.prefix],
                            stats.get(plan.prefix, {}))
        if p:
            child_p[plan.prefix] = p
        if s:
            child_s[plan.prefix] = s
    child = {"params": child_p, "batch_stats": child_s}
    shape = (1, *space.resolution, space.in_channels)
    return arch, add_missing_quant_steps(build_model(space, arch), child, shape)


def force_levels(space: Space, params: Mapping[str, Any], levels: Levels,
                 stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Returns params whose thresholds select the given levels (weights unchanged).

    Each threshold is set one log-RMS unit beyond its gate's current norm, so the gates of
    `levels` are on and the next one off. Used to fix hard decisions (tests, fine-tuning a
    chosen child inside the superkernel).

    Args:
        space: the Space.
        params: a single-path network's params.
        levels: {slot prefix: {ladder: level}} (missing ladders: top level).
        stats: the network's batch_stats (needed where a slot searches bits_a: its gates' norms
            are there; the thresholds hold only while those statistics do not change).

    Returns:
        The params with the thresholds set.
    """
    out = jax.tree_util.tree_map(lambda a: a, dict(params))
    for plan in space_plan(space):
        slot = jax.tree_util.tree_map(lambda a: a, dict(out[plan.prefix]))
        norms = outer_log_rms(plan, slot, slot_stats(stats, plan.prefix))
        for key, norm in norms.items():
            name = ladder_of(key)
            level = levels.get(plan.prefix, {}).get(name, plan.ladders[name].n - 1)
            on = np.arange(np.shape(norm)[0]) < level
            set_path(slot, threshold_path(key),
                     (np.asarray(norm) + np.where(on, -1.0, 1.0)) / THRESHOLD_SCALE)
        out[plan.prefix] = slot
    return out
