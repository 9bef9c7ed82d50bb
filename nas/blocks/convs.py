"""Convolution layers of the blocks, each with optional fake quantization.

Every layer quantizes its *input* activation (``bits_a``, per tensor, see
:class:`~nas.blocks.quant.ActQuant`) and its weights (``bits_w``, per output channel), so a
layer's multiply-accumulates are ``bits_w x bits_a`` operations (what BOPs count). 32 bits = float.

Param layouts follow Flax's Conv/Dense: kernels are HWIO, grouped kernels ``[kh, kw, cin/g,
cout]`` with output channels grouped contiguously; the depthwise kernel is ``[k, k, 1, C]``.

- :class:`Conv`: a dense kxk conv (the stem).
- :class:`PointwiseConv`: a 1x1 conv, optionally grouped or factorized to rank r
  (``kernel_u`` [1, 1, cin, r] then ``kernel_v`` [1, 1, r, cout], no BN between).
- :class:`DepthwiseConv`: kxk depthwise, with the CPU-fast shift or XLA implementation.
- :class:`Dense`: the classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from nas.blocks.depthwise import depthwise_conv
from nas.blocks.quant import FLOAT_BITS, ActQuant, fake_quant_weight

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


def _quant_input(x, bits_a, signed, train):
    if bits_a >= FLOAT_BITS:
        return x
    return ActQuant(bits=bits_a, signed=signed, name="input_quant")(x, train)


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


class Conv(nn.Module):
    """Dense kxk conv, 'SAME' padding, no bias (the stem).

    Attributes:
        features: output channels.
        kernel_size: k.
        stride: spatial stride.
        bits_w, bits_a: weight / input-activation bit-widths (32 = float).
        signed_input: whether the input can be negative (signed activation quantization).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    bits_w: int = FLOAT_BITS
    bits_a: int = FLOAT_BITS
    signed_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train. Returns: [N, ceil(H/s), ceil(W/s), features]."""
        x = _quant_input(x, self.bits_a, self.signed_input, train)
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
        kernel = fake_quant_weight(kernel, self.bits_w).astype(x.dtype)
        return lax.conv_general_dilated(x, kernel, (self.stride, self.stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class PointwiseConv(nn.Module):
    """1x1 conv, optionally grouped or factorized into two 1x1 convs of inner width `rank`.

    Attributes:
        features: output channels.
        groups: channel groups (must divide input and output channels; not with `rank`).
        rank: inner channels r of the factorized form, or None for a full 1x1 conv.
        use_bias: add a bias (SE convs); convs followed by BatchNorm have none.
        bits_w, bits_a: weight / input-activation bit-widths (32 = float).
        signed_input: whether the input can be negative.
    """

    features: int
    groups: int = 1
    rank: int | None = None
    use_bias: bool = False
    bits_w: int = FLOAT_BITS
    bits_a: int = FLOAT_BITS
    signed_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [..., cin]; train. Returns: [..., features]."""
        cin = x.shape[-1]
        if self.rank is not None and self.groups != 1:
            raise ValueError("a factorized (rank) 1x1 conv cannot also be grouped")
        if cin % self.groups or self.features % self.groups:
            raise ValueError(f"groups={self.groups} must divide {cin} input and "
                             f"{self.features} output channels")
        x = _quant_input(x, self.bits_a, self.signed_input, train)
        if self.rank is None:
            kernel = self.param("kernel", conv_init, (1, 1, cin // self.groups, self.features))
            y = pointwise(x, fake_quant_weight(kernel, self.bits_w), self.groups)
        else:
            ku = self.param("kernel_u", conv_init, (1, 1, cin, self.rank))
            kv = self.param("kernel_v", conv_init, (1, 1, self.rank, self.features))
            y = pointwise(pointwise(x, fake_quant_weight(ku, self.bits_w)),
                          fake_quant_weight(kv, self.bits_w))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


class DepthwiseConv(nn.Module):
    """kxk depthwise conv, 'SAME' padding, no bias.

    Attributes:
        kernel_size: k.
        stride: spatial stride.
        bits_w, bits_a: weight / input-activation bit-widths (32 = float).
        signed_input: whether the input can be negative.
        impl: 'auto' | 'shift' | 'xla' (see :mod:`nas.blocks.depthwise`).
    """

    kernel_size: int = 3
    stride: int = 1
    bits_w: int = FLOAT_BITS
    bits_a: int = FLOAT_BITS
    signed_input: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, C]; train. Returns: [N, ceil(H/s), ceil(W/s), C]."""
        x = _quant_input(x, self.bits_a, self.signed_input, train)
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, 1, x.shape[-1]))
        return depthwise_conv(x, fake_quant_weight(kernel, self.bits_w), self.stride, self.impl)


class Dense(nn.Module):
    """Fully connected layer with bias (the classifier), optionally fake-quantized.

    Attributes:
        features: outputs.
        bits_w, bits_a: weight / input-activation bit-widths (32 = float).
        signed_input: whether the input can be negative.
    """

    features: int
    bits_w: int = FLOAT_BITS
    bits_a: int = FLOAT_BITS
    signed_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, cin]; train. Returns: [N, features]."""
        x = _quant_input(x, self.bits_a, self.signed_input, train)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.dot(x, fake_quant_weight(kernel, self.bits_w).astype(x.dtype)) + bias.astype(x.dtype)
