"""Flax variables of a :class:`nas.model.Network` -> the weights layout of
:func:`nas.latency.onnx_blocks.network_to_onnx`.

``{"params": {layer: {module: {...: {name: array}}}}, "batch_stats": ...}`` becomes
``{layer: {"module/submodule": {name: array}}}``: BatchNorm ``scale``/``bias`` (params) and
``mean``/``var`` (batch_stats) meet under one role, and so do an activation quantizer's learned
``step`` (params) and running ``amax`` (batch_stats) under ``q_<point>``; kernels keep their
learned steps ``<kernel>_step`` beside them.

Example:
    >>> model = network_to_onnx(specs, weights=onnx_weights(variables), names=model_names)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _flatten(tree: Mapping[str, Any], prefix: str, out: dict[str, dict[str, np.ndarray]]) -> None:
    for name, value in tree.items():
        if isinstance(value, Mapping):
            _flatten(value, f"{prefix}/{name}" if prefix else name, out)
        else:
            out.setdefault(prefix, {})[name] = np.asarray(value)


def onnx_weights(variables: Mapping[str, Any]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Returns ``{layer: {role: {name: array}}}`` from a Network's variables.

    Args:
        variables: {"params": ..., "batch_stats": ...} of :class:`nas.model.Network`.

    Returns:
        The weights argument of :func:`nas.latency.onnx_blocks.network_to_onnx`.
    """
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for collection in ("params", "batch_stats"):
        for layer, tree in (variables.get(collection) or {}).items():
            roles = out.setdefault(layer, {})
            flat: dict[str, dict[str, np.ndarray]] = {}
            _flatten(tree, "", flat)
            for role, arrays in flat.items():
                roles.setdefault(role, {}).update(arrays)
    return out
