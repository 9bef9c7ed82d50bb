"""Supernet paths interpret the op program: every path option of every shipped space equals its
Flax child block.

For a path option of each distinct signature (op, activation, groups, SE, factorized convs,
residual, sliced channels or kernel) of every shipped space the supernet supports, with
perturbed path weights (so a wrong slice of a bias or BatchNorm shows): the exact branch
(``branch_call``), the picked call (``picked_call``, sizes under ``lax.switch``) and the soft
call at one-hot weights (``masked_call``, FBNetV2 masks) all equal ``make_block(option spec)``
run on the sliced weights (``slice_path_params``). Every third case is quantized (the option's
bit-widths, else bits_w 4, bits_a 8) so the activation points and weight quantizers of the
program are checked too (exact and picked calls only: under quantization a masked sum may flip
a rounding); every sixth runs the path with hswish instead of its activation, so the
pre-activation points (absent with relu / relu6, the only activations of shipped paths) run.
Inputs are 8x8 (a path's weights do not depend on the resolution).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.blocks.layers import make_block
from nas.space import Space, shipped_space_names
from nas.supernet.mixing import Fixed, Mix, Pick
from nas.supernet.path_program import optional_segment, path_program
from nas.supernet.paths import (branch_call, init_path_params, masked_call, picked_call,
                                run_path, slice_path_params)
from nas.supernet.plan import SHARED_KNOBS, SuperPlan, option_shape
from nas.spec import BLOCK_OPS, BlockSpec

HW = (8, 8)


def _signature(path, shape):
    """What makes two path options run different code: op, activation, groups, SE, factorized
    convs, residual, and whether the option slices channels or kernel taps (one case each keeps
    the eager compiles, the test's cost, low)."""
    s = path.spec
    if s.op == "fused_mbconv":  # its SE, residual and 1x1 code is mbconv's: its own slicing only
        return (s.op, shape.rank_in is None, (shape.mid < s.mid_channels) == (shape.kernel < s.kernel))
    return (s.op, s.act, s.groups > 1, bool(shape.se),
            shape.rank_in is None, shape.rank_out is None, s.has_residual,
            shape.mid < s.mid_channels, shape.kernel < s.kernel)


def _cases():
    """[(space, slot plan, path, shape, option index)], one per distinct signature over all
    shipped spaces, and at least one per space."""
    seen, out = set(), []
    for name in shipped_space_names():
        plan = SuperPlan.from_space(Space.by_name(name))
        for sp in plan.slots:
            for index in np.ndindex(*sp.option_path.shape):
                pi, shape = sp.branches[int(sp.option_branch[index])]
                path = sp.paths[pi]
                key = _signature(path, shape)
                if path.spec.op == "skip" or (key in seen and any(c[0] == name for c in out)):
                    continue
                seen.add(key)
                out.append((name, sp, path, shape, index if sp.labels else ()))
    return out


CASES = _cases()


def _with_act(path, act):
    """The path with every spec's activation replaced (a path of the same program shape)."""
    return dataclasses.replace(path, spec=dataclasses.replace(path.spec, act=act),
                               specs=[dataclasses.replace(s, act=act) for s in path.specs])


def _one_hot_choices(sp, path, index, bits_w, bits_a):
    """{knob: Mix one-hot at the option | Fixed} as the soft supernet passes them."""
    values = sp.values(index)
    out = {}
    for knob in SHARED_KNOBS:
        if knob in sp.knobs:
            vals = sp.choices[sp.knobs.index(knob)]
            out[knob] = Mix(vals, jax.nn.one_hot(vals.index(values[knob]), len(vals)))
        else:
            out[knob] = Fixed(path.fixed[knob])
    out["bits_w"], out["bits_a"] = Fixed(bits_w), Fixed(bits_a)
    return out


def test_cases_cover_every_shipped_space_and_knob():
    assert {c[0] for c in CASES} == set(shipped_space_names())
    shapes = [c[3] for c in CASES]
    assert any(s.rank_in for s in shapes) and any(s.rank_out for s in shapes)
    assert any(s.se for s in shapes) and len({s.kernel for s in shapes}) > 1
    # every operator a slot can hold except the identity
    assert {c[2].spec.op for c in CASES} == set(BLOCK_OPS) - {"stem", "head", "skip"}
    assert any(c[2].spec.groups > 1 for c in CASES)
    assert {c[2].spec.has_residual for c in CASES} == {True, False}
    assert {c[2].spec.stride for c in CASES} == {1, 2}
    assert any(c[3].mid < c[2].spec.mid_channels for c in CASES)
    assert any(c[3].kernel < c[2].spec.kernel for c in CASES)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_path_option_equals_flax_child(case):
    name, sp, path, shape, index = CASES[case]
    quantized = case % 3 == 0
    if case % 6 == 0:
        path = _with_act(path, "hswish")
    values = sp.values(index) if index else {}
    bits_w = values.get("bits_w", 4) if quantized else 32
    bits_a = values.get("bits_a", 8) if quantized else 32
    spec = dataclasses.replace(path.option_spec(shape), in_hw=HW, bits_w=bits_w, bits_a=bits_a)
    assert option_shape(spec) == shape
    # the cost of a case is compiling its ops eagerly, one program per op and shape: an RBG key
    # (its random draws compile in a fraction of threefry's time), NumPy noise and input, and
    # the child's (BatchNorm) statistics from one jitted init, whose unused weights XLA drops
    key = jax.random.key(case, impl="unsafe_rbg")
    p = init_path_params(path, key)
    leaves, tree = jax.tree_util.tree_flatten(p)
    rng = np.random.default_rng(case)
    p = tree.unflatten([a + 0.1 * rng.standard_normal(a.shape, np.float32) for a in leaves])
    x = jnp.asarray(rng.standard_normal((2, *HW, spec.cin), np.float32))

    block = make_block(spec, "block", depthwise_impl="xla")
    stats = jax.jit(lambda k, x: block.init(k, x, train=False).get("batch_stats", {}))(key, x)
    want, _ = block.apply({"params": slice_path_params(path, p, shape), "batch_stats": stats}, x,
                          train=True, mutable=["batch_stats", "intermediates"])

    got = run_path(path, p, x, branch_call(path, shape, Fixed(bits_w), Fixed(bits_a)), "xla")
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"{name} branch")
    picks = [Pick((v,), jnp.int32(0)) for v in (shape.kernel, shape.se, shape.rank_in,
                                                  shape.rank_out)]
    got = run_path(path, p, x, picked_call(shape.mid, *picks, Fixed(bits_w), Fixed(bits_a)), "xla")
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"{name} pick")
    if index and not quantized:  # (quantized: a masked sum may flip a rounding)
        call = masked_call(path, _one_hot_choices(sp, path, index, bits_w, bits_a))
        got = run_path(path, p, x, call, "xla")
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4, err_msg=f"{name} soft")


def test_optional_segment_is_the_se_run():
    spec = BlockSpec("mbconv", 16, 16, 1, (8, 8), expand=3, se_ratio=0.25)
    pp = path_program(spec)
    start, stop = pp.optional
    seg = pp.ops[start:stop]
    assert type(seg[0]).__name__ == "Pool" and type(seg[-1]).__name__ == "Mul"
    assert pp.rank_stage == {"expand": "rank_in", "project": "rank_out"}
    assert pp.mid_convs == {"expand", "dw"} and pp.kernel_convs == {"dw"}
    assert optional_segment(pp.ops, pp.ops) is None
    with pytest.raises(ValueError):
        optional_segment(pp.ops, pp.ops[1:2] + pp.ops[4:5])
