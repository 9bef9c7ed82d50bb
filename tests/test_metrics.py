"""Cost metrics (nas.metrics) against hand counts, and the `nas arch summary` command."""

import dataclasses
import json

import pytest

from nas.cli import main
from nas.metrics import arch_metrics, layer_costs, mac_energy_pj, network_costs
from nas.space import Space
from nas.spec import BlockSpec


def mbconv(**kw) -> BlockSpec:
    base = dict(op="mbconv", cin=16, cout=24, stride=2, in_hw=(16, 16), kernel=3, expand=6)
    base.update(kw)
    return BlockSpec(**base)


def test_mbconv_with_se_matches_hand_count():
    spec = mbconv(se_ratio=0.25)  # mid 96, SE squeeze 4 (of the 16 input channels), out 8x8
    params = (16 * 96 + 2 * 96          # expand 1x1 + BN
              + 96 * 9 + 2 * 96         # depthwise 3x3 + BN
              + 96 * 4 + 4 + 4 * 96 + 96  # SE convs with biases
              + 96 * 24 + 2 * 24)       # project 1x1 + BN
    macs = 16 * 16 * 16 * 96 + 8 * 8 * 96 * 9 + 96 * 4 + 4 * 96 + 8 * 8 * 96 * 24
    cost = layer_costs(spec)
    assert (cost["params"], cost["macs"]) == (params, macs)


def test_dwsep_stem_head_and_skip_match_hand_counts():
    dwsep = BlockSpec(op="dwsep", cin=32, cout=16, stride=1, in_hw=(8, 8), kernel=3)
    assert layer_costs(dwsep)["params"] == 32 * 9 + 64 + 32 * 16 + 32
    assert layer_costs(dwsep)["macs"] == 64 * 32 * 9 + 64 * 32 * 16
    stem = BlockSpec(op="stem", cin=3, cout=8, stride=2, in_hw=(10, 10), kernel=3)
    assert layer_costs(stem)["params"] == 3 * 8 * 9 + 16
    assert layer_costs(stem)["macs"] == 5 * 5 * 8 * 27
    head = BlockSpec(op="head", cin=64, cout=10, stride=1, in_hw=(4, 4), hidden=128)
    assert layer_costs(head)["params"] == 64 * 128 + 256 + 128 * 10 + 10
    assert layer_costs(head)["macs"] == 16 * 64 * 128 + 128 * 10
    bare_head = dataclasses.replace(head, hidden=0)
    assert layer_costs(bare_head)["params"] == 64 * 10 + 10
    skip = BlockSpec(op="skip", cin=24, cout=24, stride=1, in_hw=(8, 8))
    cost = layer_costs(skip)
    assert (cost["params"], cost["macs"], cost["energy_pj"]) == (0, 0, 0)


def test_bops_are_macs_times_bit_widths():
    space = Space.by_name("mixed")
    specs = space.block_specs(space.sample(3))
    int8 = [dataclasses.replace(s, bits_w=8, bits_a=8) for s in specs]
    net = network_costs(int8)
    assert net["bops"] == 64 * net["macs"]
    w4a8 = layer_costs(mbconv(bits_w=4, bits_a=8))
    assert w4a8["bops"] == 32 * w4a8["macs"]
    fp = network_costs([dataclasses.replace(s, bits_w=32, bits_a=32) for s in specs])
    assert fp["bops"] == 1024 * fp["macs"] and fp["macs"] == net["macs"]


def test_pruning_half_width_removes_the_pruned_channels():
    full = layer_costs(mbconv(cin=24, cout=24, stride=1, width=1.0))
    half = layer_costs(mbconv(cin=24, cout=24, stride=1, width=0.5))
    removed = 72  # 144 expanded channels -> 72 kept
    expected = (24 * removed + 2 * removed) + (removed * 9 + 2 * removed) + removed * 24
    assert full["params"] - half["params"] == expected
    assert half["macs"] < full["macs"]


def test_rank_factorizes_the_one_by_one_convs():
    full = layer_costs(mbconv(cin=32, cout=32, stride=1, expand=4))
    low = layer_costs(mbconv(cin=32, cout=32, stride=1, expand=4, rank=0.5))
    # expand 32->128 becomes 32->16->128; project 128->32 becomes 128->16->32
    delta = (16 * (32 + 128) - 32 * 128) + (16 * (128 + 32) - 128 * 32)
    assert low["params"] - full["params"] == delta
    assert low["params"] < full["params"]


def test_groups_split_both_one_by_one_convs():
    full = layer_costs(mbconv(cin=32, cout=32, stride=1, expand=1))
    g2 = layer_costs(mbconv(cin=32, cout=32, stride=1, expand=1, groups=2))
    assert full["params"] - g2["params"] == 32 * 32 // 2 * 2


def test_size_bytes_scale_with_weight_bits():
    space = Space.by_name("mixed")
    specs = space.block_specs(space.sample(1))
    sizes = {b: network_costs([dataclasses.replace(s, bits_w=b) for s in specs]) for b in (4, 8, 32)}
    s4, s8, s32 = (sizes[b]["size_bytes"] for b in (4, 8, 32))
    # size = weights * bits_w / 8 + 4 * (BatchNorm and bias values): 32->8 saves 3 bytes a weight,
    # 8->4 half a byte.
    assert s32 - s8 == 6 * (s8 - s4) > 0
    assert s32 == sizes[32]["size_bytes_fp32"] == 4 * sizes[32]["params"]
    assert sizes[4]["size_bytes_fp32"] == s32
    stem = BlockSpec(op="stem", cin=3, cout=8, stride=2, in_hw=(10, 10), kernel=3, bits_w=4)
    # 216 weights at 4 bit = 108 bytes; 16 BatchNorm values stay float = 64 bytes
    assert network_costs([stem])["size_bytes"] == 108 + 64


def test_peak_activation_counts_input_output_and_residual():
    spec = BlockSpec(op="mbconv", cin=8, cout=8, stride=1, in_hw=(4, 4), expand=2)
    # expand: 128 in + 256 out; depthwise: 256 + 256 + 128 kept for the residual (the peak);
    # project: 256 + 128 + 128.
    assert layer_costs(spec)["peak_activation_bits"] == 640 * 32
    net = network_costs([dataclasses.replace(spec, bits_a=8)])
    assert net["peak_activation_bytes"] == 640


def test_energy_follows_the_published_per_op_energies():
    assert mac_energy_pj(32, 32) == pytest.approx(3.7 + 0.9)
    assert mac_energy_pj(8, 8) == pytest.approx(0.2 + 0.06)
    assert mac_energy_pj(4, 4) == pytest.approx(0.05 + 0.03)
    assert mac_energy_pj(8, 32) == mac_energy_pj(32, 32)
    stem = BlockSpec(op="stem", cin=3, cout=8, stride=2, in_hw=(10, 10), kernel=3)
    macs, params, acts = 25 * 8 * 27, 3 * 8 * 9 + 16, 300 + 200
    expected = macs * 4.6 + params * 640 + acts * 5  # fp32 words: DRAM weights, SRAM activations
    assert layer_costs(stem)["energy_pj"] == pytest.approx(expected)
    space = Space.by_name("mixed")
    specs = space.block_specs(space.sample(2))
    e32 = network_costs([dataclasses.replace(s, bits_w=32, bits_a=32) for s in specs])["energy_mj"]
    e8 = network_costs([dataclasses.replace(s, bits_w=8, bits_a=8) for s in specs])["energy_mj"]
    assert 0 < e8 < e32 / 3


def test_arch_metrics_on_a_tiny_arch():
    space = Space.by_name("tiny")
    arch = space.sample(0)
    m = arch_metrics(space, arch)
    assert m["space"] == "tiny" and m["arch_id"] == space.arch_id(arch)
    assert m["params"] == sum(layer["params"] for layer in m["layers"]) > 0
    assert len(m["layers"]) == len(space.block_specs(arch))


# ------------------------------------------------------------------------------------ the CLI
def test_cli_summary_json(tmp_path, capsys):
    space = Space.by_name("tiny")
    arch = space.sample(4)
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"space": "tiny", "arch": arch}))
    assert main(["arch", "summary", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = arch_metrics(space, arch)
    for key in ("params", "macs", "bops", "size_bytes", "peak_activation_bytes"):
        assert out[key] == expected[key]
    assert out["energy_mj"] == pytest.approx(expected["energy_mj"], rel=1e-6)
    assert out["space"] == "tiny" and out["arch_id"] == space.arch_id(arch)
    assert main(["arch", "summary", str(path), "--layers"]) == 0
    text = capsys.readouterr().out
    assert f"{expected['params']:,}" in text and "mbconv-in:" in text


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"space": "tiny", "arch": {"s1_b1_op": "conv"}}', "s1_b1_op"),
    ('{"space": "nope", "arch": {}}', "unknown space"),
])
def test_cli_summary_bad_file_is_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["arch", "summary", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and fragment in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("space_name, seed", [("tiny", 0), ("tiny", 3), ("mixed", 1)])
def test_params_equal_the_flax_model_parameter_count(space_name, seed):
    """The counts from BlockSpecs agree with the Flax model built from the same Arch."""
    model_lib = pytest.importorskip("nas.model")
    import jax
    import numpy as np

    space = Space.by_name(space_name)
    arch = space.sample(seed)
    model = model_lib.build_model(space, arch)
    h, w = space.resolution
    x = jax.ShapeDtypeStruct((1, h, w, space.in_channels), np.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # shapes only, no compile
    from nas.blocks.quant import weight_count

    count = weight_count(variables["params"])  # weights only: quantizer steps are metadata
    assert count == arch_metrics(space, arch)["params"]
