"""Depthwise conv: the shift formulation and XLA's grouped conv agree with lax.conv (values and
gradients) for every kernel size, stride and odd/even input size the spaces use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nas.blocks.depthwise import (depthwise_conv, depthwise_shift, depthwise_xla, resolve_impl,
                                  same_padding)

# (kernel, stride, height, width): odd and even sizes, and a kernel larger than the input.
CASES = [(3, 1, 7, 8), (3, 2, 8, 7), (5, 1, 8, 8), (5, 2, 7, 9), (7, 1, 5, 6), (7, 2, 9, 10),
         (7, 2, 2, 3)]


def reference(x, kernel, stride):
    """lax.conv_general_dilated with one group per channel, written out independently."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1],
                                    precision=lax.Precision.HIGHEST)


def test_shift_and_xla_match_lax_conv_forward_and_gradients():
    """All cases in one compiled function (compiling each apart costs seconds on 2 cores)."""
    inputs = []
    for k, stride, h, w in CASES:
        kx, kk, kg = jax.random.split(jax.random.key(k * 100 + stride * 10 + h), 3)
        inputs.append((jax.random.normal(kx, (2, h, w, 3)), jax.random.normal(kk, (k, k, 1, 3)),
                       jax.random.normal(kg, (2, -(-h // stride), -(-w // stride), 3))))

    @jax.jit
    def values_and_grads(inputs):
        out = []
        for (x, kernel, cot), (_, stride, _, _) in zip(inputs, CASES):
            def run(fn):
                y, vjp = jax.vjp(lambda a, b: fn(a, b, stride), x, kernel)
                return (y,) + vjp(cot)
            out.append((run(depthwise_shift), run(depthwise_xla), run(reference)))
        return out

    for case, (shift, xla, ref), (_, _, cot) in zip(CASES, values_and_grads(inputs), inputs):
        assert shift[0].shape == cot.shape
        for name, got in (("shift", shift), ("xla", xla)):
            for a, b, what in zip(got, ref, ("output", "d_input", "d_kernel")):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name} {what} k,s,h,w={case}")


def test_same_padding_matches_lax_rule():
    # lax 'SAME': total = max((ceil(n/s) - 1) * s + k - n, 0), low = total // 2.
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(8, 7, 1) == (3, 3)
    assert same_padding(2, 7, 2) == (2, 3)
    assert lax.padtype_to_pads((8, 7, 2), (3, 3, 7), (2, 2, 2), "SAME") == [
        same_padding(8, 3, 2), same_padding(7, 3, 2), same_padding(2, 7, 2)]


def test_auto_picks_shift_on_cpu_and_rejects_unknown():
    assert jax.default_backend() == "cpu"
    assert resolve_impl("auto") == "shift"
    assert resolve_impl("xla") == "xla"
    with pytest.raises(ValueError, match="depthwise_impl"):
        depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)), impl="fast")
