"""Low-rank factorization of 1x1 convs: cin -> r -> cout as two 1x1 convs, initialized by SVD.

A trained 1x1 conv kernel ``W`` ([1, 1, cin, cout]) is factorized by truncated SVD,
``W = U S V^T``, into ``A = U_r S_r^(1/2)`` ([1, 1, cin, r], param ``kernel_u``) and
``B = S_r^(1/2) V_r^T`` ([1, 1, r, cout], param ``kernel_v``). ``x A B`` is the best rank-r
approximation of ``x W`` (Eckart-Young): its Frobenius error on W is sqrt(sum of the dropped
singular values squared).

Example:
    >>> u, v = svd_factorize(params["expand"]["kernel"], rank=8)
    >>> factorized = factorize_pointwise_params(params["expand"], rank=8)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np


def svd_factorize(kernel: Any, rank: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns the rank-r factors of a 1x1 conv kernel by truncated SVD.

    Args:
        kernel: [1, 1, cin, cout] (or [cin, cout]).
        rank: r, 1 <= r <= min(cin, cout).

    Returns:
        (kernel_u [1, 1, cin, r], kernel_v [1, 1, r, cout]) with kernel_u @ kernel_v the best
        rank-r approximation of the kernel.

    Raises:
        ValueError: bad kernel shape or rank.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim == 4:
        if k.shape[:2] != (1, 1):
            raise ValueError(f"expected a 1x1 conv kernel [1, 1, cin, cout], got shape {k.shape}")
        k = k[0, 0]
    if k.ndim != 2:
        raise ValueError(f"expected a [cin, cout] or [1, 1, cin, cout] kernel, got shape {k.shape}")
    if not 1 <= rank <= min(k.shape):
        raise ValueError(f"rank must be in [1, {min(k.shape)}], got {rank}")
    u, s, vt = np.linalg.svd(k, full_matrices=False)
    root = np.sqrt(s[:rank])
    a = (u[:, :rank] * root[None, :]).astype(np.float32)
    b = (root[:, None] * vt[:rank]).astype(np.float32)
    return jnp.asarray(a[None, None]), jnp.asarray(b[None, None])


def factorize_pointwise_params(params: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """Converts the params of a full PointwiseConv into those of its rank-r version.

    Args:
        params: {"kernel": [1, 1, cin, cout], optionally "bias"} of a trained, ungrouped
            :class:`~nas.blocks.convs.PointwiseConv`.
        rank: r.

    Returns:
        {"kernel_u", "kernel_v", and "bias" if present}, for a PointwiseConv with rank=r.
    """
    if "kernel" not in params:
        raise ValueError(f"expected params with a 'kernel', got keys {sorted(params)}")
    u, v = svd_factorize(params["kernel"], rank)
    out = {"kernel_u": u, "kernel_v": v}
    if "bias" in params:
        out["bias"] = params["bias"]
    return out


def svd_tail_error(kernel: Any, rank: int) -> float:
    """Returns the Frobenius norm of (kernel - its best rank-r approximation).

    Args:
        kernel: [1, 1, cin, cout] or [cin, cout].
        rank: r.

    Returns:
        sqrt(sum of squared singular values beyond the first r).
    """
    k = np.asarray(kernel, dtype=np.float64).reshape(-1, np.shape(kernel)[-1])
    s = np.linalg.svd(k, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))
