"""The shipped `fbnet_cifar` space (FBNet in HW-NAS-Bench's CIFAR setting) and the projection
skip it needs (op 'skip_proj': a skip where the layer changes shape is a 1x1 conv -> BN -> ReLU).

The expected numbers below are written out from the paper's setting and counted by hand
(:func:`_hand_count`, which follows HW-NAS-Bench's reference PyTorch model, not the block
program), so a wrong stage table, a missing skip or a miscounted block fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.blocks.layers import make_block
from nas.blocks.program import Act, Conv, param_shapes, program
from nas.blocks.quant import weight_count
from nas.errors import NasInputError
from nas.export.to_onnx import export_onnx, run_onnx
from nas.metrics import layer_costs, network_costs
from nas.model import build_model, init_variables
from nas.single_path.plan import space_plan
from nas.space import Space, shipped_space_names
from nas.supernet.network import SuperNet, child_params
from nas.supernet.plan import SuperPlan

BLOCKS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
#: name -> (kernel, expansion, groups) of the inverted residuals.
MBCONV = {"k3_e1": (3, 1, 1), "k3_e1_g2": (3, 1, 2), "k3_e3": (3, 3, 1), "k3_e6": (3, 6, 1),
          "k5_e1": (5, 1, 1), "k5_e1_g2": (5, 1, 2), "k5_e3": (5, 3, 1), "k5_e6": (5, 6, 1)}
REPEATS = [1, 4, 4, 4, 4, 4, 1]
CHANNELS = [16, 24, 32, 64, 112, 184, 352]
STRIDES = [1, 1, 2, 2, 1, 2, 1]
HEAD, CLASSES = 1504, 100

#: One Arch with every block, identity skips and projection skips at stride 1 and 2.
ARCH_BLOCKS = ["k3_e1",                                  # s1: 16 -> 16, residual
               "skip", "k3_e1_g2", "skip", "k3_e3",      # s2: projection skip 16 -> 24 (stride 1)
               "skip", "k3_e6", "k5_e1", "k5_e1_g2",     # s3: projection skip, stride 2
               "k5_e3", "k5_e6", "k3_e1", "skip",        # s4: mbconv stride 2; identity skip
               "k5_e1_g2", "k3_e3", "skip", "k5_e3",     # s5: grouped 64 -> 112
               "k3_e6", "k3_e1_g2", "k5_e6", "skip",     # s6
               "skip"]                                   # s7: projection skip 184 -> 352


@pytest.fixture(scope="module")
def space():
    return Space.by_name("fbnet_cifar")


def _labels():
    """The 22 block labels, s1_b1_block ... s7_b1_block."""
    return [f"s{si}_b{bi}_block" for si, n in enumerate(REPEATS, 1) for bi in range(1, n + 1)]


def _arch(space, blocks=ARCH_BLOCKS):
    """The Arch choosing `blocks` (one name per layer, in order)."""
    return space.validate(dict(zip(_labels(), blocks)))


def _layer_table():
    """[(cin, cout, stride, input size)] of the 22 layers, from the paper's stage table."""
    out, cin, hw = [], 16, 32
    for n, cout, stride in zip(REPEATS, CHANNELS, STRIDES):
        for i in range(n):
            s = stride if i == 0 else 1
            out.append((cin, cout, s, hw))
            cin, hw = cout, hw // s
    return out


def _hand_count(blocks):
    """(params, MACs) of the network as HW-NAS-Bench's reference model builds it: ConvBN(ReLU)
    stem, ConvBlock (1x1 grouped expand, kxk depthwise, 1x1 grouped project, each + BN) or Skip
    (a 1x1 conv + BN + ReLU where the shape changes), 1x1 ConvBN head, pool, Linear. BN: 2
    parameters (scale, bias) per channel."""
    params = 3 * 3 * 3 * 16 + 2 * 16
    macs = 32 * 32 * 3 * 3 * 3 * 16
    for (cin, cout, s, hw), name in zip(_layer_table(), blocks):
        out = hw // s
        if name == "skip":
            if s != 1 or cin != cout:
                params += cin * cout + 2 * cout
                macs += out * out * cin * cout
            continue
        k, e, g = MBCONV[name]
        mid = cin * e
        params += cin * mid // g + 2 * mid + k * k * mid + 2 * mid + mid * cout // g + 2 * cout
        macs += hw * hw * cin * mid // g + out * out * (k * k * mid + mid * cout // g)
    params += 352 * HEAD + 2 * HEAD + HEAD * CLASSES + CLASSES
    macs += 4 * 4 * 352 * HEAD + HEAD * CLASSES
    return params, macs


# --------------------------------------------------------------------------- the space itself
def test_space_is_shipped_with_the_hw_nas_bench_cifar_skeleton(space):
    assert "fbnet_cifar" in shipped_space_names()
    assert space.resolution == (32, 32) and space.in_channels == 3 and space.num_classes == CLASSES
    stem = space.stem_spec
    assert (stem.cin, stem.cout, stem.kernel, stem.stride, stem.act) == (3, 16, 3, 1, "relu")
    head = space.head_spec
    assert (head.cin, head.hidden, head.cout, head.in_hw, head.act) == (352, HEAD, CLASSES,
                                                                          (4, 4), "relu")
    assert len(space.slots) == 22
    assert [(s.cin, s.cout, s.stride, s.in_hw[0]) for s in space.slots] == _layer_table()
    assert [s.prefix + "_block" for s in space.slots] == _labels() == space.labels()


def test_every_layer_chooses_the_nine_blocks_skip_included(space):
    assert space.decisions() == [(label, BLOCKS) for label in _labels()]
    assert space.size() == 9 ** 22  # nine distinct layers in every slot
    for slot in space.slots:
        for name, (k, e, g) in MBCONV.items():
            spec = slot.spec({"block": name})
            assert (spec.op, spec.kernel, spec.expand, spec.groups) == ("mbconv", k, e, g)
            assert spec.has_residual == (slot.stride == 1 and slot.cin == slot.cout)


def test_skip_is_identity_where_shapes_match_and_a_projection_elsewhere(space):
    projections = []
    for slot in space.slots:
        spec = slot.spec({"block": "skip"})
        if slot.stride == 1 and slot.cin == slot.cout:
            assert spec.op == "skip" and program(spec) == ()
            continue
        projections.append(slot.prefix)
        assert (spec.op, spec.kernel, spec.stride, spec.cin, spec.cout) == (
            "skip_proj", 1, slot.stride, slot.cin, slot.cout)
        conv, act = program(spec)
        assert isinstance(conv, Conv) and isinstance(act, Act) and act.fn == "relu"
        assert (conv.kernel, conv.stride, conv.groups, conv.bn) == (1, slot.stride, 1, "bn")
        assert spec.key().startswith("skip_proj-") and not spec.key().startswith("skip-")
    assert projections == ["s2_b1", "s3_b1", "s4_b1", "s5_b1", "s6_b1", "s7_b1"]


@pytest.mark.parametrize("prefix", ["s2_b1", "s3_b1", "s7_b1"])
def test_projection_skip_parameters_equal_a_1x1_conv_and_its_batchnorm(space, prefix):
    slot = next(s for s in space.slots if s.prefix == prefix)
    spec = slot.spec({"block": "skip"})
    cin, cout, s = slot.cin, slot.cout, slot.stride
    hand = cin * cout + 2 * cout  # 1x1 kernel + BN scale and bias
    costs = layer_costs(spec)
    out_hw = -(-slot.in_hw[0] // s)
    assert costs["params"] == hand and costs["macs"] == out_hw * out_hw * cin * cout
    assert param_shapes(spec) == {"conv/kernel": (1, 1, cin, cout), "bn/scale": (cout,),
                                  "bn/bias": (cout,)}
    block = make_block(spec, prefix)
    x = jax.ShapeDtypeStruct((1, *spec.in_hw, cin), np.float32)
    v = jax.eval_shape(lambda x: block.init(jax.random.key(0), x, train=False), x)
    assert weight_count(v["params"]) == hand
    y = jax.eval_shape(block.apply, v, x)
    assert y.shape == (1, out_hw, out_hw, cout)


def test_metrics_equal_an_independent_hand_count(space):
    specs = space.block_specs(_arch(space))
    layers = [layer_costs(s) for s in specs]
    # stem, one grouped block (s2_b2: 24 -> 24 at 32x32, k3, groups 2), head, by hand
    assert (layers[0]["params"], layers[0]["macs"]) == (27 * 16 + 32, 32 * 32 * 27 * 16)
    g2 = 24 * 24 // 2 + 48 + 9 * 24 + 48 + 24 * 24 // 2 + 48
    assert (layers[3]["params"], layers[3]["macs"]) == (
        g2, 32 * 32 * (24 * 24 // 2 + 9 * 24 + 24 * 24 // 2))
    assert (layers[-1]["params"], layers[-1]["macs"]) == (
        352 * HEAD + 2 * HEAD + HEAD * CLASSES + CLASSES, 16 * 352 * HEAD + HEAD * CLASSES)
    # the whole network, for this Arch, all-skip, all-k5_e6 and random Archs
    rng = np.random.default_rng(0)
    archs = [ARCH_BLOCKS, ["skip"] * 22, ["k5_e6"] * 22] + \
        [list(rng.choice(BLOCKS, 22)) for _ in range(5)]
    for blocks in archs:
        costs = network_costs(space.block_specs(_arch(space, blocks)))
        assert (costs["params"], costs["macs"]) == _hand_count(blocks), blocks


# ------------------------------------------------------------------ Flax model and ONNX export
def _trained_like(variables, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (so that a BN in the wrong place
    or a wrong stride shows), with the variance of activations kept near 1."""
    rng = np.random.default_rng(seed)

    def perturb(path, a):
        name = jax.tree_util.keystr(path)
        a = np.asarray(a)
        if name.endswith("['var']"):
            return (1.0 + 0.5 * rng.random(a.shape)).astype(np.float32)
        if name.endswith("['mean']") or ("bn" in name and name.endswith("['bias']")):
            return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        if name.endswith("['scale']"):
            return (0.5 + rng.random(a.shape)).astype(np.float32)
        return a

    return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.fixture(scope="module")
def model_run(space):
    arch = _arch(space)
    model = build_model(space, arch)
    variables = _trained_like(init_variables(model, jax.random.PRNGKey(0), (1, 32, 32, 3)))
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(jax.jit(model.apply)(variables, x))
    return arch, model, variables, x, logits


def test_flax_model_builds_and_runs_on_32x32x3(space, model_run):
    arch, model, variables, x, logits = model_run
    assert logits.shape == (4, CLASSES) and np.isfinite(logits).all()
    assert weight_count(variables["params"]) == network_costs(space.block_specs(arch))["params"] \
        == _hand_count(ARCH_BLOCKS)[0]
    for prefix in ("s2_b1", "s3_b1", "s7_b1"):  # the projection skips hold a conv and a BN
        assert set(variables["params"][prefix]) == {"conv", "bn"}
    assert "s2_b3" not in variables["params"]  # an identity skip has no parameters
    assert np.std(logits) > 1e-3  # not a constant function of the input


def test_onnx_export_agrees_with_flax(space, model_run):
    arch, _, variables, x, logits = model_run
    names = ("stem",) + tuple(s.prefix for s in space.slots) + ("head",)
    onnx_model, info = export_onnx(space.block_specs(arch), names, variables, batch=len(x))
    got = run_onnx(onnx_model, x, threads=1)
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(got, logits, rtol=1e-3, atol=1e-4 * scale)
    assert info["int8_layers"] == []  # a float network


# ------------------------------------------------------------------- the YAML option itself
KNOB_YAML = """
name: projection_knobs
input: {resolution: 8, channels: 3}
num_classes: 4
stem: {channels: 8, kernel: 3, stride: 1}
stages:
  - {channels: 16, stride: 2, repeats: 2, skip_projection: %s,
     knobs: {op: [mbconv, skip], kernel: [3, 5], bits_w: [8, 32]}}
"""


def test_skip_projection_works_with_op_knobs_and_canonicalizes_the_kernel(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(KNOB_YAML % "true")
    space = Space.from_yaml(path)
    assert space.choices("s1_b1_op") == ("mbconv", "skip")  # kept on the shape-changing layer
    arch = {"s1_b1_op": "skip", "s1_b1_kernel": 5, "s1_b1_bits_w": 8,
            "s1_b2_op": "skip", "s1_b2_kernel": 5, "s1_b2_bits_w": 8}
    canon = space.canonical(arch)
    assert canon["s1_b1_kernel"] == 3 and canon["s1_b1_bits_w"] == 8  # bits still matter
    specs = space.block_specs(canon)
    assert [s.op for s in specs[1:3]] == ["skip_proj", "skip"]
    assert specs[1].bits_w == 8 and specs[1].kernel == 1
    # single_path: the skip projection is an op switch's first branch, with the ladders a 1x1
    # conv has (bits, no kernel); the identity skip stays the keep ladder
    switch, keep = space_plan(space)
    assert switch.ladders["op"].values == ("skip", "mbconv") and "keep" in keep.ladders
    assert list(switch.branch("skip").ladders) == ["bits"]
    assert switch.spec({"op": 0, "bits": 0}) == specs[1]
    path.write_text(KNOB_YAML % "false")  # without it, skip is dropped where the shape changes
    assert "s1_b1_op" not in Space.from_yaml(path).labels()


@pytest.mark.parametrize("where,value", [("stage", "'true'"), ("defaults", 1)])
def test_a_bad_skip_projection_is_one_error_line(tmp_path, where, value):
    text = KNOB_YAML % "true"
    if where == "stage":
        text = text.replace("skip_projection: true", f"skip_projection: {value}")
    else:
        text += f"defaults: {{skip_projection: {value}}}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(NasInputError) as err:
        Space.from_yaml(path)
    line = str(err.value)
    assert "\n" not in line and "skip_projection" in line and "expected true or false" in line


# ------------------------------------------------------------------------------- supernet
def test_supernet_plan_has_the_nine_paths_and_its_child_equals_the_flax_network(space):
    plan = SuperPlan.from_space(space)
    for slot, sp in zip(space.slots, plan.slots):
        assert [p.name for p in sp.paths] == list(BLOCKS)
        assert sp.paths[-1].spec.op == ("skip" if slot.can_skip else "skip_proj")
    # pick == child network, on a cut-down copy (stages 2-4, one layer each, 3 of the blocks,
    # 8x8 input: the supernet's eager init costs time per path)
    d = space.to_dict()
    d.update(input={"resolution": 8, "channels": 3}, head={"channels": 32})
    cands = {n: c for n, c in d["stages"][0]["candidates"].items() if n in ("k3_e6", "k5_e1_g2",
                                                                          "skip")}
    d["stages"] = [dict(st, repeats=1, candidates=cands) for st in d["stages"][1:4]]
    small = Space.from_dict(d)
    net = SuperNet(small)
    rng = np.random.default_rng(0)  # random weights of the init's shapes (tracing, no compile)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                          jax.eval_shape(net.init, jax.random.PRNGKey(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    arch = small.validate({"s1_b1_block": "skip", "s2_b1_block": "skip", "s3_b1_block": "k5_e1_g2"})
    idx = {lab: jnp.int32(small.choices(lab).index(arch[lab])) for lab in small.labels()}
    model = build_model(small, arch)
    bs = init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 3))["batch_stats"]
    child, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        {"params": child_params(net, params, arch), "batch_stats": bs}, x)
    np.testing.assert_allclose(jax.jit(lambda p, x: net.apply(p, x, "pick", idx))(params, x),
                               child, atol=1e-4)
