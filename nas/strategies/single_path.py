"""Single-Path NAS (Stamoulis et al. 2019) as a search strategy: ``strategy: single_path``.

One superkernel network (:mod:`nas.single_path`) is trained once; its weights and its
thresholds are learned together on the training split with::

    loss = CE + lam * log(LAT)                          (no target)
    loss = CE + lam * max(0, log(LAT / (T * (1 - margin))))     (objective.target T set)

where LAT is the cost of the gates' Arch computed from the LatencyTable (or from a per-layer
metric such as BOPs) as a function of the relaxed indicators (:mod:`nas.single_path.cost`).
With a target, the penalty vanishes once the selected Arch is ``margin`` below T, so the search
spends the rest of its budget on accuracy, as the paper's tuned lambda does. The weights train
with the config's optimizer; the thresholds stay fixed for ``warmup_epochs`` and then follow their
own rule (:mod:`nas.single_path.threshold_opt`: momentum over the RMS of all threshold
gradients), so gates flip one after another, the cheapest trade first, instead of all at once.

This module holds the strategy (its parameters and loss, the registry's factory); the run
itself (config -> superkernel training -> derived Arch and outputs) is
:mod:`nas.strategies.single_path_run`.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import pydantic

from nas.single_path.export import derive_arch
from nas.single_path.gates import slot_gates
from nas.single_path.plan import space_plan
from nas.train import batch_metrics, cross_entropy


class SinglePathParams(pydantic.BaseModel):
    """``strategy.params`` of single_path.

    Attributes:
        lam: weight of the log-cost term (0 = accuracy only).
        cost: 'latency' (the config's latency_table) or a per-layer metric of nas.metrics
            ('macs', 'bops', 'size_bits', 'energy_pj', 'params').
        margin: with a target T, the penalty stops at T * (1 - margin).
        warmup_epochs: epochs during which only the weights train (thresholds fixed, every gate
            on), so the gates then see a trained network's accuracy (fractional allowed).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    lam: float = pydantic.Field(1.0, ge=0)
    cost: Literal["latency", "macs", "bops", "size_bits", "energy_pj", "params"] = "latency"
    margin: float = pydantic.Field(0.05, ge=0, lt=1)
    warmup_epochs: float = pydantic.Field(0.0, ge=0)


def penalty(cost: jax.Array, lam: Any, target: float | None, margin: float) -> jax.Array:
    """Returns the cost term of the loss (see the module docstring).

    Args:
        cost: the relaxed cost.
        lam: the weight (a traced scalar, so runs with other weights share one compiled step).
        target: T in the cost's unit, or None.
        margin: the penalty stops at T * (1 - margin).
    """
    if target is None:
        return lam * jnp.log(cost)
    return lam * jax.nn.relu(jnp.log(cost / (target * (1.0 - margin))))


def make_loss(net: Any, space: Any, costs: Any, params: SinglePathParams, target: float | None,
              label_smoothing: float = 0.0):
    """Returns ``loss_fn(params, batch_stats, batch, rng, consts)`` of the single-path search.

    ``consts["lam"]`` is the cost weight (an array argument of the compiled step).

    Metrics summed per epoch: loss_sum (of the cross-entropy), correct, count, cost_sum.
    """
    plans = space_plan(space)

    def loss_fn(p, batch_stats, batch, rng, consts=None):
        gates = {plan.prefix: slot_gates(plan, p["model"][plan.prefix]) for plan in plans}
        logits, updates = net.apply({"params": p["model"], "batch_stats": batch_stats}, batch["x"],
                                    train=True, gates=gates, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
        ce = cross_entropy(logits, batch["y"], batch["mask"], label_smoothing)
        cost = costs.expected([gates[plan.prefix] for plan in plans])
        loss = ce + penalty(cost, consts["lam"], target, params.margin)
        return loss, (updates.get("batch_stats", batch_stats),
                      batch_metrics(logits, batch["y"], batch["mask"], ce))

    return loss_fn


def decision_metrics(space: Any, costs: Any, model_params: Mapping[str, Any]) -> dict[str, float]:
    """Returns the per-epoch log values: the cost and every decision of the gates' Arch.

    Decisions are logged as numbers: kernel, expand, width, bits_w, rank (1 = full), se and
    op (1 = mbconv / the layer kept, 0 = dwsep / skip).
    """
    gates = [slot_gates(plan, model_params[plan.prefix]) for plan in space_plan(space)]
    out = {"cost": float(costs.expected(gates))}
    for label, value in derive_arch(space, model_params).items():
        if isinstance(value, str):
            value = {"mbconv": 1.0, "dwsep": 0.0, "skip": 0.0}[value]
        out[f"decision/{label}"] = 1.0 if value is None else float(value)
    return out


