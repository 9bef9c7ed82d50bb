"""StableHLO export through ``jax.export``: a self-contained inference function with its weights.

The weights are baked into the module as constants; quantized kernels are stored as int8
constants and dequantized in the graph (``q * scale``), so the serialized module holds 1 byte per
quantized weight. The batch dimension is symbolic, so one file serves any batch size.

Example:
    >>> blob = export_stablehlo(model, packed, (16, 16, 1))
    >>> logits = run_stablehlo(blob, x)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas.export.packed import unflatten, unpack_arrays


def inference_fn(model: Any, packed: Mapping[str, Any]):
    """Returns ``f(x) -> logits`` of a packed model, its weights closed over as constants.

    Args:
        model: the Network (``build_model(space, arch)``).
        packed: from :func:`nas.export.packed.pack_variables` or :func:`load_packed`.
    """
    flat = unpack_arrays(packed, dequantize=False)

    def f(x):
        leaves = {}
        for path, value in flat.items():
            if isinstance(value, tuple):
                q, scale = value
                leaves[path] = jnp.asarray(q).astype(jnp.float32) * jnp.asarray(scale)
            else:
                leaves[path] = jnp.asarray(value)
        tree = unflatten(leaves)
        variables = {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
        return model.apply(variables, x, train=False)

    return f


def export_stablehlo(model: Any, packed: Mapping[str, Any], image_shape: Sequence[int]) -> bytes:
    """Exports the inference function of a packed model and returns the serialized bytes.

    Args:
        model: the Network.
        packed: the packed model.
        image_shape: (H, W, C) of one input image.

    Returns:
        ``jax.export`` serialized bytes (StableHLO with a symbolic batch dimension).
    """
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    exported = jax.export.export(jax.jit(inference_fn(model, packed)))(spec)
    return bytes(exported.serialize())


def run_stablehlo(blob: bytes, x: np.ndarray) -> np.ndarray:
    """Deserializes an exported module and runs it on images [N, H, W, C]."""
    exported = jax.export.deserialize(bytearray(blob))
    return np.asarray(exported.call(jnp.asarray(x, jnp.float32)))


def stablehlo_text(blob: bytes) -> str:
    """Returns the module's StableHLO text (for reading, not for loading)."""
    return jax.export.deserialize(bytearray(blob)).mlir_module()
