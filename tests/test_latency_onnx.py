"""ONNX graphs of blocks: same function as the Flax model, and int8 kernels where quantized."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from nas.latency.backends.ort_backend import session
from nas.latency.flax_weights import onnx_weights
from nas.latency.onnx_blocks import block_to_onnx, network_to_onnx
from nas.spec import BlockSpec

from model_helpers import random_variables

# Every block feature at least once: odd input size, stride 2, SE, groups + shuffle, rank, width,
# every activation, dwsep, skip, head with a hidden conv.
SPECS = (
    BlockSpec("stem", 3, 16, 2, (15, 15), kernel=3, act="relu6"),
    BlockSpec("mbconv", 16, 16, 1, (8, 8), kernel=5, expand=4, se_ratio=0.25, act="hswish", groups=2),
    BlockSpec("mbconv", 16, 24, 2, (8, 8), kernel=3, expand=3, rank=0.5, width=0.5, act="swish"),
    BlockSpec("dwsep", 24, 24, 1, (4, 4), kernel=7, se_ratio=0.25),
    BlockSpec("skip", 24, 24, 1, (4, 4)),
    BlockSpec("head", 24, 10, 1, (4, 4), hidden=32, act="relu6"),
)


def test_float_network_matches_the_flax_model():
    from nas.model import Network, default_block_names

    model = Network(specs=SPECS)
    shape = (2, 15, 15, 3)
    variables = random_variables(model, shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    onx = network_to_onnx(SPECS, int8=[False] * len(SPECS), weights=onnx_weights(variables),
                          names=default_block_names(SPECS), batch=2, layout="NHWC")
    onnx.checker.check_model(onx)
    got = session(onx.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _optimized_ops(model, tmp_path):
    path = str(tmp_path / "opt.onnx")
    session(model.SerializeToString(), optimized_path=path)
    return {n.op_type for n in onnx.load(path).graph.node}


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[2], SPECS[3]], ids=["mbconv-se-g2", "mbconv-rank", "dwsep"])
def test_int8_blocks_run_int8_kernels(spec, tmp_path):
    q = BlockSpec(**{**spec.to_dict(), "in_hw": spec.in_hw, "bits_w": 4, "bits_a": 8})
    ops = _optimized_ops(block_to_onnx(q, int8=True), tmp_path)
    assert "QLinearConv" in ops and "Conv" not in ops, ops
    assert "QLinearConv" not in _optimized_ops(block_to_onnx(spec, int8=False), tmp_path)


def test_int8_block_stays_close_to_float():
    spec = SPECS[3]
    x = np.random.default_rng(1).standard_normal((1, spec.cin, *spec.in_hw)).astype(np.float32)
    f = session(block_to_onnx(spec, int8=False).SerializeToString()).run(None, {"input": x})[0]
    q = session(block_to_onnx(spec, int8=True).SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(q - f).max() < 0.1 * np.abs(f).max()  # same weights, 8-bit rounding only
