"""Nested activation quantizer: one activation point serves every activation bit-width (bits_a).

For a ladder of activation bit-widths ``b0 < b1 < ... < bn`` (32 = float) the quantized
activation is the coarsest value refined by gated residuals, like the weight ladder
(:mod:`nas.single_path.nested_quant`)::

    Q(x) = Q_b0(x) + g1 [ (Q_b1(x) - Q_b0(x)) + g2 [ (Q_b2(x) - Q_b1(x)) + ... ] ]

where ``Q_b`` is the per-tensor minmax fake-quantizer of a b-bit :class:`~nas.blocks.quant.ActQuant`
(step ``amax / qp_b`` from the running range ``amax``, which does not depend on b, so one range
serves every level). The forward value is built with the exact
:func:`~nas.single_path.indicators.select`, so it *is* the b-bit ActQuant's output bit for bit;
the gradient is that of the gated-residual sum.

**What the gates decide on.** Single-Path NAS decides every nested choice with an indicator of
the norm of the superkernel's outer part (for weight bit-widths: the residual
``Q_bi(w) - Q_b(i-1)(w)``). Activation-quantization search (HAQ, mixed-precision DNAS) offers
no norm for activations, so we take the exact analogue: the RMS of the activation residual
``Q_bi(x) - Q_b(i-1)(x)``, i.e. how much the finer grid changes the activations the slot
actually computes (pooled over every activation point of the slot, element-weighted, as the
weight residual is pooled over every kernel). Gate i is on when::

    log rms_running(residual_i) - log rms_first(residual_i) > THRESHOLD_SCALE * t_i

* **A running estimate, not the current batch**: activations change with the batch, and a
  per-batch decision would make the gates (and so the derived Arch, the exported child and the
  cost term) a function of whichever batch was seen last. The running mean square (an EMA kept
  in ``batch_stats`` like ``amax``, updated in training) makes every gate a function of the
  network's variables alone, as the weight gates are of its params.
* **Relative to the first measurement**: the weight gates' thresholds start one log-RMS unit
  below the initial weight residual (every gate on, as in the paper); an activation residual
  is unknown until data flows, so its threshold's origin is the residual of the first training
  batch (``*_first``, set once). With ``t = -INIT_MARGIN / THRESHOLD_SCALE`` the gate starts on
  with the same margin as every other gate, and before any batch (both statistics 0) the
  difference is 0, so the gate is on then too.

Example:
    >>> y, ss = NestedActQuant((8, 32), signed=False, name="q_input")(x, train, gates)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.quant import FLOAT_BITS, act_grid, act_step, quantize, update_running
from nas.single_path.indicators import NORM_EPS, select

#: Slot-level batch_stats: running mean square of each residual of the bits_a ladder.
RESIDUAL_STAT = "bits_a_residual_ms"
#: Slot-level batch_stats: the same mean squares on the first training batch (threshold origin).
FIRST_RESIDUAL_STAT = "bits_a_residual_ms_first"
#: EMA momentum of the residual statistics (that of ActQuant's running range).
RESIDUAL_MOMENTUM = 0.9


def act_quant_levels(x: jax.Array, amax: jax.Array, ladder: Sequence[int], signed: bool
                     ) -> list[jax.Array]:
    """Returns the fake-quantized activations at every bit-width of the ladder.

    Args:
        x: activations.
        amax: the range (scalar > 0) the step is taken from.
        ladder: ascending bit-widths (32 = float: `x` itself).
        signed: signed or unsigned grid.

    Returns:
        [Q_b0(x), Q_b1(x), ...], each exactly what a b-bit ActQuant without a learned step
        computes with this range.
    """
    out = []
    for b in ladder:
        if b >= FLOAT_BITS:
            out.append(x)
            continue
        qn, qp = act_grid(int(b), signed)
        out.append(quantize(x, act_step(None, amax, int(b), signed).astype(x.dtype), qn, qp))
    return out


class NestedActQuant(nn.Module):
    """An activation point quantized at the bit-width the gates select (see the module docstring).

    Variables: batch_stats ``amax`` (the running range, as :class:`~nas.blocks.quant.ActQuant`;
    no learned step: the levels use minmax steps, which a child's step 0 also means).

    Attributes:
        ladder: ascending activation bit-widths (at least two).
        signed: signed grid, or unsigned (after ReLU-like activations).
        momentum: EMA momentum of the running range.
    """

    ladder: tuple[int, ...]
    signed: bool = True
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, gates: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Quantizes `x`; in training first updates the running range with this batch.

        Args:
            x: activations.
            train: update the running range (needs "batch_stats" mutable).
            gates: [n - 1] gates of the ladder (exactly 0./1. forward).

        Returns:
            (the quantized `x` at the selected level, [n - 1] sums of squares of the residuals
            ``Q_bi(x) - Q_b(i-1)(x)`` over `x`'s elements, without gradient).
        """
        running = self.variable("batch_stats", "amax", lambda: jnp.zeros((), jnp.float32))
        batch_amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x))).astype(jnp.float32)
        if train and not self.is_initializing():
            running.value = update_running(running.value, batch_amax, self.momentum)
        amax = jnp.where(running.value > 0, running.value, batch_amax)
        levels = act_quant_levels(x, amax, self.ladder, self.signed)
        squares = jnp.stack([jnp.sum(jnp.square(jax.lax.stop_gradient(hi - lo).astype(jnp.float32)))
                             for lo, hi in zip(levels[:-1], levels[1:])])
        out = levels[-1]
        for i in range(len(levels) - 1, 0, -1):
            out = select(gates[i - 1], levels[i - 1], out)
        return out, squares


def update_residual_stats(stats: Mapping[str, jax.Array], sum_squares: jax.Array, count: int
                          ) -> dict[str, jax.Array]:
    """Returns the slot's residual statistics after one training batch.

    Args:
        stats: {RESIDUAL_STAT, FIRST_RESIDUAL_STAT: [n - 1]} (0 = not measured yet).
        sum_squares: [n - 1] this batch's residual sums of squares over every point of the slot.
        count: number of elements those sums run over.

    Returns:
        The running mean squares (EMA) and the first batch's (set once).
    """
    batch = sum_squares / max(count, 1)
    first = stats[FIRST_RESIDUAL_STAT]
    return {RESIDUAL_STAT: update_running(stats[RESIDUAL_STAT], batch, RESIDUAL_MOMENTUM),
            FIRST_RESIDUAL_STAT: jnp.where(first > 0, first, batch)}


def residual_growth(stats: Mapping[str, jax.Array]) -> jax.Array:
    """Returns the norms the bits_a gates compare to their thresholds.

    Args:
        stats: the slot's batch_stats (holding RESIDUAL_STAT and FIRST_RESIDUAL_STAT).

    Returns:
        [n - 1] ``log rms_running - log rms_first`` of each residual (0 before any batch).
    """
    def log_rms(ms):
        return 0.5 * jnp.log(jnp.asarray(ms, jnp.float32) + NORM_EPS)

    growth = log_rms(stats[RESIDUAL_STAT]) - log_rms(stats[FIRST_RESIDUAL_STAT])
    return jax.lax.stop_gradient(growth)
