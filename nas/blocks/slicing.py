"""A smaller block's weights cut out of a larger one's, read from the smaller block's op program.

Weight sharing nests every option of a layer in its largest version: OFA's elastic width and
kernel, FBNet / ProxylessNAS paths, Single-Path superkernels. The child's variables are then a
slice of the parent's, and which slice follows from the child's program
(:func:`nas.blocks.program.program`) alone: every conv of the program takes the centre k x k
taps and the first input / output channels of the parent conv of the same name, every bias and
BatchNorm its first channels. A child that wants a full 1x1 ``kernel`` from a parent that holds
it as factors ``kernel_u`` [.., cin, R] and ``kernel_v`` [.., R, cout] gets their product.
So the supernet paths (:func:`nas.supernet.paths.slice_path_params`), the Single-Path export
(:mod:`nas.single_path.export`) and structured pruning share one rule, and a new block type
needs none of its own.

Example:
    >>> small = dataclasses.replace(spec, width=0.5)
    >>> params, stats = slice_block_variables(small, full["params"], full["batch_stats"])
    >>> make_block(small, "b").apply({"params": params, "batch_stats": stats}, x)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from nas.blocks.program import Conv, program, quantizers
from nas.spec import BlockSpec

Tree = Mapping[str, Any]


def factor_product(u: Any, v: Any) -> Any:
    """Returns the 1x1 kernel [1, 1, cin, cout] of factors u [1, 1, cin, R], v [1, 1, R, cout]."""
    return jnp.dot(u[0, 0], v[0, 0])[None, None]


def crop_to(value: Any, shape: tuple[int, ...]) -> Any:
    """Cuts `value` to `shape`: the centre taps of a 4-D kernel's two spatial axes, the leading
    entries of every other axis.

    Raises:
        ValueError: `shape` is larger than `value` along some axis, or of another rank.
    """
    if len(shape) != value.ndim or any(s > v for s, v in zip(shape, value.shape)):
        raise ValueError(f"cannot cut {tuple(value.shape)} to {tuple(shape)}")
    index = []
    for axis, (want, have) in enumerate(zip(shape, value.shape)):
        lo = (have - want) // 2 if value.ndim == 4 and axis < 2 else 0
        index.append(slice(lo, lo + want))
    return value[tuple(index)]


def get_path(tree: Tree, path: str) -> Any:
    """Returns ``tree[a][b]...`` for a '/'-joined `path` (a Flax module path: 'se/reduce')."""
    for part in path.split("/"):
        tree = tree[part]
    return tree


def set_path(tree: dict, path: str, value: Any) -> None:
    """Sets ``tree[a][b]... = value`` for a '/'-joined `path`, making the parents it lacks."""
    *parents, last = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _has_path(tree: Tree, path: str) -> bool:
    for part in path.split("/"):
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def _conv_params(conv: Conv, parent: Tree) -> dict[str, Any]:
    out = {}
    for name, shape in conv.kernel_shapes().items():
        if name in parent:
            out[name] = crop_to(parent[name], shape)
        elif name == "kernel" and "kernel_u" in parent:
            out[name] = crop_to(factor_product(parent["kernel_u"], parent["kernel_v"]), shape)
        else:
            raise KeyError(f"{conv.name}/{name}: not in the parent block's params")
    if conv.bias:
        out["bias"] = parent["bias"][:conv.cout]
    return out


def slice_block_variables(spec: BlockSpec, params: Tree, stats: Tree | None = None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns the params and BatchNorm statistics of block `spec`, cut from a larger block's.

    Args:
        spec: the child block (same operator as the parent; smaller or equal kernel, channels,
            rank; SE only if the parent has it).
        params: the parent's params (Linen layout: ``expand/kernel``, ``dw_bn/scale``, ...).
        stats: the parent's batch_stats, or None.

    Returns:
        (params, batch_stats) for ``make_block(spec)``, without weight steps (minmax until
        they are set); activation quantizers of the child's program (per-tensor scalars) are
        copied where the parent holds them (a Single-Path superkernel does), else left out.

    Raises:
        KeyError: the parent lacks a conv or BatchNorm of the child's program.
        ValueError: the child is larger than the parent somewhere.
    """
    out_p: dict[str, Any] = {}
    out_s: dict[str, Any] = {}
    for point in quantizers(program(spec)):
        for tree, out in ((params, out_p), (stats, out_s)):
            if tree is not None and _has_path(tree, point.module):
                set_path(out, point.module, dict(get_path(tree, point.module)))
    for op in program(spec):
        if not isinstance(op, Conv):
            continue
        set_path(out_p, op.name, _conv_params(op, get_path(params, op.name)))
        if op.bn is not None:
            out_p[op.bn] = {k: v[:op.cout] for k, v in params[op.bn].items()}
            if stats is not None and op.bn in stats:
                out_s[op.bn] = {k: v[:op.cout] for k, v in stats[op.bn].items()}
    return out_p, out_s
