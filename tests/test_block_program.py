"""The op program of a block (nas.blocks.program) against the Flax blocks it describes.

Over the layers of every structure in the shipped spaces: the metrics' parameter count (from the program)
equals the Flax block's initialized parameter count, and the program's parameter layout equals
the Flax block's params and batch_stats trees, shape for shape (jax.eval_shape: no compile).
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import pytest

from nas.blocks.layers import make_block
from nas.blocks.program import (INPUT, Add, Conv, Dense, Dropout, Mul, Quantize, Shuffle,
                                batch_stats_shapes, output_of, param_shapes, program)
from nas.blocks.quant import weight_count
from nas.metrics import layer_costs
from nas.space import Space, shipped_space_names
from nas.spec import BLOCK_OPS, BlockSpec


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _structure(s: BlockSpec) -> tuple:
    """What decides a layer's ops and parameter names (not their sizes)."""
    return (s.op, s.act, s.kernel, s.stride, s.se_ratio > 0, s.rank is not None, s.groups > 1,
            s.has_residual, s.width < 1, s.bits_w < 32, s.bits_a < 32, s.hidden > 0)


def _all_specs() -> list[BlockSpec]:
    """Two layers (different sizes where the spaces have them) of every structure found in the
    shipped spaces (~650 of their ~2500 unique layers), plus quantized versions of a few."""
    specs, per_structure = [], {}
    for name in shipped_space_names():
        for spec in Space.by_name(name).unique_block_specs():
            kept = per_structure.setdefault(_structure(spec), [])
            if len(kept) < 2:
                kept.append(spec)
                specs.append(spec)
    # quantized versions of a few (learned weight steps, activation quantizers, factor points)
    quantized = [s for s in specs if s.rank is not None or s.se_ratio
                 or s.op in ("stem", "skip_proj", "head")]
    specs += [dataclasses.replace(s, bits_w=4, bits_a=8, act=a)
              for s, a in zip(quantized[:48], ["relu", "hswish"] * 24)]
    return specs


@pytest.fixture(scope="module")
def flax_shapes():
    """[(spec, Flax params shapes, batch_stats shapes)] for every spec (eval_shape only; XLA's
    depthwise, which traces 2.5x faster than the shift one and has the same variables)."""
    out = []
    rng = jax.random.key(0)
    for spec in _all_specs():
        x = jax.ShapeDtypeStruct((1, *spec.in_hw, spec.cin), jnp.float32)
        init = partial(make_block(spec, "block", depthwise_impl="xla").init, train=False)
        v = jax.eval_shape(init, {"params": rng, "dropout": rng}, x)
        out.append((spec, v.get("params", {}), v.get("batch_stats", {})))
    return out


def test_every_shipped_space_is_covered(flax_shapes):
    ops = {s.op for s, _, _ in flax_shapes}
    assert ops == set(BLOCK_OPS)  # every block operator is in some shipped space
    assert len(flax_shapes) > 500
    knobs = [s for s, _, _ in flax_shapes]
    assert any(s.rank for s in knobs) and any(s.groups > 1 for s in knobs)
    assert any(s.width < 1 for s in knobs) and any(s.se_ratio for s in knobs)
    assert any(s.bits_a < 32 for s in knobs) and any(s.hidden for s in knobs)


def test_program_params_equal_the_flax_parameter_count(flax_shapes):
    """The independent count: metrics (program) vs the Flax block's initialized weights."""
    bad = [(s.key(), layer_costs(s)["params"], weight_count(p)) for s, p, _ in flax_shapes
           if layer_costs(s)["params"] != weight_count(p)]
    assert not bad, bad[:5]


def test_param_layout_equals_the_flax_variables(flax_shapes):
    for spec, params, stats in flax_shapes:
        assert param_shapes(spec) == _flat_shapes(params), spec.key()
        assert batch_stats_shapes(spec) == _flat_shapes(stats), spec.key()


def test_mbconv_program_reads_as_the_block():
    spec = BlockSpec("mbconv", 16, 16, 1, (8, 8), kernel=5, expand=4, se_ratio=0.25, groups=2)
    ops = program(spec)
    convs = [op for op in ops if isinstance(op, Conv)]
    assert [c.name for c in convs] == ["expand", "dw", "se/reduce", "se/expand", "project"]
    assert [c.bn for c in convs] == ["expand_bn", "dw_bn", None, None, "project_bn"]
    assert [c.groups for c in convs] == [2, 64, 1, 1, 2]
    assert convs[1].kind == "depthwise" and convs[1].kernel == 5
    assert any(isinstance(op, Shuffle) and op.groups == 2 for op in ops)
    mul = next(op for op in ops if isinstance(op, Mul))
    dw_act = ops[ops.index(convs[1]) + 1]
    assert mul.x == dw_act.out and mul.y != mul.x  # the SE gates the depthwise output
    add = ops[-1]
    assert isinstance(add, Add) and add.y == INPUT and output_of(ops) == add.out
    assert not any(isinstance(op, Quantize) for op in ops)  # float activations: no points
    # every tensor is written once and read after it is written (SSA)
    written = {INPUT}
    for op in ops:
        for name in (op.x, getattr(op, "y", INPUT)):
            assert name in written, (op, written)
        assert op.out not in written
        written.add(op.out)


def test_fused_mbconv_program_and_its_independent_count():
    """Fused-MBConv (EfficientNetV2): a kxk conv replaces 1x1 expand + depthwise; params and
    MACs of the program's metrics equal a count by hand."""
    cin, cout, k, e, hw = 16, 16, 3, 4, 8
    spec = BlockSpec("fused_mbconv", cin, cout, 1, (hw, hw), kernel=k, expand=e, se_ratio=0.25,
                     width=0.5, rank=0.5)
    convs = [op for op in program(spec) if isinstance(op, Conv)]
    assert [(c.name, c.kind) for c in convs] == [("expand", "full"), ("se/reduce", "pointwise"),
                                                 ("se/expand", "pointwise"), ("project", "pointwise")]
    mid, se, r = 32, 4, 8   # round(16 * 4 * 0.5); round(16 * 0.25); 0.5 * min(32, 16)
    assert (convs[0].kernel, convs[0].cout, convs[-1].rank) == (k, mid, r)
    assert isinstance(program(spec)[-1], Add)
    params = (k * k * cin * mid + 2 * mid            # expand conv + BN
              + mid * se + se + se * mid + mid       # SE convs with biases
              + mid * r + r * cout + 2 * cout)       # factorized project + BN
    macs = hw * hw * (k * k * cin * mid + mid * r + r * cout) + mid * se + se * mid
    costs = layer_costs(spec)
    assert (costs["params"], costs["macs"]) == (params, macs)
    q = program(dataclasses.replace(spec, bits_a=8, act="hswish"))
    points = [op.point for op in q if isinstance(op, Quantize)]
    assert points[:3] == ["input", "expand_pre_act", "expand_out"] and "project_out" in points
    assert not any(p.startswith("dw") for p in points)


def test_quantized_program_has_the_activation_points_and_factor_points():
    spec = BlockSpec("mbconv", 16, 24, 2, (8, 8), expand=3, rank=0.5, bits_w=4, bits_a=8,
                     act="swish", se_ratio=0.25)
    ops = program(spec)
    points = [op.point for op in ops if isinstance(op, Quantize)]
    assert points[:3] == ["input", "expand_pre_act", "expand_out"]
    assert "se_reduce_pre_act" in points and "project_out" not in points  # stride 2: no residual
    expand = next(op for op in ops if isinstance(op, Conv) and op.name == "expand")
    assert expand.rank == 8 and expand.mid.point == "expand_u" and expand.input_point == "expand_u"
    shapes = param_shapes(spec)
    assert shapes["expand/kernel_u"] == (1, 1, 16, 8) and shapes["expand/kernel_v_step"] == (48,)
    assert shapes["q_expand_u/step"] == () and shapes["se/q_se_pool/step"] == ()
    dw = next(op for op in ops if isinstance(op, Conv) and op.name == "dw")
    assert dw.input_point == "expand_out" and dw.out_shape == (4, 4, 48)


def test_skip_is_empty_and_head_ends_in_the_classifier():
    assert program(BlockSpec("skip", 8, 8, 1, (4, 4))) == ()
    assert output_of(()) == INPUT
    head = program(BlockSpec("head", 24, 10, 1, (4, 4), hidden=32, dropout=0.2))
    assert isinstance(head[-1], Dense) and (head[-1].cin, head[-1].cout) == (32, 10)
    assert any(isinstance(op, Dropout) and op.rate == 0.2 for op in head)
    with pytest.raises(ValueError, match="unknown block op"):
        program(BlockSpec("conv", 8, 8, 1, (4, 4)))
