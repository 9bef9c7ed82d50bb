"""Fake quantization: levels per channel / tensor, straight-through gradients, running ranges,
and quantized depthwise convs that still get kernel gradients (qwix fails there)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.model import init_variables
from nas.blocks.convs import DepthwiseConv
from nas.blocks.depthwise import depthwise_xla
from nas.blocks.quant import ActQuant, fake_quant_act, fake_quant_weight


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_quant_levels_per_output_channel_and_identity_gradient(bits):
    w = jax.random.normal(jax.random.key(bits), (3, 3, 16, 5)) * jnp.arange(1, 6)  # scales differ
    q = np.asarray(fake_quant_weight(w, bits))
    for c in range(5):
        levels = np.unique(q[..., c])
        assert len(levels) <= 2 ** bits
        # symmetric grid: levels are integer multiples of the channel's step, and max |w| is kept
        step = np.abs(np.asarray(w[..., c])).max() / (2 ** (bits - 1) - 1)
        np.testing.assert_allclose(levels / step, np.round(levels / step), atol=1e-4)
        assert np.isclose(np.abs(q[..., c]).max(), np.abs(np.asarray(w[..., c])).max(), rtol=1e-5)
    assert len(np.unique(q)) > 2 ** bits or bits == 8  # per channel, not per tensor
    cot = jax.random.normal(jax.random.key(9), w.shape)
    grad = jax.grad(lambda w: jnp.sum(fake_quant_weight(w, bits) * cot))(w)
    np.testing.assert_allclose(grad, cot, rtol=1e-6)


def test_32_bits_is_exact_identity():
    w = jax.random.normal(jax.random.key(0), (4, 4))
    assert fake_quant_weight(w, 32) is w
    assert fake_quant_act(w, jnp.float32(1.0), 32, True) is w


@pytest.mark.parametrize("bits,signed", [(2, False), (4, True), (8, False), (8, True)])
def test_act_quant_levels_and_clipped_ste_gradient(bits, signed):
    x = jnp.linspace(-3.0, 3.0, 1201)
    amax = jnp.float32(2.0)
    q = np.asarray(fake_quant_act(x, amax, bits, signed))
    assert len(np.unique(q)) <= 2 ** bits
    assert q.max() == pytest.approx(2.0) and q.min() == pytest.approx(-2.0 if signed else 0.0)
    grad = np.asarray(jax.grad(lambda x: jnp.sum(fake_quant_act(x, amax, bits, signed)))(x))
    lo = -2.0 if signed else 0.0
    inside = (np.asarray(x) > lo) & (np.asarray(x) < 2.0)
    outside = (np.asarray(x) < lo) | (np.asarray(x) > 2.0)
    np.testing.assert_array_equal(grad[inside], 1.0)
    np.testing.assert_array_equal(grad[outside], 0.0)


def test_act_quant_running_range_lives_in_batch_stats():
    layer = ActQuant(bits=8, signed=True, momentum=0.5)
    x1 = jnp.array([1.0, -4.0, 2.0])
    variables = layer.init(jax.random.key(0), x1)
    assert set(variables) == {"batch_stats"} and float(variables["batch_stats"]["amax"]) == 0.0
    # before any training step the batch range is used
    np.testing.assert_allclose(layer.apply(variables, x1), x1, atol=4.0 / 127)
    _, upd = layer.apply(variables, x1, train=True, mutable=["batch_stats"])
    assert float(upd["batch_stats"]["amax"]) == 4.0  # first batch initializes the range
    _, upd = layer.apply(upd, 2 * x1, train=True, mutable=["batch_stats"])
    assert float(upd["batch_stats"]["amax"]) == 6.0  # 0.5 * 4 + 0.5 * 8
    y = layer.apply(upd, jnp.array([10.0, -10.0]))  # eval: clipped at the running range
    np.testing.assert_allclose(y, [6.0, -6.0], rtol=1e-6)


def test_quantized_depthwise_has_ste_kernel_gradient():
    """STE: d/dkernel of the 4-bit conv equals the float conv's gradient at the quantized kernel."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    layer = DepthwiseConv(kernel_size=3, stride=2, bits_w=4, bits_a=32, impl="shift")
    params = init_variables(layer, jax.random.key(2), x.shape)["params"]
    cot = jax.random.normal(jax.random.key(3), (2, 3, 3, 4))
    grad = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * cot))(params)["kernel"]
    kq = fake_quant_weight(params["kernel"], 4)
    expected = jax.grad(lambda k: jnp.sum(depthwise_xla(x, k, 2) * cot))(kq)
    assert float(jnp.abs(grad).sum()) > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)
    out = layer.apply({"params": params}, x)
    np.testing.assert_allclose(out, depthwise_xla(x, kq, 2), rtol=1e-4, atol=1e-4)
