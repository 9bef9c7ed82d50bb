"""Effective precision: which bit-widths a backend really runs, so that keys it cannot tell apart
collapse into one table entry.

Rules (also in ``latency_tables/README.md``):

- ``jax`` (rule ``float``): the Flax model runs quantized layers as fake-quantized float math at
  inference; weights are quantized offline, so every layer is timed as float. Every key of this
  backend carries ``bw:32-ba:32``.
- ``onnxruntime`` (rule ``int8-if-both-le8``): a layer runs int8 kernels (QDQ -> QLinearConv,
  QLinearAdd, ...) when both ``bits_w <= 8`` and ``bits_a <= 8``; 4- and 2-bit layers run the
  same int8 kernels, so their key carries ``bw:8-ba:8`` (activations below 8 bits add one Clip
  per activation point to the exported graph, which the key does not time). Any other mix (weight-only or
  activation-only quantization) has no integer kernel there and runs as float (``bw:32-ba:32``).
- ``tflite`` (rule ``float``): the TFLite models of :mod:`nas.export.to_tflite` run float kernels
  (activation points as float arithmetic), so every key carries ``bw:32-ba:32``.
"""

from __future__ import annotations

import dataclasses

from nas.blocks.act_points import runs_int8
from nas.spec import BlockSpec

FLOAT_BITS = 32
INT_BITS = 8
RULES = {"jax": "float", "onnxruntime": "int8-if-both-le8", "tflite": "float", "fake": "float"}




def effective_spec(spec: BlockSpec, rule: str) -> BlockSpec:
    """Returns `spec` with its bit-widths replaced by the ones the backend really runs.

    Args:
        spec: a layer.
        rule: a precision rule (a value of :data:`RULES`).

    Returns:
        A BlockSpec whose ``key()`` is the latency-table key of `spec` under `rule`.

    Raises:
        ValueError: unknown rule.
    """
    if rule == "float":
        bits = FLOAT_BITS
    elif rule == "int8-if-both-le8":
        bits = INT_BITS if runs_int8(spec) else FLOAT_BITS
    else:
        raise ValueError(f"unknown precision rule {rule!r}; known: {sorted(set(RULES.values()))}")
    return dataclasses.replace(spec, bits_w=bits, bits_a=bits)


def effective_key(spec: BlockSpec, rule: str) -> str:
    """Returns the latency-table key of `spec` under the precision `rule`."""
    return effective_spec(spec, rule).key()
