"""Shared test helper: a Flax model's variables filled with random weights, biases and BatchNorm
statistics (variances positive), so that exports and interpreters are compared on values that
exercise every parameter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, shape, seed: int = 0, scale: float = 0.3):
    """Returns variables of `model` for inputs of `shape`, every leaf random.

    Args:
        model: a Flax module taking (x, train=False).
        shape: the input shape [N, H, W, C].
        seed: numpy seed of the values.
        scale: standard deviation of weights and biases.
    """
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    rng = np.random.default_rng(seed)

    def fill(path, a):
        if "var" in jax.tree_util.keystr(path):
            return jnp.asarray(0.5 + np.abs(rng.standard_normal(a.shape)), a.dtype)
        return jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)
