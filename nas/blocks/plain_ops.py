"""The ops of a block program that hold no variables, run the same way by every interpreter
(the Flax blocks, the supernet paths, the Single-Path superkernel).

Example:
    >>> y = plain_op(op, env)          # None for Quantize, Conv, Dense, Dropout
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from nas.blocks.activations import activation
from nas.blocks.convs import channel_shuffle
from nas.blocks.program import Act, Add, Mul, Op, Pool, Shuffle


def plain_op(op: Op, env: Mapping[str, jax.Array]) -> jax.Array | None:
    """Returns the output of an op without variables, reading its inputs from `env`.

    Args:
        op: a program op.
        env: {tensor name: array} of the tensors computed so far.

    Returns:
        The op's output for Act, Shuffle, Pool, Mul and Add; None for the ops an interpreter
        runs itself (Quantize, Conv, Dense, Dropout).
    """
    x = env[op.x]
    if isinstance(op, Act):
        return jax.nn.sigmoid(x) if op.fn == "sigmoid" else activation(op.fn)(x)
    if isinstance(op, Shuffle):
        return channel_shuffle(x, op.groups)
    if isinstance(op, Pool):
        return jnp.mean(x, axis=(1, 2), keepdims=len(op.out_shape) == 3)
    if isinstance(op, Mul):
        return x * env[op.y]
    if isinstance(op, Add):
        return x + env[op.y]
    return None
