"""Every builder of a block program agrees on every shipped space: for one Arch per space (at
16x16, float bit-widths), the Flax network, the ONNX graph (onnxruntime) and the TFLite model
(LiteRT interpreter) give the same logits from the same weights, and the metrics' parameter
count is the Flax model's. (Supernet paths against Flax children: ``test_supernet_program``,
every shipped space; the Single-Path superkernel against its children: ``test_single_path``,
on nestable spaces - most shipped slots search knobs Single-Path does not nest.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.export.to_tflite import run_tflite, network_to_tflite
from nas.latency.backends.ort_backend import session
from nas.latency.flax_weights import onnx_weights
from nas.latency.onnx_blocks import network_to_onnx
from nas.metrics import arch_metrics
from nas.model import build_model
from nas.space import Space, shipped_space_names
from nas.training.step import count_params

from model_helpers import random_variables

RESOLUTION = 16


def _small(name: str) -> Space:
    d = Space.by_name(name).to_dict()
    d["input"] = dict(d["input"], resolution=RESOLUTION)
    return Space.from_dict(d, f"tests:{name}@{RESOLUTION}")


@pytest.mark.parametrize("name", shipped_space_names())
def test_flax_onnx_and_tflite_agree_and_params_match(name):
    space = _small(name)
    arch = space.validate({k: (32 if k.endswith(("bits_w", "bits_a")) else v)
                           for k, v in space.sample(1).items()})
    specs = space.block_specs(arch)
    model = build_model(space, arch)
    shape = (2, RESOLUTION, RESOLUTION, space.in_channels)
    variables = random_variables(model, shape, scale=0.2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    names = ["stem"] + [slot.prefix for slot in space.slots] + ["head"]
    weights = onnx_weights(variables)
    onx = network_to_onnx(specs, int8=[False] * len(specs), weights=weights, names=names,
                          batch=2, layout="NHWC")
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(session(onx.SerializeToString()).run(None, {"input": x})[0], want,
                               err_msg=f"{name}: onnx", **tol)
    tfl = network_to_tflite(specs, weights, names)
    np.testing.assert_allclose(run_tflite(tfl, x), want, err_msg=f"{name}: tflite", **tol)
    assert arch_metrics(space, arch)["params"] == count_params(variables["params"])
