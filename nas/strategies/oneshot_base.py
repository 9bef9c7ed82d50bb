"""Shared pieces of the 'paths' one-shot strategies (fbnet, proxyless): parameters, objective,
and :func:`paths_strategy`, which turns a strategy's two losses into the one-shot protocol.

A 'paths' strategy defines ``weight_loss(trained, full, alpha, batch, rng, tau) -> (ce,
accuracy)``, ``arch_grads(alpha, full, batch, rng, tau) -> (grads, metrics, aux)`` and
``post_update(new_alpha, old_alpha, aux)``; :func:`paths_strategy` wraps them into a
:class:`~nas.strategies.protocol.OneShot` (init / weight_step / arch_step / derive /
distribution) with AdamW (cosine learning rate, given per step) on the supernet's weights and
Adam on the logits. Build one with :func:`nas.strategies.registry.make_strategy`.

Strategy parameters (``strategy.params`` of a search config)::

    strategy:
      name: fbnet                 # or proxyless
      params: {epochs: 12, warmup_epochs: 2, arch_lr: 0.01,
               objective: fbnet, fbnet_alpha: 0.2, fbnet_beta: 0.6, latency_scale: 1000}
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
import pydantic

from nas.errors import NasInputError
from nas.objective import fbnet_loss, proxyless_loss
from nas.space import Space
from nas.strategies.protocol import OneShot, OneShotState
from nas.supernet import gates
from nas.supernet.network import SuperNet, merge_trainable, trainable
from nas.training.trainer import TrainConfig, cross_entropy, make_optimizer


class OneShotParams(pydantic.BaseModel):
    """Parameters of a one-shot search.

    Attributes:
        epochs: supernet epochs (each: a weight pass over 80% of the training data, then, after
            the warm-up, an arch pass over the other 20%).
        warmup_epochs: epochs of weight training only (FBNet trains weights first).
        batch_size: batch size of both passes.
        weight_lr: peak learning rate (AdamW, cosine) of the weights.
        weight_decay: weight decay of the kernels.
        arch_lr: Adam learning rate of the architecture logits.
        arch_fraction: fraction of the training split held out for the arch steps.
        tau0, tau_decay: Gumbel-softmax temperature tau0 * tau_decay ** epoch (FBNet).
        objective: 'fbnet' (CE * a * log(LAT * latency_scale) ** b), 'proxyless' (the
            paper's CE + lam * LAT, times (LAT / target) ** mult_beta when target is set),
            'hinge' (CE + lam * max(LAT / (target * (1 - target_margin)) - 1, 0): a hard-target
            penalty that pushes latency down only above the target), 'none' (CE).
        fbnet_alpha, fbnet_beta: FBNet's a and b.
        latency_scale: multiplies the table's ms before FBNet's log (1000 = microseconds, so the
            log of a sub-millisecond latency stays positive).
        lam: ProxylessNAS's additive latency weight (per ms); the hinge's weight (per unit of
            relative excess over the target).
        target: T in ms of the multiplicative form (None = additive form only) and the hinge.
        target_margin: the hinge aims this fraction below T, so that the derived (argmax) Arch,
            whose latency differs from the expected one, still meets T.
        mult_beta: exponent of the multiplicative form.
        checkpoint_every: epochs between checkpoints.
        progress: show a progress bar.
        depthwise_impl: 'auto' | 'shift' | 'xla'.
        devices: local devices the supernet trains on, data-parallel (0 = all).
        pick: how ProxylessNAS's weight step runs its one sampled option: 'masked' (one switch
            over the slot's paths, the picked kernel / channels / rank as masks of the path's
            largest weights: compiles ~3x faster, each step runs the path's largest shape),
            'nested' (nested switches down to the sampled shape: faster steps, slower compile;
            for long searches) or 'flat' (one switch over every shape: the reference).
        derive: how the final Arch is read from the logits: 'within_target' (default: the
            most probable Arch within ``objective.target`` and ``objective.limits`` that
            :func:`nas.supernet.derive_within.derive_within` finds; the argmax Arch when it is
            within them or none is set) or 'argmax' (the papers' rule: every label's most
            probable choice, whatever its cost).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    epochs: int = pydantic.Field(10, ge=1)
    warmup_epochs: int = pydantic.Field(2, ge=0)
    batch_size: int = pydantic.Field(64, ge=2)
    weight_lr: float = pydantic.Field(3e-3, gt=0)
    weight_decay: float = pydantic.Field(1e-4, ge=0)
    arch_lr: float = pydantic.Field(0.01, gt=0)
    arch_fraction: float = pydantic.Field(0.2, gt=0, lt=1)
    tau0: float = pydantic.Field(5.0, gt=0)
    tau_decay: float = pydantic.Field(0.956, gt=0, le=1)
    objective: Literal["fbnet", "proxyless", "hinge", "none"] | None = None
    fbnet_alpha: float = pydantic.Field(0.2, gt=0)
    fbnet_beta: float = pydantic.Field(0.6, ge=0)
    latency_scale: float = pydantic.Field(1000.0, gt=0)
    lam: float = pydantic.Field(0.0, ge=0)
    target: float | None = pydantic.Field(None, gt=0)
    mult_beta: float = pydantic.Field(0.6, ge=0)
    target_margin: float = pydantic.Field(0.0, ge=0, lt=1)
    checkpoint_every: int = pydantic.Field(1, ge=1)
    progress: bool = False
    depthwise_impl: Literal["auto", "shift", "xla"] = "auto"
    devices: int = pydantic.Field(0, ge=0)
    pick: Literal["masked", "nested", "flat"] = "masked"
    derive: Literal["within_target", "argmax"] = "within_target"

    @pydantic.model_validator(mode="after")
    def _hinge_needs_target(self) -> "OneShotParams":
        if self.objective == "hinge" and (self.target is None or self.lam <= 0):
            raise ValueError("objective 'hinge' needs target (ms) and lam > 0")
        return self


def make_objective(params: OneShotParams, default: str) -> Callable[[Any, Any], Any]:
    """Returns ``objective(ce, lat_ms) -> loss`` of the configured kind (nas.objective).

    Args:
        params: the search parameters.
        default: the kind used when ``params.objective`` is None (the strategy's own).
    """
    kind = params.objective or default
    if kind == "fbnet":
        return lambda ce, lat: fbnet_loss(ce, lat * params.latency_scale, params.fbnet_alpha,
                                          params.fbnet_beta)
    if kind == "proxyless":
        return lambda ce, lat: proxyless_loss(ce, lat, params.lam, params.target, params.mult_beta)
    if kind == "hinge":
        aim = params.target * (1.0 - params.target_margin)
        return lambda ce, lat: hinge_latency_loss(ce, lat, aim, params.lam)
    return lambda ce, lat: ce


def objective_and_cost(name: str, params: OneShotParams, default: str,
                       table: Any) -> tuple[Callable[[Any, Any], Any], Callable[[Any], Any]]:
    """Returns ``(objective(ce, cost) -> loss, cost(probabilities) -> expected cost)``.

    Args:
        name: the strategy's name (named in errors).
        params: the search parameters.
        default: the strategy's own objective kind (used when ``params.objective`` is None).
        table: anything with ``expected(probs)`` (LatencyTable, cost table), or None.

    Raises:
        NasInputError: the objective has a cost term but there is no table.
    """
    kind = params.objective or default
    uses_cost = kind in ("fbnet", "hinge") or (kind == "proxyless" and (params.lam > 0 or params.target))
    if table is None:
        if uses_cost:
            raise NasInputError(f"strategy {name!r} with objective {kind!r} needs a latency table; "
                                "set latency_table or strategy.params.objective: none",
                                field="latency_table")
        return make_objective(params, default), lambda probs: jnp.ones((), jnp.float32)
    return make_objective(params, default), table.expected


def hinge_latency_loss(ce: Any, latency: Any, target: float, lam: float) -> Any:
    """Returns CE + lam * max(LAT / T - 1, 0): the latency term acts only above the target.

    A hard-target form (as MnasNet's hard constraint and ProxylessNAS's hard-latency variants):
    below T the search is left to accuracy alone, so it does not shrink the network further
    than T requires; above T each 1% of excess costs lam / 100 of loss.

    Args:
        ce: cross-entropy.
        latency: expected latency (ms).
        target: T (ms).
        lam: weight of the relative excess.
    """
    return ce + lam * jnp.maximum(latency / target - 1.0, 0.0)


def masked_ce(logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Returns (mean cross-entropy, accuracy) of a batch {x, y, mask}."""
    ce = cross_entropy(logits, batch["y"], batch["mask"])
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["y"]) * batch["mask"]) / jnp.maximum(
        jnp.sum(batch["mask"]), 1.0)
    return ce, acc


def weight_optimizer(params: OneShotParams) -> optax.GradientTransformation:
    """Returns the supernet weights' direction transform (AdamW, decay on kernels; no rate).

    Args:
        params: the search parameters (weight_lr, weight_decay).

    Returns:
        The optax transform whose updates the weight step scales by the scheduled rate.
    """
    return make_optimizer(TrainConfig(epochs=params.epochs, batch_size=params.batch_size,
                                      learning_rate=params.weight_lr,
                                      weight_decay=params.weight_decay))


def full_weights(state: OneShotState) -> dict[str, Any]:
    """Returns the supernet's whole weight tree (trained leaves and stem/head statistics).

    Args:
        state: a 'paths' strategy's OneShotState.

    Returns:
        The tree :meth:`nas.supernet.network.SuperNet.apply` takes.
    """
    stats = {"stem": {"batch_stats": state.stats["stem"]},
             "head": {"batch_stats": state.stats["head"]}}
    return merge_trainable(stats, state.weights)


def paths_strategy(name: str, net: SuperNet, params: OneShotParams, weight_loss: Callable,
                   arch_grads: Callable, post_update: Callable) -> OneShot:
    """Returns the one-shot protocol of a 'paths' strategy from its losses.

    Args:
        name: the registry name.
        net: the supernet.
        params: the search parameters (optimizers, Gumbel temperature schedule).
        weight_loss: ``(trained, full, alpha, batch, rng, tau) -> (ce, accuracy)``.
        arch_grads: ``(alpha, full, batch, rng, tau) -> (grads, metrics, aux)``.
        post_update: ``(new_alpha, old_alpha, aux) -> alpha``.

    Returns:
        The :class:`~nas.strategies.protocol.OneShot` (see :mod:`nas.strategies.protocol`).
    """
    space: Space = net.space
    tx, arch_tx = weight_optimizer(params), optax.adam(params.arch_lr)

    def tau_of(epoch):
        return gates.temperature(jnp.asarray(epoch, jnp.float32), params.tau0, params.tau_decay)

    def init(rng):
        full = net.init(rng)
        weights, alpha = trainable(full), gates.init_arch_params(space)
        stats = {"stem": full["stem"]["batch_stats"], "head": full["head"]["batch_stats"]}
        return OneShotState(weights, alpha, tx.init(weights), arch_tx.init(alpha), stats)

    def weight_step(state, batch, rng, lr, epoch):
        grad_fn = jax.value_and_grad(weight_loss, has_aux=True)
        (ce, acc), grads = grad_fn(state.weights, full_weights(state), state.arch, batch, rng,
                                   tau_of(epoch))
        updates, opt = tx.update(grads, state.weight_opt, state.weights)
        weights = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.weights, updates)
        count = jnp.sum(batch["mask"])
        return state._replace(weights=weights, weight_opt=opt), {
            "loss_sum": ce * count, "correct": acc * count, "count": count}

    def arch_step(state, batch, rng, lr, epoch):
        del lr  # the logits follow Adam at params.arch_lr
        grads, metrics, aux = arch_grads(state.arch, full_weights(state), batch, rng,
                                         tau_of(epoch))
        updates, arch_opt = arch_tx.update(grads, state.arch_opt, state.arch)
        alpha = post_update(optax.apply_updates(state.arch, updates), state.arch, aux)
        return state._replace(arch=alpha, arch_opt=arch_opt), metrics

    return OneShot(name, init, weight_step, arch_step,
                   lambda state: gates.derive(space, state.arch),
                   lambda state: gates.distribution(space, state.arch))
