"""The optimizer of a single-path search: AdamW for the weights, a slower, warmed-up rule for
the thresholds.

Two things made every gate flip at once in the first epoch when the thresholds shared the
weights' Adam:

* Adam normalizes each parameter's step by its own gradient RMS, so every threshold under the
  latency pressure moved at the same speed whatever its gate saves, and all gates (which start at
  the same margin) crossed together; the Arch fell far below the target in one step.
* The thresholds moved before the weights had learned anything, so the accuracy side of the
  trade-off (the cross-entropy's gradient on the gates) was noise.

So the thresholds get their own rule: momentum normalized by the RMS of *all* threshold
gradients together (one shared second moment), which keeps the gates' relative speeds (a gate
whose flip saves more latency per accuracy lost moves first) while the fastest moves at about
the learning rate; and they stay frozen for ``warmup_steps`` while the weights train (the
warm-up of FBNet and Single-Path NAS before the architecture parameters learn).

Example:
    >>> tx = search_optimizer(train_config, warmup_steps=60)
    >>> run_training(..., tx=tx)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nas.training.trainer import make_optimizer

#: Momentum and second-moment decay of the threshold rule (Adam's defaults).
B1, B2, EPS = 0.9, 0.999, 1e-12


class SharedRmsState(NamedTuple):
    """State of :func:`scale_by_shared_rms`: step count, first moments, one second moment."""

    count: jax.Array
    mu: Any
    nu: jax.Array


def scale_by_shared_rms(warmup_steps: int = 0, b1: float = B1, b2: float = B2,
                        eps: float = EPS) -> optax.GradientTransformation:
    """Momentum divided by the RMS of all gradients together; zero for the first steps.

    Args:
        warmup_steps: number of steps whose update is zero (the moments are not updated either,
            so the rule starts fresh after the warm-up).
        b1: momentum decay.
        b2: decay of the shared second moment (the mean of the squared gradients).
        eps: added to the RMS.

    Returns:
        An optax transform whose update is ``m_hat / (sqrt(v_hat) + eps)`` per leaf, where
        ``v`` tracks the mean square over every element of every leaf.
    """

    def init(params):
        return SharedRmsState(jnp.zeros((), jnp.int32),
                              jax.tree_util.tree_map(jnp.zeros_like, params),
                              jnp.zeros((), jnp.float32))

    def update(grads, state, params=None):
        del params
        leaves = jax.tree_util.tree_leaves(grads)
        size = sum(g.size for g in leaves)
        mean_sq = sum(jnp.sum(jnp.square(g)) for g in leaves) / max(size, 1)
        active = jnp.logical_not(in_warmup(state, warmup_steps))
        t = jnp.maximum(state.count - warmup_steps + 1, 1).astype(jnp.float32)
        mu = jax.tree_util.tree_map(lambda m, g: jnp.where(active, b1 * m + (1 - b1) * g, m),
                                    state.mu, grads)
        nu = jnp.where(active, b2 * state.nu + (1 - b2) * mean_sq, state.nu)
        rms = jnp.sqrt(nu / (1 - b2 ** t)) + eps
        updates = jax.tree_util.tree_map(
            lambda m: jnp.where(active, m / (1 - b1 ** t) / rms, 0.0).astype(m.dtype), mu)
        return updates, SharedRmsState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


def in_warmup(state: SharedRmsState, warmup_steps: int) -> jax.Array:
    """Whether the rule's next update is still a warm-up step (zero update).

    Args:
        state: the rule's state (:func:`scale_by_shared_rms`).
        warmup_steps: its warm-up steps.

    Returns:
        A traced boolean scalar (one compiled step serves the warm-up and what follows).
    """
    return state.count < warmup_steps


def is_threshold(path) -> bool:
    """Whether a params path (a tuple of keys) leads to a threshold ``t_<ladder>``."""
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return str(name).startswith("t_")


def search_optimizer(config: Any, warmup_steps: int) -> optax.GradientTransformation:
    """Returns the search's optimizer: the config's for weights, the threshold rule for ``t_*``.

    Args:
        config: the TrainConfig (its optimizer, weight decay, clipping).
        warmup_steps: steps during which the thresholds stay fixed.

    Returns:
        A transform without learning rate (the train step scales it by ``-lr``).
    """
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "threshold" if is_threshold(path) else "weight", params)

    return optax.multi_transform({"weight": make_optimizer(config),
                                  "threshold": scale_by_shared_rms(warmup_steps)}, labels)
