"""The blocks of a network, each built from one BlockSpec: stem, MBConv, DWSep, skip, head.

Quantized, pruned and factorized variants are knobs of the spec, not separate classes:
``bits_w``/``bits_a`` fake-quantize every conv (weights per output channel, inputs per tensor),
``width`` really shrinks the expanded channels (``spec.mid_channels``), ``rank`` factorizes the
1x1 convs (``spec.rank_channels``), ``groups`` groups them (with a channel shuffle after the
expand conv, as FBNet's g2 candidates).

Every block sows its output as ``intermediates/<block>/features`` (read with
``mutable=["intermediates"]`` for hint losses). Param names inside a block: ``expand``,
``expand_bn``, ``dw``, ``dw_bn``, ``se/reduce``, ``se/expand``, ``project``, ``project_bn``;
stem ``conv``, ``bn``; head ``conv``, ``bn``, ``classifier``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.activations import NONNEGATIVE, activation
from nas.blocks.convs import Conv, Dense, DepthwiseConv, PointwiseConv, channel_shuffle
from nas.spec import BlockSpec

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """Returns the BatchNorm used after every conv (scale and bias are params)."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        name=name)


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, 1x1 conv (bias) to `channels`, act, 1x1 conv (bias) back,
    sigmoid gate on the input.

    Attributes:
        channels: squeeze channels.
        act: activation name.
        bits_w, bits_a: bit-widths of its two convs.
        signed_input: whether the gated input can be negative.
    """

    channels: int
    act: str = "relu"
    bits_w: int = 32
    bits_a: int = 32
    signed_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, C]; train. Returns: x * gate, same shape."""
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = PointwiseConv(self.channels, use_bias=True, bits_w=self.bits_w, bits_a=self.bits_a,
                          signed_input=self.signed_input, name="reduce")(s, train)
        s = activation(self.act)(s)
        s = PointwiseConv(x.shape[-1], use_bias=True, bits_w=self.bits_w, bits_a=self.bits_a,
                          signed_input=self.act not in NONNEGATIVE, name="expand")(s, train)
        return x * jax.nn.sigmoid(s)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> BN -> act -> [shuffle] -> kxk depthwise -> BN -> act
    -> [SE] -> 1x1 project -> BN -> (+ input).

    Attributes:
        spec: the block's BlockSpec (op 'mbconv').
        depthwise_impl: 'auto' | 'shift' | 'xla'.
    """

    spec: BlockSpec
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train. Returns: [N, H', W', cout]."""
        s = self.spec
        act = activation(s.act)
        unsigned = s.act in NONNEGATIVE
        mid = s.mid_channels
        q = dict(bits_w=s.bits_w, bits_a=s.bits_a)
        y = PointwiseConv(mid, groups=s.groups, rank=s.rank_channels(s.cin, mid), signed_input=True,
                          name="expand", **q)(x, train)
        y = act(batch_norm(train, "expand_bn")(y))
        y = channel_shuffle(y, s.groups)
        y = DepthwiseConv(s.kernel, s.stride, signed_input=not unsigned, impl=self.depthwise_impl,
                          name="dw", **q)(y, train)
        y = act(batch_norm(train, "dw_bn")(y))
        if s.se_channels:
            y = SqueezeExcite(s.se_channels, s.act, signed_input=not unsigned, name="se", **q)(y, train)
        y = PointwiseConv(s.cout, groups=s.groups, rank=s.rank_channels(mid, s.cout),
                          signed_input=not unsigned, name="project", **q)(y, train)
        y = batch_norm(train, "project_bn")(y)
        if s.has_residual:
            y = y + x
        self.sow("intermediates", "features", y)
        return y


class DWSep(nn.Module):
    """Depthwise separable: kxk depthwise -> BN -> act -> [SE] -> 1x1 pointwise -> BN (+ input).

    Attributes:
        spec: the block's BlockSpec (op 'dwsep').
        depthwise_impl: 'auto' | 'shift' | 'xla'.
    """

    spec: BlockSpec
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train. Returns: [N, H', W', cout]."""
        s = self.spec
        unsigned = s.act in NONNEGATIVE
        q = dict(bits_w=s.bits_w, bits_a=s.bits_a)
        y = DepthwiseConv(s.kernel, s.stride, signed_input=True, impl=self.depthwise_impl,
                          name="dw", **q)(x, train)
        y = activation(s.act)(batch_norm(train, "dw_bn")(y))
        if s.se_channels:
            y = SqueezeExcite(s.se_channels, s.act, signed_input=not unsigned, name="se", **q)(y, train)
        y = PointwiseConv(s.cout, groups=s.groups, rank=s.rank_channels(s.cin, s.cout),
                          signed_input=not unsigned, name="project", **q)(y, train)
        y = batch_norm(train, "project_bn")(y)
        if s.has_residual:
            y = y + x
        self.sow("intermediates", "features", y)
        return y


class Skip(nn.Module):
    """Identity layer (op 'skip'); sows its output like every block.

    Attributes:
        spec: the block's BlockSpec (op 'skip').
    """

    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns `x` unchanged."""
        self.sow("intermediates", "features", x)
        return x


class Stem(nn.Module):
    """kxk conv (stride s) -> BN -> act.

    Attributes:
        spec: the stem's BlockSpec (op 'stem').
    """

    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, C] images; train. Returns: [N, H', W', cout]."""
        s = self.spec
        y = Conv(s.cout, s.kernel, s.stride, bits_w=s.bits_w, bits_a=s.bits_a, signed_input=True,
                 name="conv")(x, train)
        y = activation(s.act)(batch_norm(train, "bn")(y))
        self.sow("intermediates", "features", y)
        return y


class Head(nn.Module):
    """[1x1 conv to hidden -> BN -> act] -> global average pool -> dropout -> dense (bias).

    Attributes:
        spec: the head's BlockSpec (op 'head'; cout = number of classes).
    """

    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train (dropout uses the 'dropout' rng). Returns: logits [N, cout]."""
        s = self.spec
        q = dict(bits_w=s.bits_w, bits_a=s.bits_a)
        signed = True
        if s.hidden:
            x = PointwiseConv(s.hidden, signed_input=True, name="conv", **q)(x, train)
            x = activation(s.act)(batch_norm(train, "bn")(x))
            signed = s.act not in NONNEGATIVE
        x = jnp.mean(x, axis=(1, 2))
        if s.dropout > 0:
            x = nn.Dropout(s.dropout, deterministic=not train)(x)
        return Dense(s.cout, signed_input=signed, name="classifier", **q)(x, train)


def make_block(spec: BlockSpec, name: str, depthwise_impl: str = "auto") -> nn.Module:
    """Returns the Linen module of one BlockSpec.

    Args:
        spec: the layer (op stem / mbconv / dwsep / skip / head).
        name: the submodule name (the Arch label prefix, 'stem' or 'head').
        depthwise_impl: 'auto' | 'shift' | 'xla'.

    Raises:
        ValueError: unknown op.
    """
    if spec.op == "mbconv":
        return MBConv(spec, depthwise_impl, name=name)
    if spec.op == "dwsep":
        return DWSep(spec, depthwise_impl, name=name)
    if spec.op == "skip":
        return Skip(spec, name=name)
    if spec.op == "stem":
        return Stem(spec, name=name)
    if spec.op == "head":
        return Head(spec, name=name)
    raise ValueError(f"unknown block op {spec.op!r}")
