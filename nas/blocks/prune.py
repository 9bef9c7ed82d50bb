"""Structured pruning of an MBConv's expanded channels by first-k slicing (elastic width).

A block with ``width < 1`` is built with really smaller tensors (``BlockSpec.mid_channels``
channels inside). Its weights can be taken from a wider trained block of the same layer by
keeping the first k expanded channels of every tensor that has them, as OFA's elastic width:
expand conv outputs, BatchNorms, depthwise kernel, SE convs' channel side, project conv inputs.

Example:
    >>> pruned = slice_mbconv_variables(full_variables["params"], keep=48)
"""

from __future__ import annotations

from typing import Any, Mapping

# For each tensor of an MBConv that has the expanded channels: (path, axis).
_EXPANDED_AXES = {
    ("expand", "kernel"): -1, ("expand", "kernel_v"): -1,
    ("expand_bn", "scale"): 0, ("expand_bn", "bias"): 0, ("expand_bn", "mean"): 0,
    ("expand_bn", "var"): 0,
    ("dw", "kernel"): -1,
    ("dw_bn", "scale"): 0, ("dw_bn", "bias"): 0, ("dw_bn", "mean"): 0, ("dw_bn", "var"): 0,
    ("se", "reduce", "kernel"): -2, ("se", "expand", "kernel"): -1, ("se", "expand", "bias"): 0,
    ("project", "kernel"): -2, ("project", "kernel_u"): -2,
}


def _slice(value: Any, axis: int, keep: int) -> Any:
    index = [slice(None)] * value.ndim
    index[axis] = slice(0, keep)
    return value[tuple(index)]


def slice_mbconv_variables(tree: Mapping[str, Any], keep: int, _path: tuple = ()) -> dict[str, Any]:
    """Keeps the first `keep` expanded channels of one ungrouped MBConv's variables.

    Args:
        tree: the block's "params" or "batch_stats" subtree (e.g. ``params["s2_b1"]``).
        keep: channels to keep (the pruned spec's ``mid_channels``).

    Returns:
        A tree of the same structure with sliced arrays, for the block built with the smaller
        width (same kernel, expand, SE, rank, bits). Activation-quantizer ranges are kept.
    """
    out = {}
    for name, value in tree.items():
        path = _path + (name,)
        if isinstance(value, Mapping):
            out[name] = slice_mbconv_variables(value, keep, path)
        elif path in _EXPANDED_AXES:
            out[name] = _slice(value, _EXPANDED_AXES[path], keep)
        else:
            out[name] = value
    return out
