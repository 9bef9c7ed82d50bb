"""Convolution layers of the blocks, each with optional fake-quantized weights.

Weights are quantized per output channel at ``bits_w`` (32 = float) with a learned step
``<kernel>_step`` next to each kernel (see :mod:`nas.blocks.quant`). Activations are quantized
by the blocks, at the points of :mod:`nas.blocks.act_points`, not by the convs.

Param layouts follow Flax's Conv/Dense: kernels are HWIO, grouped kernels ``[kh, kw, cin/g,
cout]`` with output channels grouped contiguously; the depthwise kernel is ``[k, k, 1, C]``.

- :class:`Conv`: a dense kxk conv (the stem).
- :class:`PointwiseConv`: a 1x1 conv, optionally grouped or factorized to rank r
  (``kernel_u`` [1, 1, cin, r] then ``kernel_v`` [1, 1, r, cout], no BN between).
- :class:`DepthwiseConv`: kxk depthwise, with the CPU-fast shift or XLA implementation.
- :class:`Dense`: the classifier.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from nas.blocks.depthwise import depthwise_conv, same_padding
from nas.blocks.quant import (FLOAT_BITS, deployed_bias, fake_quant_weight, minmax_weight_step,
                              weight_step)

#: He-normal (fan-in) initializer used for every conv kernel.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet channel shuffle: [.., g * n] -> view [.., g, n] -> transpose -> [.., n * g].

    Args:
        x: [..., C] with C divisible by `groups`.
        groups: number of groups (1 returns `x`).
    """
    if groups == 1:
        return x
    c = x.shape[-1]
    y = x.reshape(*x.shape[:-1], groups, c // groups)
    return jnp.swapaxes(y, -1, -2).reshape(x.shape)


def quantized_kernel(module: nn.Module, name: str, kernel: jax.Array, bits: int) -> jax.Array:
    """Returns `module`'s kernel `name` fake-quantized at `bits` with its learned step."""
    return fake_quant_weight(kernel, bits, weight_step(module, name, kernel, bits))


def output_weight_step(module: nn.Module, name: str, bits: int) -> jax.Array:
    """The per-output-channel step of a bound conv's kernel `name` (learned, else minmax).

    Call on a conv module after it ran (its variables exist); `bits` < 32.
    """
    kernel = module.get_variable("params", name)
    s0 = minmax_weight_step(kernel, bits)
    if module.has_variable("params", f"{name}_step"):
        learned = module.get_variable("params", f"{name}_step")
        return jnp.where(learned > 0, learned, s0)
    return s0


def pointwise(x: jax.Array, kernel: jax.Array, groups: int = 1) -> jax.Array:
    """Applies a (grouped) 1x1 conv kernel [1, 1, cin/g, cout] as a matrix product.

    Args:
        x: [..., cin].
        kernel: [1, 1, cin / groups, cout].
        groups: channel groups.

    Returns:
        [..., cout].
    """
    k = kernel.reshape(kernel.shape[-2], kernel.shape[-1]).astype(x.dtype)
    if groups == 1:
        return jnp.dot(x, k)
    cin_g, cout = k.shape
    xg = x.reshape(*x.shape[:-1], groups, cin_g)
    kg = k.reshape(cin_g, groups, cout // groups)
    y = jnp.einsum("...gi,igo->...go", xg, kg)
    return y.reshape(*x.shape[:-1], cout)


def full_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Dense kxk conv, 'SAME' padding.

    Args:
        x: [N, H, W, cin].
        kernel: [k, k, cin, cout] (HWIO).
        stride: spatial stride.

    Returns:
        [N, ceil(H/s), ceil(W/s), cout].
    """
    return lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def full_conv_dot_grad(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """:func:`full_conv` whose kernel gradient is one matrix product per tap.

    XLA's CPU backend runs the kernel-gradient convolution of a conv inside a ``lax.switch``
    branch ~100x slower than outside (a 3x3 conv of 144 channels at 16x16, batch 128: 33 s vs
    0.35 s); ProxylessNAS's weight step runs its paths in such branches. Here the kernel
    gradient is, per tap (i, j), ``x_tap^T @ g`` over the batch and positions (a ``fori_loop``
    over the taps, each a dot, which XLA runs at full speed in a branch too); the input
    gradient is the conv's own. Same values as :func:`full_conv` up to float rounding.

    Args:
        x: [N, H, W, cin].
        kernel: [k, k, cin, cout] (HWIO).
        stride: spatial stride.

    Returns:
        [N, ceil(H/s), ceil(W/s), cout].
    """
    return full_conv(x, kernel, stride)


def _conv_fwd(x, kernel, stride):
    return full_conv(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, residuals, g):
    x, kernel = residuals
    k_h, k_w, cin, cout = kernel.shape
    _, d_x = jax.vjp(lambda a: full_conv(a, kernel, stride), x)
    (dx,) = d_x(g)
    n, oh, ow, _ = g.shape
    ph, pw = same_padding(x.shape[1], k_h, stride), same_padding(x.shape[2], k_w, stride)
    s = stride
    rows, cols = x.shape[1] + sum(ph), x.shape[2] + sum(pw)
    hq, wq = -(-rows // s) * s, -(-cols // s) * s
    xp = jnp.pad(x, ((0, 0), (ph[0], ph[1] + hq - rows), (pw[0], pw[1] + wq - cols), (0, 0)))
    # stride x stride phases: tap (i, j) is a contiguous slice of phase (i % s, j % s)
    phases = xp.reshape(n, hq // s, s, wq // s, s, cin).transpose(2, 4, 0, 1, 3, 5)
    phases = phases.reshape(s * s, n, hq // s, wq // s, cin)
    g2 = g.reshape(-1, cout).astype(x.dtype)

    def tap_grad(t, out):
        i, j = t // k_w, t % k_w
        tap = lax.dynamic_slice(phases, (i % s * s + j % s, 0, i // s, j // s, 0),
                                (1, n, oh, ow, cin))
        return out.at[t].set(jnp.dot(tap.reshape(-1, cin).T, g2))

    dk = lax.fori_loop(0, k_h * k_w, tap_grad, jnp.zeros((k_h * k_w, cin, cout), x.dtype))
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


full_conv_dot_grad.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
    """Dense kxk conv, 'SAME' padding, no bias (the stem).

    Attributes:
        features: output channels.
        kernel_size: k.
        stride: spatial stride.
        bits_w: weight bit-width (32 = float).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    bits_w: int = FLOAT_BITS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train. Returns: [N, ceil(H/s), ceil(W/s), features]."""
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
        return full_conv(x, quantized_kernel(self, "kernel", kernel, self.bits_w), self.stride)

    def output_step(self) -> jax.Array:
        """Per-output-channel weight step (bound, after a call; quantized weights only)."""
        return output_weight_step(self, "kernel", self.bits_w)


class PointwiseConv(nn.Module):
    """1x1 conv, optionally grouped or factorized into two 1x1 convs of inner width `rank`.

    Attributes:
        features: output channels.
        groups: channel groups (must divide input and output channels; not with `rank`).
        rank: inner channels r of the factorized form, or None for a full 1x1 conv.
        use_bias: add a bias (SE convs); convs followed by BatchNorm have none.
        bits_w: weight bit-width (32 = float).
        mid_quant: for a factorized conv, quantizes the inner tensor between the two factors
            (``fn(y, train) -> y``; the block's ``q_<conv>_u`` point), or None.
    """

    features: int
    groups: int = 1
    rank: int | None = None
    use_bias: bool = False
    bits_w: int = FLOAT_BITS
    mid_quant: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, input_step: jax.Array | None = None
                 ) -> jax.Array:
        """Args: x [..., cin]; train; input_step: the step of the quantized input when the conv
        runs as an int8 kernel (then, at inference, the bias is rounded to the kernel's int32
        grid ``input_step * weight step``). Returns: [..., features]."""
        cin = x.shape[-1]
        if self.rank is not None and self.groups != 1:
            raise ValueError("a factorized (rank) 1x1 conv cannot also be grouped")
        if cin % self.groups or self.features % self.groups:
            raise ValueError(f"groups={self.groups} must divide {cin} input and "
                             f"{self.features} output channels")
        if self.rank is None:
            kernel = self.param("kernel", conv_init, (1, 1, cin // self.groups, self.features))
            y = pointwise(x, quantized_kernel(self, "kernel", kernel, self.bits_w), self.groups)
        else:
            ku = self.param("kernel_u", conv_init, (1, 1, cin, self.rank))
            kv = self.param("kernel_v", conv_init, (1, 1, self.rank, self.features))
            mid = pointwise(x, quantized_kernel(self, "kernel_u", ku, self.bits_w))
            if self.mid_quant is not None:
                mid = self.mid_quant(mid, train)
            y = pointwise(mid, quantized_kernel(self, "kernel_v", kv, self.bits_w))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            if input_step is not None and not train and not self.is_initializing():
                bias = deployed_bias(bias, input_step * self.output_step())
            y = y + bias.astype(y.dtype)
        return y

    def output_step(self) -> jax.Array:
        """Per-output-channel weight step (bound, after a call; quantized weights only)."""
        return output_weight_step(self, "kernel" if self.rank is None else "kernel_v", self.bits_w)


class DepthwiseConv(nn.Module):
    """kxk depthwise conv, 'SAME' padding, no bias.

    Attributes:
        kernel_size: k.
        stride: spatial stride.
        bits_w: weight bit-width (32 = float).
        impl: 'auto' | 'shift' | 'xla' (see :mod:`nas.blocks.depthwise`).
    """

    kernel_size: int = 3
    stride: int = 1
    bits_w: int = FLOAT_BITS
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, C]; train. Returns: [N, ceil(H/s), ceil(W/s), C]."""
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, 1, x.shape[-1]))
        return depthwise_conv(x, quantized_kernel(self, "kernel", kernel, self.bits_w), self.stride,
                              self.impl)

    def output_step(self) -> jax.Array:
        """Per-output-channel weight step (bound, after a call; quantized weights only)."""
        return output_weight_step(self, "kernel", self.bits_w)


class Dense(nn.Module):
    """Fully connected layer with bias (the classifier), optionally fake-quantized.

    Attributes:
        features: outputs.
        bits_w: weight bit-width (32 = float).
    """

    features: int
    bits_w: int = FLOAT_BITS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, cin]; train. Returns: [N, features]."""
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel = quantized_kernel(self, "kernel", kernel, self.bits_w)
        return jnp.dot(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)
