"""Single-Path NAS (Stamoulis et al. 2019) as a search strategy: ``strategy: single_path``.

One superkernel network (:mod:`nas.single_path`) is trained once; its weights and its
thresholds are learned together on the training split with::

    loss = CE + lam * log(LAT)                          (no target)
    loss = CE + lam * max(0, log(LAT / (T * (1 - margin))))     (objective.target T set)

where LAT is the cost of the gates' Arch computed from the LatencyTable (or from a per-layer
metric such as BOPs) as a function of the relaxed indicators (:mod:`nas.single_path.cost`).
Without ``params.cost`` the cost is ``objective.metric``'s own (:data:`METRIC_COST`), and T is
the target converted to the cost's unit (e.g. size_bytes -> size_bits: x 8).
With a target, the penalty vanishes once the selected Arch is ``margin`` below T, so the search
spends the rest of its budget on accuracy, as the paper's tuned lambda does. The weights train
with the config's optimizer; the thresholds stay fixed for ``warmup_epochs`` (meanwhile each
op switch's op gate is drawn at random per step, so both of its operators train:
:mod:`nas.single_path.op_switch`) and then follow their own rule
(:mod:`nas.single_path.threshold_opt`: momentum over the RMS of all threshold gradients), so
gates flip one after another, the cheapest trade first, instead of all at once.

This module holds the strategy: its parameters, its loss and :func:`single_path_strategy`, the
one-shot protocol (:mod:`nas.strategies.protocol`) whose architecture parameters are the
thresholds ``t_<ladder>`` of every slot and whose weights are everything else. The run itself
(config -> superkernel training -> derived Arch and outputs) is
:mod:`nas.strategies.single_path_run`.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import pydantic

from nas.blocks.slicing import get_path, set_path
from nas.errors import NasInputError
from nas.single_path.export import derive_arch, network_gate_values
from nas.single_path.gates import slot_gates
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.op_switch import sample_op_gates
from nas.single_path.plan import space_plan
from nas.single_path.threshold_opt import in_warmup, scale_by_shared_rms
from nas.strategies.protocol import OneShot, OneShotState, one_hot_distribution
from nas.training.trainer import TrainConfig, batch_metrics, cross_entropy, make_optimizer


class SinglePathParams(pydantic.BaseModel):
    """``strategy.params`` of single_path.

    Attributes:
        lam: weight of the log-cost term (0 = accuracy only).
        cost: 'latency' (the config's latency_table) or a per-layer metric of nas.metrics
            ('macs', 'bops', 'size_bits', 'energy_pj', 'params').
        margin: with a target T, the penalty stops at T * (1 - margin).
        warmup_epochs: epochs during which only the weights train (thresholds fixed, every
            nested gate on), so the gates then see a trained network's accuracy (fractional
            allowed). An op switch's op gate (two operators that do not nest, e.g. mbconv vs
            fused_mbconv) is instead drawn at random on each warm-up step (Bernoulli 0.5 per
            slot, from the step's key: deterministic and resumable), so both operators' branches
            train before its threshold compares them (:mod:`nas.single_path.op_switch`).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    lam: float = pydantic.Field(1.0, ge=0)
    cost: Literal["latency", "macs", "bops", "size_bits", "energy_pj", "params"] = "latency"
    margin: float = pydantic.Field(0.05, ge=0, lt=1)
    warmup_epochs: float = pydantic.Field(0.0, ge=0)


#: objective.metric -> (the single_path ``cost`` of the same quantity, cost units per metric unit)
METRIC_COST = {"latency_ms": ("latency", 1.0), "params": ("params", 1.0), "macs": ("macs", 1.0),
               "bops": ("bops", 1.0), "size_bytes": ("size_bits", 8.0),
               "energy_mj": ("energy_pj", 1e9)}


def effective_params(params: SinglePathParams, metric: str) -> SinglePathParams:
    """Returns the params a run uses: without an explicit ``cost``, the per-layer cost of
    ``objective.metric`` (what :func:`nas.strategies.oneshot_driver.run_oneshot_config` sets)."""
    if "cost" in params.model_fields_set or metric not in METRIC_COST:
        return params
    return params.model_copy(update={"cost": METRIC_COST[metric][0]})


def target_in_cost_units(params: SinglePathParams, objective: Any) -> float | None:
    """Returns ``objective.target`` in the unit of ``params.cost`` (None without a target).

    A target is of ``objective.metric``; :func:`check_settings` has made sure the cost measures
    the same quantity (e.g. metric size_bytes, cost size_bits: the target times 8).
    """
    if objective.target is None:
        return None
    return float(objective.target) * METRIC_COST[objective.metric][1]


def check_settings(params: SinglePathParams, objective: Any, has_table: bool, epochs: float,
                   source: str | None = None) -> None:
    """Checks the settings a single_path run would refuse, before any data is read (``nas
    search --check`` and the run itself call this one function).

    Args:
        params: the parsed ``strategy.params``.
        objective: the config's objective section (``metric``, ``target``).
        has_table: whether the config names a latency table.
        epochs: ``train.epochs``.
        source: the config file, named in errors.

    Raises:
        NasInputError: the first bad setting (one line naming the field and the fix).
    """
    params = effective_params(params, objective.metric)
    if objective.target is not None:
        cost, _ = METRIC_COST.get(objective.metric, (None, None))
        if cost != params.cost:
            fix = (f"set strategy.params.cost: {cost}" if cost else
                   f"set objective.metric to one of {list(METRIC_COST)}")
            raise NasInputError(f"single_path with cost {params.cost} cannot aim at a target of "
                                f"metric {objective.metric!r}; {fix} (or remove objective.target)",
                                source, "objective.metric")
    if params.cost == "latency" and not has_table:
        raise NasInputError("cost latency needs a latency table; set latency_table: PATH or "
                            "strategy.params.cost: bops", source, "latency_table")
    if params.warmup_epochs >= epochs:
        raise NasInputError(f"warmup_epochs {params.warmup_epochs} leaves no epoch to train the "
                            f"thresholds; use fewer than train.epochs ({epochs})",
                            source, "strategy.params.warmup_epochs")


def penalty(cost: jax.Array, lam: Any, cap: Any | None) -> jax.Array:
    """Returns the cost term of the loss (see the module docstring).

    Args:
        cost: the relaxed cost.
        lam: the weight (a traced scalar, so runs with other weights share one compiled step).
        cap: where the penalty stops, T * (1 - margin) in the cost's unit (a traced scalar,
            :func:`loss_consts`), or None (no target: ``lam * log(cost)``).
    """
    if cap is None:
        return lam * jnp.log(cost)
    return lam * jax.nn.relu(jnp.log(cost / cap))


def loss_consts(params: SinglePathParams, target: float | None) -> dict[str, jax.Array]:
    """Returns the numbers of the loss that a run's settings choose, as the arrays the
    compiled step takes (``consts`` of :func:`make_loss`), so runs that differ only in them
    share one compiled program.

    Args:
        params: the strategy's parameters (``lam``, ``margin``).
        target: T in the cost's unit, or None.

    Returns:
        ``{"lam": lam}``, with a target also ``{"cost_cap": T * (1 - margin)}`` (float32
        scalars; the product taken in Python, as when it was a constant of the program).
    """
    out = {"lam": jnp.float32(params.lam)}
    if target is not None:
        out["cost_cap"] = jnp.float32(target * (1.0 - params.margin))
    return out


#: The stream of the step's key that the warm-up's op gates are drawn from (the dropout masks
#: use the key itself).
OP_DRAW_STREAM = 0x0b5e


def make_loss(net: Any, space: Any, costs: Any, params: SinglePathParams, target: float | None,
              label_smoothing: float = 0.0):
    """Returns ``loss_fn(params, batch_stats, batch, rng, consts)`` of the single-path search.

    ``consts["lam"]`` is the cost weight and, with a `target`, ``consts["cost_cap"]`` where the
    penalty stops (:func:`loss_consts`: array arguments of the compiled step). The optional
    ``consts["op_warmup"]`` (a traced boolean) draws every op switch's op gate at random from
    ``fold_in(rng, OP_DRAW_STREAM)`` instead of taking its threshold's
    (:func:`nas.single_path.op_switch.sample_op_gates`; the warm-up of the search).

    Metrics summed per epoch: loss_sum (of the cross-entropy), correct, count, cost_sum.
    """
    plans = space_plan(space)
    has_switch = any(plan.branches for plan in plans)

    def loss_fn(p, batch_stats, batch, rng, consts=None):
        gates = {plan.prefix: slot_gates(plan, p["model"][plan.prefix],
                                         batch_stats.get(plan.prefix, {})) for plan in plans}
        if has_switch and consts is not None and "op_warmup" in consts:
            gates = sample_op_gates(plans, gates, jax.random.fold_in(rng, OP_DRAW_STREAM),
                                    consts["op_warmup"])
        logits, updates = net.apply({"params": p["model"], "batch_stats": batch_stats}, batch["x"],
                                    train=True, gates=gates, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
        ce = cross_entropy(logits, batch["y"], batch["mask"], label_smoothing)
        cost = costs.expected([gates[plan.prefix] for plan in plans])
        loss = ce + penalty(cost, consts["lam"], None if target is None else consts["cost_cap"])
        return loss, (updates.get("batch_stats", batch_stats),
                      batch_metrics(logits, batch["y"], batch["mask"], ce))

    return loss_fn


def decision_metrics(space: Any, costs: Any, model_params: Mapping[str, Any],
                     stats: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Returns the per-epoch log values: the cost and every decision of the gates' Arch.

    Decisions are logged as numbers: kernel, expand, width, bits_w, bits_a, rank (1 = full), se
    and op (0 = the lower level of the op or keep ladder: dwsep / skip; 1 = the layer's operator;
    in an op switch 1 / 2 = its first / second operator); a candidate block by its index in the
    space's list of candidates.

    Args:
        space: the Space.
        costs: the relaxed cost model.
        model_params: the superkernel network's params.
        stats: its batch_stats (needed where a slot searches bits_a).
    """
    gates = network_gate_values(space, model_params, stats)
    out = {"cost": float(costs.expected([gates[plan.prefix] for plan in space_plan(space)]))}
    switches = {plan.prefix + "_op": plan.ladders["op"].values
                for plan in space_plan(space) if plan.branches}
    for label, value in derive_arch(space, model_params, stats).items():
        if label.endswith("_block"):
            value = space.choices(label).index(value)
        elif isinstance(value, str) and label in switches and value != "skip":
            value = 1.0 + switches[label].index(value)
        elif isinstance(value, str):
            value = 0.0 if value in ("dwsep", "skip") else 1.0
        out[f"decision/{label}"] = 1.0 if value is None else float(value)
    return out


def split_thresholds(space: Any, model_params: Mapping[str, Any]) -> tuple[dict, dict]:
    """Splits superkernel params into (weights, thresholds).

    Args:
        space: the Space.
        model_params: the single-path network's params.

    Returns:
        ``(weights, {slot prefix: {t_<ladder>: threshold}})`` (an op switch's branch
        thresholds nested under the branch's operator); :func:`merge_thresholds` undoes it.
    """
    weights, thresholds = dict(model_params), {}
    for plan in space_plan(space):
        slot = jax.tree_util.tree_map(lambda a: a, dict(model_params[plan.prefix]))
        thresholds[plan.prefix] = {}
        for path in plan.threshold_paths():
            *parents, leaf = path.split("/")
            parent = get_path(slot, "/".join(parents)) if parents else slot
            set_path(thresholds[plan.prefix], path, parent.pop(leaf))
        weights[plan.prefix] = slot
    return weights, thresholds


def merge_thresholds(weights: Mapping[str, Any], thresholds: Mapping[str, Any]) -> dict:
    """Returns the superkernel params of (weights, thresholds) (see :func:`split_thresholds`)."""
    def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict:
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(a[key], value) if isinstance(value, Mapping) else value
        return out

    out = dict(weights)
    for prefix, ts in thresholds.items():
        out[prefix] = merge(weights[prefix], ts)
    return out


def single_path_strategy(space: Any, params: SinglePathParams, costs: Any,
                         target: float | None = None, train: TrainConfig | None = None, *,
                         net: SinglePathNetwork | None = None, warmup_steps: int = 0) -> OneShot:
    """Returns Single-Path NAS as a one-shot protocol.

    Both steps descend the same loss (``CE + penalty(cost)``, :func:`make_loss`): the weight
    step on the superkernel's weights (the config's optimizer), the arch step on the thresholds
    (:func:`nas.single_path.threshold_opt.scale_by_shared_rms`, frozen for ``warmup_steps``
    arch steps); both are scaled by the scheduled learning rate ``lr``. While the thresholds
    are frozen (the threshold rule's step count in ``state.arch_opt``, a traced value), each op
    switch's op gate is drawn at random per step (:func:`make_loss`, ``op_warmup``); with
    ``warmup_steps`` 0 or no op switch in the space nothing is drawn.

    The loss's weight and target (:func:`loss_consts`) are the protocol's ``consts``: the steps
    take them as an optional last argument (default: these values), so the one-shot driver
    passes them to its compiled step and runs that differ only in ``lam`` or the target share
    one compiled program.

    Args:
        space: the Space (every slot nestable).
        params: the strategy's parameters.
        costs: the relaxed cost model (:class:`nas.single_path.cost.SlotCosts`).
        target: T in the cost's unit, or None.
        train: the trainer settings (optimizer, label smoothing, depthwise impl).
        net: a prebuilt network (default ``SinglePathNetwork(space)``).
        warmup_steps: arch steps during which the thresholds do not move.

    Returns:
        The :class:`~nas.strategies.protocol.OneShot`.
    """
    train = train or TrainConfig()
    net = net or SinglePathNetwork(space, depthwise_impl=train.depthwise_impl)
    loss_fn = make_loss(net, space, costs, params, target, train.label_smoothing)
    tx, arch_tx = make_optimizer(train), scale_by_shared_rms(warmup_steps)
    defaults = loss_consts(params, target)

    def consts_of(state, consts):
        consts = defaults if consts is None else consts
        if warmup_steps <= 0:
            return dict(consts)
        return {**consts, "op_warmup": in_warmup(state.arch_opt, warmup_steps)}

    def loss_of(weights, thresholds, stats, batch, rng, consts):
        return loss_fn({"model": merge_thresholds(weights, thresholds)}, stats, batch, rng, consts)

    def init(rng):
        variables = init_single_path(net, rng)
        weights, thresholds = split_thresholds(space, variables["params"])
        return OneShotState(weights, thresholds, tx.init(weights), arch_tx.init(thresholds),
                            variables["batch_stats"])

    def descend(tree, grads, opt_state, transform, lr):
        updates, opt_state = transform.update(grads, opt_state, tree)
        return jax.tree_util.tree_map(lambda p, u: p - lr * u, tree, updates), opt_state

    def weight_step(state, batch, rng, lr, epoch, consts=None):
        del epoch
        (loss, (stats, m)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.weights, state.arch, state.stats, batch, rng, consts_of(state, consts))
        weights, opt = descend(state.weights, grads, state.weight_opt, tx, lr)
        return state._replace(weights=weights, weight_opt=opt, stats=stats), {"loss": loss, **m}

    def arch_step(state, batch, rng, lr, epoch, consts=None):
        del epoch
        (loss, _), grads = jax.value_and_grad(loss_of, argnums=1, has_aux=True)(
            state.weights, state.arch, state.stats, batch, rng, consts_of(state, consts))
        thresholds, opt = descend(state.arch, grads, state.arch_opt, arch_tx, lr)
        return state._replace(arch=thresholds, arch_opt=opt), {"arch_loss": loss}

    def derive(state):
        return derive_arch(space, merge_thresholds(state.weights, state.arch), state.stats)

    return OneShot("single_path", init, weight_step, arch_step, derive,
                   lambda state: one_hot_distribution(space, derive(state)), defaults)
