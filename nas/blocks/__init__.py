"""Flax block library: MBConv, depthwise-separable, skip, stem, head, with quantized, pruned and
factorized variants as knobs of a BlockSpec (see :mod:`nas.blocks.layers`); each block is
defined once, as the op program of :mod:`nas.blocks.program`."""

from nas.blocks.depthwise import depthwise_conv, depthwise_shift, depthwise_xla, resolve_impl
from nas.blocks.factorized import factorize_pointwise_params, svd_factorize
from nas.blocks.layers import make_block
from nas.blocks.program import param_shapes, program
from nas.blocks.quant import ActQuant, fake_quant_act, fake_quant_weight

__all__ = ["ActQuant", "depthwise_conv", "depthwise_shift", "depthwise_xla", "factorize_pointwise_params",
           "fake_quant_act", "fake_quant_weight", "make_block", "param_shapes", "program", "resolve_impl",
           "svd_factorize"]
