"""Activation functions of the blocks, by the names used in BlockSpec.act."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6)."""
    return jnp.clip(x, 0.0, 6.0)


def hswish(x: jax.Array) -> jax.Array:
    """Hard swish (MobileNetV3): x * relu6(x + 3) / 6."""
    return x * relu6(x + 3.0) / 6.0


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": relu6,
    "hswish": hswish,
    "swish": jax.nn.swish,
}

#: Activations whose outputs are never negative: their outputs are quantized unsigned.
NONNEGATIVE = frozenset({"relu", "relu6"})


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called `name`.

    Args:
        name: one of :data:`ACTIVATIONS` ('relu', 'relu6', 'hswish', 'swish').

    Raises:
        ValueError: unknown name.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
