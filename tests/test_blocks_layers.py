"""Blocks: pruning shrinks tensors as BlockSpec predicts, groups + channel shuffle, residual,
squeeze-excite and activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nas.blocks.activations import activation
from nas.blocks.convs import channel_shuffle, full_conv, full_conv_dot_grad, pointwise
from nas.blocks.layers import DWSep, MBConv, make_block
from nas.blocks.slicing import slice_block_variables
from nas.metrics import layer_costs
from nas.model import init_variables, variable_shapes
from nas.spec import BlockSpec

SPEC = BlockSpec("mbconv", cin=16, cout=24, stride=1, in_hw=(6, 6), kernel=3, expand=6)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("se_ratio", [0.0, 0.25])
def test_width_really_shrinks_tensors_as_mid_channels_predicts(se_ratio):
    full = BlockSpec(**dict(SPEC.to_dict(), in_hw=(6, 6), se_ratio=se_ratio))
    half = BlockSpec(**dict(full.to_dict(), in_hw=(6, 6), width=0.5))
    assert (full.mid_channels, half.mid_channels) == (96, 48)
    pf = variable_shapes(MBConv(full), (1, 6, 6, 16))["params"]
    ph = variable_shapes(MBConv(half), (1, 6, 6, 16))["params"]
    assert ph["expand"]["kernel"].shape == (1, 1, 16, 48)
    assert ph["dw"]["kernel"].shape == (3, 3, 1, 48)
    assert ph["project"]["kernel"].shape == (1, 1, 48, 24)
    # per expanded channel: expand weights + BN(2) + depthwise 3x3 + BN(2) + project weights
    # (+ SE: one reduce weight per squeeze channel, one expand weight per squeeze channel + bias)
    per_channel = 16 + 2 + 9 + 2 + 24 + (2 * half.se_channels + 1 if se_ratio else 0)
    assert _count(pf) - _count(ph) == 48 * per_channel
    assert _count(ph) == layer_costs(half)["params"]


@pytest.mark.parametrize("op, kernel_bns", [("mbconv", ("expand_bn", "dw_bn")),
                                              ("fused_mbconv", ("expand_bn",))])
def test_pruned_block_equals_full_block_with_dropped_channels_zeroed(op, kernel_bns):
    """first-k slicing read from the pruned block's program (kernels, SE, BatchNorm statistics):
    the pruned block computes what the full block computes when expanded channels k.. are
    switched off (their BatchNorm scale and bias zeroed)."""
    spec = BlockSpec(**dict(SPEC.to_dict(), op=op, in_hw=(6, 6), se_ratio=0.25, act="hswish"))
    pruned = BlockSpec(**dict(spec.to_dict(), in_hw=(6, 6), width=0.5))
    variables = init_variables(make_block(spec, "b"), jax.random.key(0), (2, 6, 6, 16))
    variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(1), v.shape),
                             variables)  # non-trivial BN statistics and biases
    keep = pruned.mid_channels
    masked = jax.tree.map(lambda v: v, variables)  # a copy whose dicts we may change
    for bn in kernel_bns:
        for name in ("scale", "bias"):
            masked["params"][bn][name] = variables["params"][bn][name].at[keep:].set(0.0)
    params, stats = slice_block_variables(pruned, variables["params"], variables["batch_stats"])
    sliced = {"params": params, "batch_stats": stats}
    assert jax.tree.map(np.shape, sliced) == \
        jax.tree.map(np.shape, variable_shapes(make_block(pruned, "b"), (1, 6, 6, 16)))
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 16))

    @jax.jit
    def both(masked, sliced):
        return make_block(spec, "b").apply(masked, x), make_block(pruned, "b").apply(sliced, x)

    full_out, pruned_out = both(masked, sliced)
    np.testing.assert_allclose(full_out, pruned_out, rtol=1e-4, atol=1e-4)


def test_grouped_pointwise_matches_grouped_conv_and_shuffle_interleaves():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
    kernel = jax.random.normal(jax.random.key(1), (1, 1, 4, 6))  # groups=2: 8 -> 6
    ref = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=2, precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(pointwise(x, kernel, groups=2), ref, rtol=1e-4, atol=1e-4)
    c = jnp.arange(6.0).reshape(1, 6)
    np.testing.assert_array_equal(channel_shuffle(c, 2), [[0, 3, 1, 4, 2, 5]])
    np.testing.assert_array_equal(channel_shuffle(c, 1), c)


def test_grouped_block_halves_the_1x1_weights():
    g1 = BlockSpec("mbconv", cin=16, cout=16, stride=1, in_hw=(4, 4), expand=1)
    g2 = BlockSpec("mbconv", cin=16, cout=16, stride=1, in_hw=(4, 4), expand=1, groups=2)
    p1 = variable_shapes(MBConv(g1), (1, 4, 4, 16))["params"]
    p2 = variable_shapes(MBConv(g2), (1, 4, 4, 16))["params"]
    assert p2["expand"]["kernel"].shape == (1, 1, 8, 16)
    assert _count(p1) - _count(p2) == 2 * 16 * 8
    assert _count(p2) == layer_costs(g2)["params"]


def test_residual_added_only_when_shapes_match():
    def out_with_zero_project_bn(spec, x):
        v = init_variables(MBConv(spec), jax.random.key(0), x.shape)
        v["params"]["project_bn"]["scale"] = jnp.zeros_like(v["params"]["project_bn"]["scale"])
        return MBConv(spec).apply(v, x)  # the block's branch outputs exactly 0

    x = jax.random.normal(jax.random.key(3), (1, 4, 4, 8))
    res = BlockSpec("mbconv", cin=8, cout=8, stride=1, in_hw=(4, 4), expand=3)
    nores = BlockSpec("mbconv", cin=8, cout=8, stride=1, in_hw=(4, 4), expand=3, residual=False)
    np.testing.assert_allclose(out_with_zero_project_bn(res, x), x, atol=1e-6)
    np.testing.assert_allclose(out_with_zero_project_bn(nores, x), 0.0, atol=1e-6)


def test_activations_and_squeeze_excite_gate():
    x = jnp.array([-4.0, -1.0, 0.0, 1.0, 3.0, 7.0])
    np.testing.assert_allclose(activation("relu6")(x), [0, 0, 0, 1, 3, 6])
    np.testing.assert_allclose(activation("hswish")(x), x * np.clip(x + 3, 0, 6) / 6, rtol=1e-6)
    np.testing.assert_allclose(activation("swish")(x), x / (1 + np.exp(-x)), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        activation("gelu")
    # SE at zero weights: reduce -> 0 -> act -> 0, expand bias 0 -> gate sigmoid(0) = 0.5, so a
    # block whose SE has zero weights computes half of the block without SE (the project conv
    # and a fresh BatchNorm are linear, no residual)
    spec = BlockSpec("dwsep", cin=8, cout=8, stride=1, in_hw=(4, 4), se_ratio=0.25, residual=False)
    plain = BlockSpec("dwsep", cin=8, cout=8, stride=1, in_hw=(4, 4), residual=False)
    assert spec.se_channels == 2
    y = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    v = init_variables(DWSep(spec), jax.random.key(0), y.shape)
    assert v["params"]["se"]["reduce"]["kernel"].shape == (1, 1, 8, 2)
    v["params"]["se"] = jax.tree.map(jnp.zeros_like, v["params"]["se"])
    without = {k: {n: t for n, t in tree.items() if n != "se"} for k, tree in v.items()}
    np.testing.assert_allclose(DWSep(spec).apply(v, y), 0.5 * DWSep(plain).apply(without, y),
                               rtol=1e-5, atol=1e-6)


def test_full_conv_with_dot_kernel_gradient_has_the_conv_gradients():
    # ProxylessNAS's CPU paths use it inside lax.switch: the same values and gradients as the
    # plain conv, at strides 1 and 2, odd and even sizes, every kernel size of the spaces
    rng = np.random.default_rng(0)
    for n, h, cin, cout, k, s in [(2, 9, 3, 5, 3, 2), (2, 8, 4, 3, 5, 1), (1, 7, 2, 4, 7, 2)]:
        x = jnp.asarray(rng.normal(size=(n, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)

        def grads(fn):
            return jax.grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b, s))), argnums=(0, 1))(x, w)
        np.testing.assert_array_equal(full_conv_dot_grad(x, w, s), full_conv(x, w, s))
        for got, want in zip(grads(full_conv_dot_grad), grads(full_conv)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
