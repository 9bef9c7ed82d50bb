"""Nested residual quantizer: one weight tensor serves every bit-width of a ladder.

For a ladder of bit-widths ``b0 < b1 < ... < bn`` (32 = float) the quantized weight is the
coarsest value refined by gated residuals::

    Q(w) = Q_b0(w) + g1 [ (Q_b1(w) - Q_b0(w)) + g2 [ (Q_b2(w) - Q_b1(w)) + ... ] ]

where ``Q_b`` is the project's plain fake-quantizer (:func:`nas.blocks.quant.fake_quant_weight`,
symmetric per output channel, STE) and each residual ``Q_bi(w) - Q_b(i-1)(w)`` is the refinement
from b(i-1) to bi bits (for 2 -> 4 bits it is itself exactly the 4-bit quantization of
``w - Q_2(w)``, since the 2-bit grid lies on the 4-bit one). Each gate g_i is a threshold
indicator of the residual's norm (:mod:`nas.single_path.indicators`).

Exactness: the forward value is built with :func:`~nas.single_path.indicators.select`, so at
every gate setting it *is* ``fake_quant_weight(w, b)`` of the selected b (bit for bit), never a
rounded sum of residuals; the gradient is that of the gated-residual sum above.

Example:
    >>> wq = nested_fake_quant_weight(w, (8, 32), gates)     # gates: [1] (the 8 -> 32 residual)
"""

from __future__ import annotations

from typing import Sequence

import jax

from nas.blocks.quant import fake_quant_weight
from nas.single_path.indicators import select


def quant_levels(w: jax.Array, ladder: Sequence[int]) -> list[jax.Array]:
    """Returns the plain fake-quantized weights at every bit-width of the ladder.

    Args:
        w: weights whose last axis is the output channel.
        ladder: ascending bit-widths (32 = float).

    Returns:
        [Q_b0(w), Q_b1(w), ...].
    """
    return [fake_quant_weight(w, int(b)) for b in ladder]


def residual_parts(w: jax.Array, ladder: Sequence[int]) -> list[jax.Array]:
    """Returns the residuals gated by the ladder's gates: ``Q_bi(w) - Q_b(i-1)(w)``, i >= 1.

    Args:
        w: weights.
        ladder: ascending bit-widths.

    Returns:
        n - 1 arrays shaped like `w` (their norms feed the bit-width indicators).
    """
    levels = quant_levels(w, ladder)
    return [levels[i] - levels[i - 1] for i in range(1, len(levels))]


def nested_fake_quant_weight(w: jax.Array, ladder: Sequence[int], gates: jax.Array | None) -> jax.Array:
    """Quantizes `w` at the bit-width the gates select, through the nested residual form.

    Args:
        w: weights whose last axis is the output channel.
        ladder: ascending bit-widths b0 < ... < bn (one entry: plain fake-quant at b0).
        gates: [n] gates of the residuals (exactly 0./1. forward); None when the ladder has one
            level.

    Returns:
        Exactly ``fake_quant_weight(w, b_l)`` where l = number of leading gates on; gradient of
        the gated-residual sum (w.r.t. w: the STE identity; w.r.t. g_i: the gated residual).
    """
    levels = quant_levels(w, ladder)
    out = levels[-1]
    for i in range(len(levels) - 1, 0, -1):
        out = select(gates[i - 1], levels[i - 1], out)
    return out
