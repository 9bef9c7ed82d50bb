"""A supernet whose sub-networks rank: uniform single-path sampling with the sandwich rule and
in-place distillation over the single-path superkernel (``strategy: spos``).

The superkernel (:mod:`nas.single_path`) holds every Arch of a space as nested weights (kernel
rings, expanded channels, ranks, weight and activation bit-widths, skips, operators). Single-Path
NAS learns thresholds that pick one child; this strategy instead trains the weights so that
*every* sub-network is good enough to be ranked by its accuracy on the shared weights, which is
what scoring candidates on a supernet needs (``evaluation: {mode: supernet, supernet: WORKDIR}``,
:mod:`nas.weight_sharing`):

* **Uniform single-path sampling** (SPOS, Guo et al. 2020): a sub-network is one level per
  ladder per slot, drawn independently and uniformly (:func:`nas.single_path.subnets.sample_gates`),
  run as hard gates so the superkernel computes exactly that child.
* **Sandwich rule** (BigNAS, Yu et al. 2020): each step trains the largest sub-network, the
  smallest one and ``random_subnets`` uniform ones; their gradients are summed into one update.
* **In-place distillation** (BigNAS): the largest sub-network learns from the labels; the others
  learn from its soft predictions of the same batch (``softmax(logits / T)``, no gradient
  through them), with Hinton's ``T^2 KL`` loss (:func:`nas.training.distill.kd_loss`).

``sandwich: false, inplace_distill: false, random_subnets: 1`` is plain SPOS (one uniform path
per step, labels). The thresholds of the superkernel are kept (never trained) so the network's
variables and checkpoints have the single_path layout; the sub-networks are always chosen by
explicit gates. ``derive`` is the largest sub-network (the teacher): this strategy trains a
supernet for scoring, the search over its sub-networks is a sample-based strategy in
``evaluation.mode: supernet``. The run (config -> supernet -> outputs) is
:mod:`nas.strategies.spos_run`.

Example:
    >>> strategy = spos_strategy(space, SposParams(random_subnets=2), TrainConfig())
    >>> state, metrics = jax.jit(strategy.weight_step)(strategy.init(key), batch, key, lr, 0.0)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import pydantic

from nas.errors import NasInputError
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import max_arch, space_plan
from nas.single_path.subnets import bottom_levels, network_gates, sample_gates, top_levels
from nas.strategies.protocol import OneShot, OneShotState, one_hot_distribution
from nas.strategies.single_path import merge_thresholds, split_thresholds
from nas.training.distill import kd_loss
from nas.training.trainer import TrainConfig, cross_entropy, make_optimizer


#: fold_in index of the key stream of the sub-networks' dropout keys (uniform draws use 0..15).
DROPOUT_STREAM = 1 << 16


class SposParams(pydantic.BaseModel):
    """``strategy.params`` of spos (training settings are the config's ``train`` section).

    Attributes:
        sandwich: train the largest and the smallest sub-network on every step (besides the
            random ones).
        inplace_distill: the sub-networks other than the largest learn from the largest's soft
            predictions instead of the labels (needs sandwich).
        random_subnets: uniformly sampled sub-networks per step (SPOS: 1 without sandwich).
        kd_temperature: temperature T of the in-place distillation's soft targets.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    sandwich: bool = True
    inplace_distill: bool = True
    random_subnets: int = pydantic.Field(2, ge=0, le=16)
    kd_temperature: float = pydantic.Field(1.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "SposParams":
        if self.inplace_distill and not self.sandwich:
            raise ValueError("inplace_distill needs sandwich: true (the largest sub-network, "
                             "trained on the labels, is the teacher)")
        if not self.sandwich and self.random_subnets < 1:
            raise ValueError("without the sandwich rule random_subnets must be >= 1 (plain "
                             "SPOS: 1)")
        return self

    @property
    def subnets_per_step(self) -> int:
        """Sub-networks trained on every step."""
        return (2 if self.sandwich else 0) + self.random_subnets


def spos_space_check(space: Any) -> None:
    """Refuses, in one line, a space the single-path superkernel cannot nest (the registry's
    ``check_space`` of spos).

    Raises:
        NasInputError: the slot and knob, as :func:`~nas.single_path.plan.space_plan` says.
    """
    try:
        space_plan(space)
    except NasInputError as e:
        raise NasInputError(f"spos trains the single-path superkernel: {e.message}", e.source,
                            e.field) from None


class StepSubnets(NamedTuple):
    """The sub-networks of one step, stacked along a leading axis of length K.

    Attributes:
        gates: the hard gates ``{slot: {key: [K, gates]}}``.
        labels: [K] 1.0 where the sub-network learns from the labels, 0.0 where from the
            teacher's soft predictions.
        teacher: [K] 1.0 for the sub-network whose predictions are the teacher's (the largest,
            first) when distilling.
    """

    gates: Any
    labels: jax.Array
    teacher: jax.Array


def step_subnets(plans: Any, params: SposParams, key: jax.Array) -> StepSubnets:
    """Returns the sub-networks one step trains, in order: with the sandwich rule the largest,
    then the smallest, then ``random_subnets`` uniform draws from `key` (traceable).

    Args:
        plans: the space's single-path plans.
        params: the strategy's parameters.
        key: the step's sampling key.
    """
    gates = []
    if params.sandwich:
        gates += [network_gates(plans, top_levels(plans)), network_gates(plans, bottom_levels(plans))]
    gates += [sample_gates(plans, jax.random.fold_in(key, i)) for i in range(params.random_subnets)]
    k = len(gates)
    labels = [1.0] + [0.0 if params.inplace_distill else 1.0] * (k - 1) if params.sandwich \
        else [1.0] * k
    teacher = [1.0 if params.inplace_distill and i == 0 else 0.0 for i in range(k)]
    stacked = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *gates)
    return StepSubnets(stacked, jnp.asarray(labels, jnp.float32), jnp.asarray(teacher, jnp.float32))


def make_subnet_loss(net: SinglePathNetwork, params: SposParams, label_smoothing: float = 0.0):
    """Returns ``loss(weights, thresholds, stats, gates, batch, rng, soft_targets, labels)``
    of one sub-network: ``labels * CE(labels) + (1 - labels) * T^2 KL(soft_targets || p_T)``.

    Its aux is (new batch_stats, logits, cross-entropy).
    """
    temperature = params.kd_temperature

    def loss(weights, thresholds, stats, gates, batch, rng, soft_targets, labels):
        logits, upd = net.apply({"params": merge_thresholds(weights, thresholds),
                                 "batch_stats": stats}, batch["x"], train=True, gates=gates,
                                mutable=["batch_stats"], rngs={"dropout": rng})
        ce = cross_entropy(logits, batch["y"], batch["mask"], label_smoothing)
        kd = kd_loss(logits, soft_targets, temperature, batch["mask"])
        return labels * ce + (1.0 - labels) * kd, (upd["batch_stats"], logits, ce)

    return loss


def make_sandwich_grads(net: SinglePathNetwork, space: Any, params: SposParams,
                        label_smoothing: float = 0.0):
    """Returns ``grads(weights, thresholds, stats, batch, key) -> (grads, stats, metrics)``:
    the summed weight gradients of the step's sub-networks, ``step_subnets(plans, params, key)``
    (their dropout keys: ``split(fold_in(key, DROPOUT_STREAM), K)``).

    The sub-networks run in order under one ``lax.scan`` (one compiled forward/backward): the
    largest first, whose soft predictions become the soft targets of the later ones when
    distilling (taken as constants: the teacher gets no gradient from them). BatchNorm running
    statistics are updated by each sub-network in turn (scoring recalibrates them anyway).

    Metrics: ``loss`` (the summed loss), ``loss_sum`` / ``correct`` / ``count`` of the first
    sub-network (the largest with the sandwich rule) for the trainer's train_loss and
    train_accuracy.
    """
    plans = space_plan(space)
    loss_fn = make_subnet_loss(net, params, label_smoothing)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    temperature = params.kd_temperature

    def grads(weights, thresholds, stats, batch, key):
        subnets = step_subnets(plans, params, key)
        k = subnets.labels.shape[0]
        keys = jax.random.split(jax.random.fold_in(key, DROPOUT_STREAM), k)
        n = batch["x"].shape[0]
        uniform = jnp.full((n, space.num_classes), 1.0 / space.num_classes, jnp.float32)

        def body(carry, xs):
            total, stats, soft = carry
            gates, labels, teacher, rng = xs
            (loss, (stats, logits, ce)), g = grad_fn(weights, thresholds, stats, gates, batch,
                                                     rng, soft, labels)
            mine = jax.nn.softmax(jax.lax.stop_gradient(logits) / temperature, axis=-1)
            soft = jnp.where(teacher > 0, mine, soft)
            correct = jnp.sum((jnp.argmax(logits, -1) == batch["y"]) * batch["mask"])
            total = jax.tree_util.tree_map(jnp.add, total, g)
            return (total, stats, soft), (loss, ce, correct)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, weights)
        (total, stats, _), (losses, ces, correct) = jax.lax.scan(
            body, (zeros, stats, uniform), (subnets.gates, subnets.labels, subnets.teacher, keys))
        count = jnp.sum(batch["mask"])
        metrics = {"loss": jnp.sum(losses), "loss_sum": ces[0] * count, "correct": correct[0],
                   "count": count}
        return total, stats, metrics

    return grads


def spos_strategy(space: Any, params: SposParams, train: TrainConfig | None = None, *,
                  net: SinglePathNetwork | None = None) -> OneShot:
    """Returns the uniform-sampling supernet training as a one-shot protocol.

    ``weight_step`` applies the config's optimizer to the summed sandwich gradients
    (:func:`make_sandwich_grads`); ``arch_step`` changes nothing (no architecture parameters:
    the thresholds in ``state.arch`` are kept for the single_path variable layout);
    ``derive`` is the largest sub-network, ``distribution`` all mass on it.

    Args:
        space: the Space (every slot nestable, :func:`~nas.single_path.plan.space_plan`).
        params: the strategy's parameters.
        train: the trainer settings (optimizer, label smoothing, depthwise impl).
        net: a prebuilt network (default ``SinglePathNetwork(space)``).

    Returns:
        The :class:`~nas.strategies.protocol.OneShot`.
    """
    train = train or TrainConfig()
    net = net or SinglePathNetwork(space, depthwise_impl=train.depthwise_impl)
    grads_fn = make_sandwich_grads(net, space, params, train.label_smoothing)
    tx = make_optimizer(train)
    largest = max_arch(space, space_plan(space))

    def init(rng):
        variables = init_single_path(net, rng)
        weights, thresholds = split_thresholds(space, variables["params"])
        return OneShotState(weights, thresholds, tx.init(weights), {}, variables["batch_stats"])

    def weight_step(state, batch, rng, lr, epoch):
        del epoch
        grads, stats, metrics = grads_fn(state.weights, state.arch, state.stats, batch, rng)
        updates, opt = tx.update(grads, state.weight_opt, state.weights)
        weights = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.weights, updates)
        return state._replace(weights=weights, weight_opt=opt, stats=stats), metrics

    def arch_step(state, batch, rng, lr, epoch):
        del batch, rng, lr, epoch
        return state, {}

    def derive(state):
        del state
        return dict(largest)

    return OneShot("spos", init, weight_step, arch_step, derive,
                   lambda state: one_hot_distribution(space, derive(state)))

