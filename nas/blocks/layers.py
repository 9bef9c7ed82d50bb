"""The blocks of a network, each built from one BlockSpec: stem, MBConv, DWSep, skip, head.

Quantized, pruned and factorized variants are knobs of the spec, not separate classes:
``bits_w`` fake-quantizes every conv's weights (per output channel, learned steps), ``bits_a``
the block's activations at the points of :mod:`nas.blocks.act_points` (``q_<point>``
submodules, the tensors an int8 runtime quantizes),
``width`` really shrinks the expanded channels (``spec.mid_channels``), ``rank`` factorizes the
1x1 convs (``spec.rank_channels``), ``groups`` groups them (with a channel shuffle after the
expand conv, as FBNet's g2 candidates).

Every block sows its output as ``intermediates/<block>/features`` (read with
``mutable=["intermediates"]`` for hint losses). Param names inside a block: ``expand``,
``expand_bn``, ``dw``, ``dw_bn``, ``se/reduce``, ``se/expand``, ``project``, ``project_bn``;
stem ``conv``, ``bn``; head ``conv``, ``bn``, ``classifier``; activation quantizers ``q_input``,
``q_expand_out``, ... (one per point).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.act_points import activation_points, runs_int8
from nas.blocks.activations import activation
from nas.blocks.convs import Conv, Dense, DepthwiseConv, PointwiseConv, channel_shuffle
from nas.blocks.quant import ActQuant, deployed_bias
from nas.spec import BlockSpec

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """Returns the BatchNorm used after every conv (scale and bias are params)."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        name=name)


class ActPoints:
    """Quantizes the activation points of one block (see :mod:`nas.blocks.act_points`).

    Created inside a block's ``__call__``; each call ``points(name, x)`` applies the block's
    :class:`ActQuant` ``q_<name>`` (signedness and bits from the spec), or returns `x` where
    the block has no such point (float activations).

    Args:
        spec: the block's spec.
        train: update running ranges.
    """

    def __init__(self, spec: BlockSpec, train: bool):
        self.spec = spec
        self.train = train
        self.points = activation_points(spec)
        self.int8 = runs_int8(spec)
        self._modules: dict[str, ActQuant] = {}

    def module(self, name: str) -> ActQuant | None:
        """Returns the quantizer module of point `name` (None where there is no such point)."""
        if name not in self.points:
            return None
        if name not in self._modules:
            self._modules[name] = ActQuant(bits=self.spec.bits_a, signed=self.points[name],
                                           name=f"q_{name}")
        return self._modules[name]

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        """Returns `x` quantized at point `name` (unchanged where there is none)."""
        quant = self.module(name)
        return x if quant is None else quant(x, self.train)

    def kernel_input_step(self, name: str) -> jax.Array | None:
        """The inference step of point `name` where it feeds an int8 kernel (else None).

        Int8 kernels add their bias on the grid ``input step * weight step``; the blocks round
        biases to it at inference, so the JAX model computes what the integer kernel does.
        """
        if not self.int8 or self.train or name not in self._modules:
            return None
        quant = self._modules[name]
        return None if quant.is_initializing() else quant.eval_step()


def batch_norm_on_grid(y: jax.Array, bn: nn.BatchNorm, conv: nn.Module, points: ActPoints,
                       input_point: str) -> jax.Array:
    """BatchNorm after a conv; at inference in int8 layers, folded into ``y * m + b`` with the
    bias ``b`` rounded to the int32 grid of the fused int8 kernel (``s_x * |s_w m|``).

    Args:
        y: the conv's output.
        bn: its BatchNorm module.
        conv: the (bound, called) conv module (for its weight steps).
        points: the block's points.
        input_point: the point that quantized the conv's input.

    Returns:
        The normalized output.
    """
    out = bn(y)
    step = points.kernel_input_step(input_point)
    if step is None:
        return out
    scale, bias = bn.get_variable("params", "scale"), bn.get_variable("params", "bias")
    mean, var = bn.get_variable("batch_stats", "mean"), bn.get_variable("batch_stats", "var")
    mult = scale / jnp.sqrt(var + BN_EPSILON)
    folded = bias - mean * mult
    return y * mult + deployed_bias(folded, step * jnp.abs(conv.output_step() * mult))


def point_act(y: jax.Array, act: str, points: ActPoints, pre_act: str) -> jax.Array:
    """The pre-activation point `pre_act` (non-saturating activations only), then `act`."""
    return activation(act)(points(pre_act, y))


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, 1x1 conv (bias) to `channels`, act, 1x1 conv (bias) back,
    sigmoid gate on the input; quantized at the ``se_*`` points of the block's spec.

    Attributes:
        channels: squeeze channels.
        spec: the enclosing block's spec (activation, bit-widths, points).
    """

    channels: int
    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, points: ActPoints | None = None) -> jax.Array:
        """Args: x [N, H, W, C] (already quantized); train; the block's points.
        Returns: x * gate, same shape."""
        points = points or ActPoints(self.spec, train)
        bits_w = self.spec.bits_w
        s = points("se_pool", jnp.mean(x, axis=(1, 2), keepdims=True))
        s = PointwiseConv(self.channels, use_bias=True, bits_w=bits_w, name="reduce")(
            s, train, points.kernel_input_step("se_pool"))
        s = points("se_act", point_act(s, self.spec.act, points, "se_reduce_pre_act"))
        s = PointwiseConv(x.shape[-1], use_bias=True, bits_w=bits_w, name="expand")(
            s, train, points.kernel_input_step("se_act"))
        gate = points("se_gate", jax.nn.sigmoid(points("se_expand_out", s)))
        return points("se_out", x * gate)


def _pointwise_bn(x, train, points: ActPoints, spec: BlockSpec, features: int, groups: int,
                  rank: int | None, name: str, input_point: str, bn_name: str | None = None
                  ) -> jax.Array:
    """A (grouped or factorized) 1x1 conv ``name`` and its BatchNorm (``<name>_bn``)."""
    conv = PointwiseConv(features, groups=groups, rank=rank, bits_w=spec.bits_w,
                         mid_quant=points.module(f"{name}_u"), name=name)
    y = conv(x, train)
    if rank is not None:
        input_point = f"{name}_u"
    bn = batch_norm(train, bn_name or f"{name}_bn")
    return batch_norm_on_grid(y, bn, conv, points, input_point)


def _depthwise_bn(x, train, points: ActPoints, spec: BlockSpec, impl: str, input_point: str):
    """The kxk depthwise conv ``dw``, its BatchNorm, the activation and the ``dw_out`` point."""
    conv = DepthwiseConv(spec.kernel, spec.stride, bits_w=spec.bits_w, impl=impl, name="dw")
    y = batch_norm_on_grid(conv(x, train), batch_norm(train, "dw_bn"), conv, points, input_point)
    return points("dw_out", point_act(y, spec.act, points, "dw_pre_act"))


def _se_project(y, x, train, points: ActPoints, spec: BlockSpec, mid: int, block: nn.Module):
    """[SE ->] 1x1 project -> BN [-> + input]: the common end of MBConv and DWSep."""
    project_input = "dw_out"
    if spec.se_channels:
        y = SqueezeExcite(spec.se_channels, spec, name="se")(y, train, points)
        project_input = "se_out"
    y = _pointwise_bn(y, train, points, spec, spec.cout, spec.groups,
                      spec.rank_channels(mid, spec.cout), "project", project_input)
    if spec.has_residual:
        y = points("project_out", y) + x
    block.sow("intermediates", "features", y)
    return y


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> BN -> act -> [shuffle] -> kxk depthwise -> BN -> act
    -> [SE] -> 1x1 project -> BN -> (+ input); activations quantized at the spec's points.

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
        points = ActPoints(s, train)
        mid = s.mid_channels
        x = points("input", x)
        y = _pointwise_bn(x, train, points, s, mid, s.groups, s.rank_channels(s.cin, mid),
                          "expand", "input")
        y = point_act(y, s.act, points, "expand_pre_act")
        y = points("expand_out", channel_shuffle(y, s.groups))
        y = _depthwise_bn(y, train, points, s, self.depthwise_impl, "expand_out")
        return _se_project(y, x, train, points, s, mid, self)


class DWSep(nn.Module):
    """Depthwise separable: kxk depthwise -> BN -> act -> [SE] -> 1x1 pointwise -> BN (+ input);
    activations quantized at the spec's points.

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
        points = ActPoints(s, train)
        x = points("input", x)
        y = _depthwise_bn(x, train, points, s, self.depthwise_impl, "input")
        return _se_project(y, x, train, points, s, s.cin, self)


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
    """kxk conv (stride s) -> BN -> act; the input image quantized at the ``input`` point.

    Attributes:
        spec: the stem's BlockSpec (op 'stem').
    """

    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, C] images; train. Returns: [N, H', W', cout]."""
        s = self.spec
        points = ActPoints(s, train)
        conv = Conv(s.cout, s.kernel, s.stride, bits_w=s.bits_w, name="conv")
        y = batch_norm_on_grid(conv(points("input", x), train), batch_norm(train, "bn"), conv,
                               points, "input")
        y = point_act(y, s.act, points, "conv_pre_act")
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
        points = ActPoints(s, train)
        if s.hidden:
            x = _pointwise_bn(points("input", x), train, points, s, s.hidden, 1, None, "conv",
                              "input", bn_name="bn")
            x = points("head_act", point_act(x, s.act, points, "conv_pre_act"))
        x = points("pool", jnp.mean(x, axis=(1, 2)))
        if s.dropout > 0:
            x = nn.Dropout(s.dropout, deterministic=not train)(x)
        return Dense(s.cout, bits_w=s.bits_w, name="classifier")(x, train)


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
