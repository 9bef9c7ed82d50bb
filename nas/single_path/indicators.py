"""Threshold indicators of Single-Path NAS and the exact gated selection built on them.

Single-Path NAS (Stamoulis et al. 2019) decides each nested choice with an indicator of the norm
of the *outer* part of a superkernel against a learned threshold, ``1(||w_outer|| > t)``,
relaxed for training: the forward pass uses the hard 0/1 value, the backward pass the gradient
of ``sigmoid(||w_outer|| - t)`` (straight-through).

We compare the *log* RMS of the outer part against the threshold (``log rms(w_outer) > t``,
the same indicator as ``||w_outer||^2 > n * exp(2t)``): the threshold then moves on the same
scale for a 7x7 kernel ring, a group of channels and a quantization residual, so one learning
rate fits every decision.

Both primitives are ``jax.custom_jvp`` functions whose *primal* values are exact: the indicator
is exactly 0.0 or 1.0 and :func:`select` returns exactly one of its two inputs, so a superkernel
with its gates fixed computes bit-for-bit what the chosen child computes (no ``a + (b - a)``
rounding), while gradients are those of the relaxed mixture ``off + g * (on - off)``.

Example:
    >>> g = indicator(log_rms(w_ring) - t)          # 0./1. forward, sigmoid' backward
    >>> w = select(g, w_inner_only, w_full)        # exactly one of them, gradient of the mix
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Added to squared norms before the log, so an all-zero part has a finite log RMS.
NORM_EPS = 1e-12


@jax.custom_jvp
def indicator(x: jax.Array) -> jax.Array:
    """Hard indicator 1(x > 0) with the sigmoid's gradient (straight-through).

    Args:
        x: the indicator's argument (log RMS of the outer part minus the threshold).

    Returns:
        Exactly 0.0 or 1.0 (float32), shaped like `x`; d/dx = sigmoid(x) * (1 - sigmoid(x)).
    """
    return (x > 0).astype(jnp.float32)


@indicator.defjvp
def _indicator_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s = jax.nn.sigmoid(x)
    return indicator(x), (s * (1.0 - s) * dx).astype(jnp.float32)


@jax.custom_jvp
def select(g: jax.Array, off: jax.Array, on: jax.Array) -> jax.Array:
    """Returns `on` where the gate is 1 and `off` where it is 0, exactly.

    The tangent is that of the relaxed mixture ``off + g * (on - off)``: (1 - g) d(off) +
    g d(on) + (on - off) dg, so the gate learns from the difference the choice makes.

    Args:
        g: gate, exactly 0. or 1. in the forward pass (a scalar or broadcastable).
        off: value when the gate is off.
        on: value when the gate is on (same shape as `off`).
    """
    return jnp.where(g > 0.5, on, off)


@select.defjvp
def _select_jvp(primals, tangents):
    (g, off, on), (dg, doff, don) = primals, tangents
    out = select(g, off, on)
    return out, (1.0 - g) * doff + g * don + (on - off) * dg


def log_rms(*parts: jax.Array) -> jax.Array:
    """Returns log of the root-mean-square of all elements of `parts` (the norm indicators use).

    Args:
        *parts: arrays (the outer part of a superkernel, possibly in several tensors).

    Returns:
        Scalar ``0.5 * log(mean(w^2) + eps)`` over every element of every part.
    """
    total = sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in parts)
    count = sum(p.size for p in parts)
    return 0.5 * jnp.log(total / max(count, 1) + NORM_EPS)


def ladder_levels(gates: jax.Array) -> jax.Array:
    """Turns the gates of a nested ladder into the probability of each level.

    A ladder of n levels has n - 1 gates; level l is chosen when gates 1..l are on and gate
    l + 1 is off: ``P(0) = 1 - g1``, ``P(1) = g1 (1 - g2)``, ..., ``P(n-1) = g1 ... g(n-1)``
    (the paper's ``P(k=3) = 1 - i5, P(k=5) = i5 (1 - i7), P(k=7) = i5 i7``). With hard gates this
    is the one-hot of the chosen level.

    Args:
        gates: [n - 1] gate values (may be empty).

    Returns:
        [n] level probabilities (sums to 1).
    """
    on = _prefix_products(gates)                                            # P(level >= l)
    return jnp.stack([on[i] - (on[i + 1] if i + 1 < len(on) else 0.0) for i in range(len(on))])


def reached(gates: jax.Array) -> jax.Array:
    """Returns [n] = P(level >= l) for l = 0..n-1 (the cumulative product of the gates)."""
    return jnp.stack(_prefix_products(gates))


def _prefix_products(gates: jax.Array) -> list[jax.Array]:
    """[1, g1, g1 g2, ...] as a list of scalars (unrolled: ladders have a handful of gates, and
    an unrolled product compiles to far fewer ops than jnp.cumprod's scan)."""
    out = [jnp.ones((), jnp.float32)]
    for i in range(gates.shape[0]):
        out.append(out[-1] * gates[i].astype(jnp.float32))
    return out


def hard_level(gates) -> int:
    """Returns the chosen level of a ladder: the number of leading gates that are on.

    Args:
        gates: [n - 1] gate values (0./1.).
    """
    level = 0
    for g in list(gates):
        if float(g) < 0.5:
            break
        level += 1
    return level
