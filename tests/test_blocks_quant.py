"""Fake quantization: levels per channel / tensor, straight-through gradients, running ranges,
learned step sizes (LSQ), and quantized depthwise convs that still get kernel gradients (qwix
fails there)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.model import init_variables
from nas.blocks.convs import DepthwiseConv
from nas.blocks.depthwise import depthwise_xla
from nas.blocks.quant import (ActQuant, act_grid, fake_quant_act, fake_quant_weight, init_quant_steps,
                              quantize)


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
    qn, qp = act_grid(bits, signed)
    step = 2.0 / qp
    # the int8 / uint8 grids of a runtime: [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1] times the step
    assert (qn, qp) == ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))
    assert len(np.unique(q)) == qp - qn + 1
    np.testing.assert_allclose(q / step, np.round(q / step), atol=1e-4)
    assert q.max() == pytest.approx(2.0) and q.min() == pytest.approx(qn * step)
    grad = np.asarray(jax.grad(lambda x: jnp.sum(fake_quant_act(x, amax, bits, signed)))(x))
    lo, hi = qn * step, 2.0
    inside = (np.asarray(x) > lo + 1e-6) & (np.asarray(x) < hi - 1e-6)
    outside = (np.asarray(x) < lo - 1e-6) | (np.asarray(x) > hi + 1e-6)
    np.testing.assert_array_equal(grad[inside], 1.0)
    np.testing.assert_array_equal(grad[outside], 0.0)


def test_lsq_step_gradient_is_the_papers():
    """d/ds of s * round(clip(x / s, qn, qp)): round(v) - v inside the grid, qn / qp outside."""
    x = jnp.array([-5.0, -0.37, 0.12, 0.5, 1.26, 9.0])
    s, qn, qp = 0.3, -4, 3
    per_element = jax.vmap(jax.grad(lambda s, xi: quantize(xi, s, qn, qp)), (None, 0))(s, x)
    v = np.asarray(x) / s
    expected = np.where(v < qn, qn, np.where(v > qp, qp, np.round(v) - v))
    np.testing.assert_allclose(per_element, expected, rtol=1e-5, atol=1e-6)
    gx = jax.grad(lambda x: jnp.sum(quantize(x, s, qn, qp)))(x)
    np.testing.assert_array_equal(np.asarray(gx), ((v > qn) & (v < qp)).astype(np.float32))


def test_learned_weight_step_clips_and_zero_means_minmax():
    w = jnp.array([[0.06, -0.9], [0.4, 0.2], [-0.31, 0.05]])  # [in, out]
    step = jnp.array([0.1, 0.0])  # channel 0 learned, channel 1 minmax
    q = np.asarray(fake_quant_weight(w, 4, step))
    np.testing.assert_allclose(q[:, 0], [0.1, 0.4, -0.3], atol=1e-6)  # grid 0.1, no clip needed
    np.testing.assert_allclose(q[:, 1], np.asarray(fake_quant_weight(w, 4))[:, 1], atol=1e-7)
    q2 = np.asarray(fake_quant_weight(w, 2, jnp.array([0.1, 0.1])))
    np.testing.assert_allclose(q2[:, 1], [-0.1, 0.1, 0.0], atol=1e-6)  # ternary, clipped


def test_act_quant_running_range_lives_in_batch_stats_and_learned_step_in_params():
    layer = ActQuant(bits=8, signed=True, momentum=0.5)
    x1 = jnp.array([1.0, -4.0, 2.0])
    variables = layer.init(jax.random.key(0), x1)
    assert float(variables["batch_stats"]["amax"]) == 0.0 and float(variables["params"]["step"]) == 0.0
    # before any training step the batch range is used
    np.testing.assert_allclose(layer.apply(variables, x1), x1, atol=4.0 / 127)
    _, upd = layer.apply(variables, x1, train=True, mutable=["batch_stats"])
    assert float(upd["batch_stats"]["amax"]) == 4.0  # first batch initializes the range
    upd = {"params": variables["params"], **upd}
    _, upd2 = layer.apply(upd, 2 * x1, train=True, mutable=["batch_stats"])
    assert float(upd2["batch_stats"]["amax"]) == 6.0  # 0.5 * 4 + 0.5 * 8
    y = layer.apply({"params": variables["params"], **upd2}, jnp.array([10.0, -10.0]))
    np.testing.assert_allclose(y, [6.0, -6.0 * 128 / 127], rtol=1e-6)  # minmax: step 6 / 127
    learned = {"params": {"step": jnp.float32(0.5)}, **upd2}  # a learned step wins over the range
    np.testing.assert_allclose(layer.apply(learned, jnp.array([10.0, 0.74, -100.0])),
                               [10.0, 0.5, -64.0], rtol=1e-6)


def test_init_quant_steps_sets_lsq_initial_steps_from_a_batch():
    from nas.model import Network
    from nas.spec import BlockSpec

    specs = (BlockSpec("stem", 1, 8, 1, (6, 6), kernel=3, bits_w=4, bits_a=8),
             BlockSpec("head", 8, 3, 1, (6, 6), bits_w=8, bits_a=8))
    model = Network(specs=specs)
    v = init_variables(model, jax.random.key(0), (1, 6, 6, 1))
    assert all(float(jnp.max(jnp.abs(leaf))) == 0 for path, leaf in
               jax.tree_util.tree_leaves_with_path(v["params"]) if "step" in jax.tree_util.keystr(path))
    x = jax.random.normal(jax.random.key(1), (16, 6, 6, 1))
    v2 = init_quant_steps(model, v, x)
    kernel = v2["params"]["stem"]["conv"]["kernel"]
    expected = 2 * jnp.mean(jnp.abs(kernel), axis=(0, 1, 2)) / jnp.sqrt(7.0)
    np.testing.assert_allclose(v2["params"]["stem"]["conv"]["kernel_step"], expected, rtol=1e-5)
    np.testing.assert_allclose(v2["params"]["stem"]["q_input"]["step"],
                               2 * jnp.mean(jnp.abs(x)) / jnp.sqrt(127.0), rtol=1e-5)
    assert float(v2["params"]["head"]["q_pool"]["step"]) > 0
    # set steps are kept; BatchNorm statistics untouched
    again = init_quant_steps(model, jax.tree.map(lambda a: a, v2), 3 * x)
    np.testing.assert_allclose(again["params"]["stem"]["q_input"]["step"],
                               v2["params"]["stem"]["q_input"]["step"])
    np.testing.assert_array_equal(v2["batch_stats"]["stem"]["bn"]["mean"], 0.0)


def test_quantized_depthwise_has_ste_kernel_gradient():
    """STE: d/dkernel of the 4-bit conv equals the float conv's gradient at the quantized kernel."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    layer = DepthwiseConv(kernel_size=3, stride=2, bits_w=4, impl="shift")
    params = init_variables(layer, jax.random.key(2), x.shape)["params"]  # step 0: minmax
    cot = jax.random.normal(jax.random.key(3), (2, 3, 3, 4))
    grad = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * cot))(params)["kernel"]
    kq = fake_quant_weight(params["kernel"], 4)
    expected = jax.grad(lambda k: jnp.sum(depthwise_xla(x, k, 2) * cot))(kq)
    assert float(jnp.abs(grad).sum()) > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)
    out = layer.apply({"params": params}, x)
    np.testing.assert_allclose(out, depthwise_xla(x, kq, 2), rtol=1e-4, atol=1e-4)
