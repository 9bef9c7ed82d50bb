"""Fast, host-side initialization of block variables (no XLA compile).

Running ``model.init`` under ``jax.jit`` compiles the random initializers of every parameter
(threefry per leaf): 8-20 s even for the tiny space on a busy 2-core machine, and op-by-op
eager init is slower still. Since every parameter of :mod:`nas.blocks` is named by its role,
this module draws the same distributions with numpy from the variable *shapes* (obtained by
``jax.eval_shape``, tracing only):

- conv kernels (``kernel``, ``kernel_u``, ``kernel_v`` with 4 dims): He normal, fan-in,
  truncated at 2 std (as ``variance_scaling(2.0, "fan_in", "truncated_normal")``);
- dense kernels (2 dims): LeCun normal (truncated, fan-in);
- ``scale`` (BatchNorm): ones; ``bias``: zeros;
- batch_stats ``mean``: zeros, ``var``: ones, ``amax`` (activation-quantizer range): zeros;
- quantizer steps (``step``, ``<kernel>_step``): zeros, i.e. "not set yet" (see
  :func:`nas.blocks.quant.init_quant_steps`).

Each leaf's draw is seeded by the key and the leaf's path, so a block's initial weights do not
depend on the other blocks of the network.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

# Standard deviation of a unit normal truncated to [-2, 2] (as in jax's variance_scaling).
_TRUNC_STD = 0.87962566103423978


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return (out * (std / _TRUNC_STD)).astype(np.float32)


def init_leaf(path: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Returns the initial value of one variable from its path and shape.

    Args:
        path: '/'-joined path ending with the variable name (e.g. 's1_b1/expand/kernel').
        shape: its shape.
        rng: numpy generator for random leaves.

    Raises:
        ValueError: a variable name this module does not know.
    """
    name = path.rsplit("/", 1)[-1]
    if name in ("kernel", "kernel_u", "kernel_v"):
        fan_in = int(np.prod(shape[:-1]))
        gain = 2.0 if len(shape) == 4 else 1.0
        return _truncated_normal(rng, shape, float(np.sqrt(gain / fan_in)))
    if name in ("scale", "var"):
        return np.ones(shape, np.float32)
    if name in ("bias", "mean", "amax", "step") or name.endswith("_step"):
        return np.zeros(shape, np.float32)
    raise ValueError(f"no host initializer for variable {path!r}")


def _seed_words(rng: jax.Array) -> list[int]:
    if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return [int(v) for v in np.asarray(rng).ravel()]


def host_init(shapes: Any, rng: jax.Array) -> Any:
    """Initializes a tree of variable shapes with numpy.

    Args:
        shapes: a pytree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape(model.init, ...)``).
        rng: a jax PRNG key (new-style or raw uint32), the seed.

    Returns:
        The same tree of float32 numpy arrays.
    """
    seed = _seed_words(rng)

    def leaf(path, sds):
        key = "/".join(str(getattr(p, "key", p)) for p in path)
        gen = np.random.default_rng(seed + [zlib.crc32(key.encode())])
        return init_leaf(key, tuple(sds.shape), gen)

    return jax.tree_util.tree_map_with_path(leaf, shapes)
