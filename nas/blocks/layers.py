"""The blocks of a network, each built from one BlockSpec: stem, MBConv, DWSep, skip, head.

Every block is a :class:`ProgramBlock`: it interprets the op program of its spec
(:func:`nas.blocks.program.program`, where each block is defined once), with its layers given
as constructors (``conv``, ``pointwise``, ``depthwise``, ``dense``, ``norm``: the Flax idiom,
so quantized, pruned or masked layers plug in). The classes :class:`Stem`, :class:`MBConv`,
:class:`DWSep`, :class:`Skip`, :class:`SkipProjection` and :class:`Head` are names for it,
by op.

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
stem and skip_proj ``conv``, ``bn``; head ``conv``, ``bn``, ``classifier``; activation
quantizers ``q_input``, ``q_expand_out``, ... (one per point; ``se/q_se_*`` inside the SE).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.act_points import activation_points, runs_int8
from nas.blocks.convs import Conv as ConvLayer
from nas.blocks.convs import Dense as DenseLayer
from nas.blocks.convs import DepthwiseConv, PointwiseConv
from nas.blocks.plain_ops import plain_op
from nas.blocks.program import INPUT, Conv, Dense, Dropout, Op, Quantize, output_of, program
from nas.blocks.quant import ActQuant, deployed_bias
from nas.spec import BlockSpec, op_traits

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


def _scope(op: Op) -> str:
    """The submodule path an op's variables live under ('' = the block itself, 'se')."""
    path = op.name if isinstance(op, (Conv, Dense)) else getattr(op, "module", "")
    return path.rpartition("/")[0]


def _segments(ops: Sequence[Op]) -> list[tuple[str, list[Op]]]:
    """Splits a program into runs of consecutive ops under one submodule path; ops without
    variables (act, pool, mul, ...) join the run they sit in."""
    segments: list[tuple[str, list[Op]]] = []
    for op in ops:
        scope = _scope(op)
        has_vars = isinstance(op, (Conv, Dense, Quantize))
        if segments and (not has_vars or segments[-1][0] == scope):
            segments[-1][1].append(op)
        else:
            segments.append((scope if has_vars else "", [op]))
    return segments


def _run_ops(block: "ProgramBlock", ops: Sequence[Op], env: dict[str, jax.Array],
             points: ActPoints, train: bool) -> None:
    """Runs `ops` in order, reading and writing tensors in `env`. A function, not a method:
    modules it creates belong to the module being called (the block, or a :class:`_Scope`)."""
    for op in ops:
        env[op.out] = _run_op(block, op, env, points, train)


def _run_op(block: "ProgramBlock", op: Op, env: Mapping[str, jax.Array], points: ActPoints,
            train: bool) -> jax.Array:
    x = env[op.x]
    if isinstance(op, Quantize):
        return points(op.point, x)
    if isinstance(op, Conv):
        return _run_conv(block, op, x, points, train)
    y = plain_op(op, env)
    if y is not None:
        return y
    if isinstance(op, Dropout):
        return nn.Dropout(op.rate, deterministic=not train)(x)
    if isinstance(op, Dense):
        return block.dense(op.cout, bits_w=op.bits_w, name=op.name)(x, train)
    raise ValueError(f"unknown program op {op!r}")


def _run_conv(block: "ProgramBlock", op: Conv, x: jax.Array, points: ActPoints, train: bool
              ) -> jax.Array:
    """A conv of the block's constructors, then its BatchNorm (on the int8 grid at inference)."""
    name = op.name.rpartition("/")[2]
    if op.kind == "full":
        conv = block.conv(op.cout, op.kernel, op.stride, bits_w=op.bits_w, name=name)
        y = conv(x, train)
    elif op.kind == "depthwise":
        conv = block.depthwise(op.kernel, op.stride, bits_w=op.bits_w, impl=block.depthwise_impl,
                               name=name)
        y = conv(x, train)
    else:
        mid = points.module(op.mid.point) if op.mid is not None else None
        conv = block.pointwise(op.cout, groups=op.groups, rank=op.rank, use_bias=op.bias,
                               bits_w=op.bits_w, mid_quant=mid, name=name)
        y = conv(x, train, points.kernel_input_step(op.input_point) if op.bias else None)
    if op.bn is None:
        return y
    return batch_norm_on_grid(y, block.norm(train, op.bn), conv, points, op.input_point)


class _Scope(nn.Module):
    """A submodule (e.g. 'se') holding the variables of the ops run inside it."""

    @nn.compact
    def __call__(self, run: Callable[[], None]) -> None:
        run()


class ProgramBlock(nn.Module):
    """A block of :mod:`nas.blocks`: interprets the op program of its BlockSpec
    (:func:`nas.blocks.program.program`) op by op, with the layers given as constructors.

    Every op makes the Linen module its program names (``conv``, ``expand``, ``dw``,
    ``se/reduce``, ..., BatchNorm ``<bn>``, quantizers ``q_<point>``), so the params tree is
    :func:`nas.blocks.program.param_shapes`. The output is sown as ``intermediates/features``
    (except a classifier's logits).

    Attributes:
        spec: the block's BlockSpec.
        depthwise_impl: 'auto' | 'shift' | 'xla'.
        conv: constructor of dense kxk convs (:class:`Conv`'s signature).
        pointwise: constructor of 1x1 convs (:class:`PointwiseConv`'s).
        depthwise: constructor of depthwise convs (:class:`DepthwiseConv`'s).
        dense: constructor of the classifier (:class:`Dense`'s).
        norm: ``norm(train, name)`` -> the BatchNorm after a conv.
    """

    spec: BlockSpec
    depthwise_impl: str = "auto"
    conv: Callable[..., nn.Module] = ConvLayer
    pointwise: Callable[..., nn.Module] = PointwiseConv
    depthwise: Callable[..., nn.Module] = DepthwiseConv
    dense: Callable[..., nn.Module] = DenseLayer
    norm: Callable[[bool, str], nn.Module] = batch_norm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [N, H, W, cin]; train. Returns: [N, H', W', cout], or logits [N, cout]."""
        ops = program(self.spec)
        points = ActPoints(self.spec, train)
        env = {INPUT: x}
        scopes: dict[str, _Scope] = {}
        for scope, run in _segments(ops):
            if not scope:
                _run_ops(self, run, env, points, train)
                continue
            if scope not in scopes:
                scopes[scope] = _Scope(name=scope)
            scopes[scope](functools.partial(_run_ops, self, run, env, points, train))
        y = env[output_of(ops)]
        if not (ops and isinstance(ops[-1], Dense)):
            self.sow("intermediates", "features", y)
        return y


class Stem(ProgramBlock):
    """kxk conv (stride s) -> BN -> act; the input image quantized at the ``input`` point."""


class MBConv(ProgramBlock):
    """Inverted bottleneck: 1x1 expand -> BN -> act -> [shuffle] -> kxk depthwise -> BN -> act
    -> [SE] -> 1x1 project -> BN -> (+ input); activations quantized at the spec's points."""


class DWSep(ProgramBlock):
    """Depthwise separable: kxk depthwise -> BN -> act -> [SE] -> 1x1 pointwise -> BN (+ input)."""


class Skip(ProgramBlock):
    """Identity layer (op 'skip'); sows its output like every block."""


class SkipProjection(ProgramBlock):
    """Skip where the shape changes (op 'skip_proj'): 1x1 conv (stride s) -> BN -> act."""


class Head(ProgramBlock):
    """[1x1 conv to hidden -> BN -> act] -> global average pool -> dropout -> dense (bias)."""


#: Named subclasses of the blocks documented above; any other operator of
#: :data:`nas.spec.BLOCK_OPS` (e.g. 'fused_mbconv') is a plain :class:`ProgramBlock`.
BLOCKS = {"stem": Stem, "mbconv": MBConv, "dwsep": DWSep, "skip": Skip,
          "skip_proj": SkipProjection, "head": Head}


def make_block(spec: BlockSpec, name: str, depthwise_impl: str = "auto") -> nn.Module:
    """Returns the Linen module of one BlockSpec.

    Args:
        spec: the layer (an operator of :data:`nas.spec.BLOCK_OPS`).
        name: the submodule name (the Arch label prefix, 'stem' or 'head').
        depthwise_impl: 'auto' | 'shift' | 'xla'.

    Raises:
        ValueError: unknown op.
    """
    op_traits(spec.op)
    return BLOCKS.get(spec.op, ProgramBlock)(spec, depthwise_impl, name=name)
