"""Fake quantization with straight-through estimators (STE) for quantization-aware training.

Weights: symmetric, per output channel (last axis). The clipping range of a channel is its
max |w|, so no weight is ever clipped: the forward pass rounds to ``2^b - 1`` levels
``{-q..q} * scale`` (q = 2^(b-1) - 1) and the backward pass is the identity (plain STE).

Activations: per tensor, against a running range kept in the "batch_stats" collection (an
exponential moving average of the batch's max |x|, updated in training like BatchNorm's
statistics). Outputs of ReLU-like activations are quantized *unsigned* on [0, amax] (2^b levels),
others *signed* on [-amax, amax] (2^b - 1 levels). The gradient is the **clipped STE**: identity
for inputs strictly inside the clipping range, zero outside it (the range itself gets no
gradient; it is a statistic, not a parameter).

``bits >= 32`` means no quantization anywhere.

Example:
    >>> wq = fake_quant_weight(kernel, bits=4)          # kernel [..., cout]
    >>> xq = ActQuant(bits=8, signed=False)(x, train)    # in a Linen module
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

FLOAT_BITS = 32


def _ste_round(x: jax.Array) -> jax.Array:
    """Rounds in the forward pass, identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fake_quant_weight(w: jax.Array, bits: int) -> jax.Array:
    """Quantizes weights symmetrically per output channel (last axis), with a plain STE.

    Args:
        w: weights whose last axis is the output channel (conv HWIO, dense [in, out]).
        bits: bit-width (2, 4, 8); 32 or more returns `w` unchanged.

    Returns:
        Weights of the same shape taking at most 2^bits - 1 distinct values per output channel;
        d(out)/d(w) is the identity.
    """
    if bits >= FLOAT_BITS:
        return w
    qmax = 2.0 ** (bits - 1) - 1
    amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
    scale = jax.lax.stop_gradient(jnp.where(amax > 0, amax / qmax, 1.0))
    return _ste_round(w / scale) * scale


def fake_quant_act(x: jax.Array, amax: jax.Array, bits: int, signed: bool) -> jax.Array:
    """Quantizes activations per tensor on a given range, with a clipped STE.

    Args:
        x: activations.
        amax: scalar clipping bound (> 0); the range is [0, amax] or [-amax, amax].
        bits: bit-width; 32 or more returns `x` unchanged.
        signed: symmetric signed range (2^b - 1 levels) or unsigned [0, amax] (2^b levels).

    Returns:
        Quantized activations; the gradient is 1 where x is strictly inside the range, else 0.
    """
    if bits >= FLOAT_BITS:
        return x
    amax = jax.lax.stop_gradient(jnp.maximum(amax, 1e-8))
    lo = -amax if signed else jnp.zeros_like(amax)
    levels = (2.0 ** (bits - 1) - 1) if signed else (2.0 ** bits - 1)
    scale = amax / levels
    clipped = jnp.clip(x, lo, amax)
    return _ste_round(clipped / scale) * scale


class ActQuant(nn.Module):
    """Per-tensor activation fake-quantizer with a running range in "batch_stats".

    Attributes:
        bits: bit-width (32 = no quantization, and no state).
        signed: signed symmetric range, or unsigned [0, amax] (after ReLU-like activations).
        momentum: EMA momentum of the running max |x| (like BatchNorm's).
    """

    bits: int = FLOAT_BITS
    signed: bool = True
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Quantizes `x`; in training first updates the running range with this batch.

        Args:
            x: activations.
            train: update the running range (needs "batch_stats" mutable).

        Returns:
            Fake-quantized `x`. Before any training step (running range still 0) the batch's own
            range is used.
        """
        if self.bits >= FLOAT_BITS:
            return x
        running = self.variable("batch_stats", "amax", lambda: jnp.zeros((), jnp.float32))
        batch_amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x))).astype(jnp.float32)
        if train and not self.is_initializing():
            old = running.value
            running.value = jnp.where(old > 0, self.momentum * old + (1 - self.momentum) * batch_amax,
                                      batch_amax)
        amax = jnp.where(running.value > 0, running.value, batch_amax)
        return fake_quant_act(x, amax.astype(x.dtype), self.bits, self.signed)
