"""BatchNorm recalibration: a network's running statistics recomputed from one batch.

A weight-sharing supernet trains many sub-networks with shared BatchNorm layers, so its running
statistics fit none of them; Once-for-All (Cai et al. 2020) recomputes them for the sub-network
being evaluated from a batch of training images. Here one training-mode pass over that batch
starts from *cleared* statistics (BatchNorm means and variances 0, activation quantizer ranges
0 = unmeasured), and the batch's own statistics are read back from the one running-average
update (:func:`recalibrated_stats`), so no module needs a special mode.

Example:
    >>> stats0 = cleared_stats(variables["batch_stats"])
    >>> _, upd = model.apply({**variables, "batch_stats": stats0}, x, train=True, mutable=["batch_stats"])
    >>> stats = recalibrated_stats(stats0, upd["batch_stats"], BN_MOMENTUM)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: The running statistics a recalibration recomputes: BatchNorm moments and the activation
#: quantizers' running ranges (0 = unmeasured: the next batch's own range is taken).
RUNNING_STATS = ("mean", "var", "amax")


def _leaf_name(path: tuple) -> str | None:
    return getattr(path[-1], "key", None) if path else None


def cleared_stats(stats: Any) -> Any:
    """Returns `stats` with every BatchNorm mean / variance and quantizer range set to 0.

    One training-mode pass from these leaves BatchNorm's running averages at ``(1 - m)`` times
    the batch's moments and each running range at the batch's range (other statistics, e.g.
    the single-path bits_a residuals, are kept).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.zeros_like(leaf) if _leaf_name(path) in RUNNING_STATS else leaf,
        stats)


def recalibrated_stats(old: Any, new: Any, momentum: float) -> Any:
    """Returns the batch's own statistics from one BatchNorm running-average update.

    Linen's BatchNorm updates ``ra = m * ra + (1 - m) * batch``; after one update from `old`
    the batch's statistics are ``(new - m * old) / (1 - m)`` (exact up to rounding when `old`
    is 0, see :func:`cleared_stats`). Leaves other than 'mean' and 'var' (activation quantizer
    ranges, which start from the batch's own range) are taken from `new`.

    Args:
        old: batch_stats before the update.
        new: batch_stats after one training-mode pass.
        momentum: the BatchNorm momentum m.
    """
    def fix(path, o, n):
        if _leaf_name(path) in ("mean", "var"):
            return (n - momentum * o) / (1.0 - momentum)
        return n

    return jax.tree_util.tree_map_with_path(fix, old, new)


def calibration_batch(x_train: Any, count: int, seed: int) -> Any:
    """Returns the recalibration batch: `count` training images drawn once with `seed` (the
    same images for every sub-network scored, so their scores compare)."""
    pick = np.random.default_rng(seed).permutation(len(x_train))[:count]
    return x_train[pick]


def stacked_batches(x: Any, batch_size: int) -> Any:
    """Returns `x` as [batches, batch_size, ...], the last batch padded with zeros (for a
    ``jax.lax.map`` over batches; drop the predictions past ``len(x)``)."""
    n_batches = -(-len(x) // batch_size)
    pad = n_batches * batch_size - len(x)
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return x.reshape(n_batches, batch_size, *x.shape[1:])
