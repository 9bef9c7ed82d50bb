"""derive and export: the gates of a trained single-path network -> an Arch and its weights.

:func:`derive_levels` reads every slot's hard gates (from params alone); :func:`derive_arch`
turns them into a canonical Arch of the Space. :func:`export_child` cuts that Arch's variables
out of the superkernel in the params layout of :func:`nas.model.build_model`'s Network: the
first m channels, the centre k x k taps, the first r singular directions, the SE and expand
convs only when chosen, and BatchNorm statistics of the kept channels (single-path spaces
have float activations: no activation quantizers; the child's weight steps are 0, i.e. minmax,
which is what the superkernel's nested quantizer computes). A full-rank child of a factorized superkernel gets the product of its factors (the
superkernel computes the same product). The child network built from these weights computes
what the superkernel network computes with the same gates.

Example:
    >>> arch, child_vars = export_child(space, variables)
    >>> build_model(space, arch).apply(child_vars, x)      # == SinglePathNetwork(space).apply(variables, x)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from nas.model import add_missing_quant_steps, build_model
from nas.single_path.gates import THRESHOLD_SCALE, hard_levels, outer_log_rms, slot_gates
from nas.single_path.plan import SlotPlan, levels_to_arch, space_plan
from nas.single_path.superblock import full_kernel
from nas.space import Arch, Space

Levels = dict[str, dict[str, int]]


def derive_levels(space: Space, params: Mapping[str, Any]) -> Levels:
    """Returns {slot prefix: {ladder: chosen level}} from the hard gates of the params.

    Args:
        space: the Space.
        params: the single-path network's params.
    """
    out = {}
    for plan in space_plan(space):
        gates = jax.device_get(slot_gates(plan, params[plan.prefix]))
        out[plan.prefix] = hard_levels(plan, gates)
    return out


def derive_arch(space: Space, params: Mapping[str, Any]) -> Arch:
    """Returns the canonical Arch the thresholds of a single-path network select."""
    return levels_to_arch(space, space_plan(space), derive_levels(space, params))


def gate_values(space: Space, params: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Returns the hard gates {slot: {ladder: [0/1, ...]}} (for logs and best_arch.json)."""
    out = {}
    for plan in space_plan(space):
        gates = jax.device_get(slot_gates(plan, params[plan.prefix]))
        out[plan.prefix] = {k: [float(x) for x in np.asarray(v)] for k, v in gates.items()}
    return out


def _slice_pointwise(p, child_rank: int | None, rows: int | None, cols: int | None,
                     row_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Cuts one 1x1 conv: rows = kept input channels, cols = kept output channels."""
    r_sl = slice(None) if rows is None else slice(0, rows)
    c_sl = slice(None) if cols is None else slice(0, cols)
    if "kernel" in p:
        return {"kernel": p["kernel"][:, :, r_sl, c_sl]}
    u, v = p["kernel_u"], p["kernel_v"]
    if child_rank is None:
        um = u if row_mask is None else u * row_mask[:, None]
        return {"kernel": full_kernel(um, v)[:, :, r_sl, c_sl]}
    return {"kernel_u": u[:, :, r_sl, :child_rank], "kernel_v": v[:, :, :child_rank, c_sl]}


def _slice_bn(p: Mapping[str, Any], n: int | None) -> dict[str, Any]:
    sl = slice(None) if n is None else slice(0, n)
    return {k: v[sl] for k, v in p.items()}


def _child_block(plan: SlotPlan, levels: Mapping[str, int], params, stats) -> tuple[dict, dict]:
    spec = plan.spec(levels)
    if spec.op == "skip":
        return {}, {}
    m = spec.mid_channels
    k_sup = plan.max_kernel
    lo = (k_sup - spec.kernel) // 2
    out_p: dict[str, Any] = {}
    out_s: dict[str, Any] = {}
    mid_mask = np.zeros((plan.max_mid,), np.float32)
    mid_mask[:m] = 1.0

    if spec.op == "mbconv":
        out_p["expand"] = _slice_pointwise(params["expand"], spec.rank_channels(spec.cin, m), None, m)
        out_p["expand_bn"] = _slice_bn(params["expand_bn"], m)
        out_s["expand_bn"] = _slice_bn(stats["expand_bn"], m)
    out_p["dw"] = {"kernel": params["dw"]["kernel"][lo:lo + spec.kernel, lo:lo + spec.kernel, :, :m]}
    out_p["dw_bn"] = _slice_bn(params["dw_bn"], m)
    out_s["dw_bn"] = _slice_bn(stats["dw_bn"], m)
    if spec.se_channels:
        se = params["se"]
        out_p["se"] = {"reduce": {"kernel": se["reduce"]["kernel"][:, :, :m, :],
                                  "bias": se["reduce"]["bias"]},
                       "expand": {"kernel": se["expand"]["kernel"][..., :m],
                                  "bias": se["expand"]["bias"][:m]}}
    out_p["project"] = _slice_pointwise(params["project"], spec.rank_channels(m, spec.cout), m, None,
                                        mid_mask)
    out_p["project_bn"] = dict(params["project_bn"])
    out_s["project_bn"] = dict(stats["project_bn"])
    return out_p, out_s


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
    levels = derive_levels(space, params) if levels is None else levels
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


def force_levels(space: Space, params: Mapping[str, Any], levels: Levels) -> dict[str, Any]:
    """Returns params whose thresholds select the given levels (weights unchanged).

    Each threshold is set one log-RMS unit beyond its gate's current norm, so the gates of
    `levels` are on and the next one off. Used to fix hard decisions (tests, fine-tuning a
    chosen child inside the superkernel).

    Args:
        space: the Space.
        params: a single-path network's params.
        levels: {slot prefix: {ladder: level}} (missing ladders: top level).
    """
    out = jax.tree_util.tree_map(lambda a: a, dict(params))
    for plan in space_plan(space):
        slot = dict(out[plan.prefix])
        norms = outer_log_rms(plan, slot)
        for name, ladder in plan.ladders.items():
            level = levels.get(plan.prefix, {}).get(name, ladder.n - 1)
            on = np.arange(ladder.gates) < level
            slot[f"t_{name}"] = (np.asarray(norms[name]) + np.where(on, -1.0, 1.0)) / THRESHOLD_SCALE
        out[plan.prefix] = slot
    return out
