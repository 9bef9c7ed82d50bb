"""How one decision enters a supernet's forward pass: fixed, mixed, or picked.

* :class:`Mix` (FBNet's Gumbel-softmax weights, or ProxylessNAS's one-hot gates in the arch
  step): every choice contributes, weighted. For shared weights this is FBNetV2-style masking:
  a kernel-size decision becomes a weighted sum of centre masks of the largest kernel, a
  channel decision a weighted sum of first-k channel masks, a bit-width decision a weighted sum
  of the fake-quantized weights (or activations) at each bit-width.
* :class:`Pick` (ProxylessNAS's weight step): one sampled choice, selected with ``lax.switch``
  so only that branch runs. A picked *bit-width* is not a switch: the quantizer's integer grid
  is looked up at the traced index (:func:`quantize_weight`, :func:`quantize_input`), so the
  fake-quantization is one elementwise computation for every bit-width instead of one branch
  per bit-width (nested under every kernel, rank and channel switch, those branches were most
  of the weight step's program and its compile time).
* :class:`Fixed`: the space does not search this knob here.

Example:
    >>> quantize_weight(w, Mix((8, 32), jnp.array([0.3, 0.7])))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from nas.blocks.quant import FLOAT_BITS, act_grid, fake_quant_act, fake_quant_weight, weight_grid


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A knob with one value."""

    value: Any

    @property
    def values(self) -> tuple:
        return (self.value,)


@dataclasses.dataclass(frozen=True)
class Mix:
    """A weighted mixture over a decision's choices.

    Attributes:
        values: the choices.
        weights: [len(values)] weights (Gumbel-softmax sample, or one-hot gates).
    """

    values: tuple
    weights: Any

    def weight_of(self, value: Any) -> Any:
        """Returns the weight of one choice."""
        return self.weights[self.values.index(value)]


@dataclasses.dataclass(frozen=True)
class Pick:
    """One choice picked by a (traced) index.

    Attributes:
        values: the choices.
        index: int scalar array, the picked choice.
    """

    values: tuple
    index: Any


Choice = Fixed | Mix | Pick


def weighted_values(choice: Choice) -> list[tuple[Any, Any]]:
    """Returns [(value, weight)] of a Fixed or Mix choice (weight 1.0 for Fixed).

    Raises:
        TypeError: for a Pick (it selects rather than weighs).
    """
    if isinstance(choice, Fixed):
        return [(choice.value, 1.0)]
    if isinstance(choice, Mix):
        return [(v, choice.weights[i]) for i, v in enumerate(choice.values)]
    raise TypeError("a Pick choice has no weights")


def apply_choice(choice: Choice, fn: Callable[[Any, jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Applies ``fn(value, x)`` under a choice.

    Fixed: ``fn(value, x)``; Mix: ``sum_i w_i fn(v_i, x)``; Pick: ``lax.switch`` over the values
    (only the picked branch executes).

    Args:
        choice: the decision.
        fn: a function of (choice value, array).
        x: the array.
    """
    if isinstance(choice, Fixed):
        return fn(choice.value, x)
    if isinstance(choice, Pick):
        if len(choice.values) == 1:
            return fn(choice.values[0], x)
        branches = [lambda a, v=v: fn(v, a) for v in choice.values]
        return jax.lax.switch(choice.index, branches, x)
    out = None
    for v, w in weighted_values(choice):
        term = w * fn(v, x)
        out = term if out is None else out + term
    return out


def quantize_weight(w: jax.Array, bits: Choice) -> jax.Array:
    """Fake-quantizes weights under a bit-width choice (same quantizer as the blocks).

    A :class:`Pick` computes exactly what ``fake_quant_weight(w, picked)`` computes, with the
    grid read at the traced index (see the module docstring).
    """
    if isinstance(bits, Pick) and len(bits.values) > 1:
        qp = _picked_grid(bits, lambda b: weight_grid(b)[1])
        amax = jax.lax.stop_gradient(jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1))))
        step = jnp.where(amax > 0, amax / _nonzero(qp), 1.0)
        return jnp.where(qp > 0, _rounded(w / step) * step, w)
    return apply_choice(bits, lambda b, a: fake_quant_weight(a, b), w)


def quantize_input(x: jax.Array, bits: Choice, signed: bool) -> jax.Array:
    """Fake-quantizes an activation on its batch range (the blocks' first-step behaviour).

    Args:
        x: activations.
        bits: bit-width choice.
        signed: signed symmetric or unsigned range.
    """
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x)))
    if isinstance(bits, Pick) and len(bits.values) > 1:
        qn = _picked_grid(bits, lambda b: act_grid(b, signed)[0])
        qp = _picked_grid(bits, lambda b: act_grid(b, signed)[1])
        step = jax.lax.stop_gradient(jnp.maximum(amax, 1e-8)) / _nonzero(qp)
        quantized = _rounded(jnp.clip(x / step, qn, qp)) * step
        return jnp.where(qp > 0, quantized, x)
    return apply_choice(bits, lambda b, a: fake_quant_act(a, amax, b, signed), x)


def _picked_grid(bits: Pick, grid_end: Callable[[int], int]) -> jax.Array:
    """The picked bit-width's grid end (``grid_end(bits)``; 0 for float bits), as a traced
    float32 scalar."""
    ends = [float(grid_end(b)) if b < FLOAT_BITS else 0.0 for b in bits.values]
    return jnp.asarray(ends, jnp.float32)[bits.index]


def _nonzero(qp: jax.Array) -> jax.Array:
    """``qp``, with 1 where it is 0 (float bits): the unused quantized branch of a ``where``
    must stay finite, or its NaN gradient would leak through."""
    return jnp.where(qp > 0, qp, 1.0)


def _rounded(v: jax.Array) -> jax.Array:
    """Round half to even forward, identity backward (the straight-through estimator)."""
    return v + jax.lax.stop_gradient(jnp.round(v) - v)


def prefix_mask(size: int, weighted_counts: Sequence[tuple[int, Any]]) -> jax.Array:
    """Returns sum_i w_i * [arange(size) < n_i]: a soft first-k channel mask.

    Args:
        size: mask length.
        weighted_counts: [(n, weight)].
    """
    ar = jnp.arange(size)
    out = jnp.zeros((size,), jnp.float32)
    for n, w in weighted_counts:
        out = out + w * (ar < n).astype(jnp.float32)
    return out


def center_mask(size: int, weighted_kernels: Sequence[tuple[int, Any]]) -> jax.Array:
    """Returns sum_i w_i * (centre k_i x k_i window of a size x size kernel): a kernel mask."""
    out = jnp.zeros((size, size), jnp.float32)
    for k, w in weighted_kernels:
        lo = (size - k) // 2
        window = jnp.zeros((size, size), jnp.float32).at[lo:lo + k, lo:lo + k].set(1.0)
        out = out + w * window
    return out


def center_crop(kernel: jax.Array, k: int) -> jax.Array:
    """Returns the centre k x k taps of a [K, K, ...] kernel."""
    lo = (kernel.shape[0] - k) // 2
    return kernel[lo:lo + k, lo:lo + k]
