"""Space, Arch and BlockSpec: the declared-once search space and what derives from it."""

import json

import numpy as np
import pytest

from nas.archfile import ArchFile, load_arch
from nas.errors import NasInputError
from nas.space import Space, shipped_space_names

SHIPPED = ["fbnet", "fbnet_cifar", "mixed", "proxyless", "tiny"]


def test_shipped_spaces_are_listed():
    assert set(SHIPPED) <= set(shipped_space_names())


@pytest.mark.parametrize("name", SHIPPED)
def test_sample_is_valid_canonical_and_roundtrips(name):
    space = Space.by_name(name)
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.validate(arch) == arch
        assert space.decode(space.encode(arch)) == arch
        assert json.loads(json.dumps(arch)) == arch
        assert len(space.block_specs(arch)) == len(space.slots) + 2


def test_sample_is_deterministic_per_seed():
    space = Space.by_name("mixed")
    assert space.sample(7) == space.sample(7)
    assert space.sample(7) != space.sample(8)


def test_fbnet_space_matches_the_paper():
    space = Space.by_name("fbnet")
    assert len(space.slots) == 22
    # 9 candidates where shapes allow a skip, 8 where the layer changes shape.
    counts = space.cardinalities()
    assert set(counts) == {8, 9}
    assert counts.count(8) == 6  # first layer of the 6 stages that change channels
    assert space.summary()["input"] == [224, 224, 3]


def test_proxyless_space_has_no_skip_on_shape_changing_layers():
    space = Space.by_name("proxyless")
    for slot in space.slots:
        ops = slot.choices.get("op", (slot.fixed["op"],))
        assert ("skip" in ops) == slot.can_skip


def test_size_counts_distinct_networks_not_label_products():
    space = Space.by_name("proxyless")
    # a searchable slot holds 6 MBConv variants, plus zero where shapes allow
    expected = 1
    for slot in space.slots:
        if "kernel" in slot.choices:
            expected *= 7 if slot.can_skip else 6
    assert space.size() == expected


def test_canonical_collapses_irrelevant_knobs():
    space = Space.by_name("tiny")
    arch = space.sample(0)
    arch.update({"s2_b2_op": "skip", "s2_b2_kernel": 7, "s2_b2_expand": 6})
    canon = space.canonical(arch)
    assert canon["s2_b2_kernel"] == space.choices("s2_b2_kernel")[0]
    other = dict(arch, s2_b2_kernel=5)
    assert space.arch_id(other) == space.arch_id(arch)
    assert space.arch_id(dict(arch, s2_b2_op="mbconv")) != space.arch_id(arch)


def test_mutate_changes_exactly_one_relevant_decision():
    space = Space.by_name("tiny")
    rng = np.random.default_rng(3)
    for _ in range(30):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        assert child != arch
        assert space.validate(child) == child
        specs_a, specs_c = space.block_specs(arch), space.block_specs(child)
        assert sum(a != c for a, c in zip(specs_a, specs_c)) == 1


def test_block_specs_follow_shapes():
    space = Space.by_name("tiny")
    specs = space.block_specs(space.sample(1))
    for prev, nxt in zip(specs, specs[1:]):
        assert nxt.cin == prev.cout
        assert nxt.in_hw == prev.out_hw
    assert specs[-1].cout == space.num_classes


def test_unique_block_specs_cover_every_sampled_network():
    space = Space.by_name("tiny")
    keys = {s.key() for s in space.unique_block_specs()}
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert {s.key() for s in space.block_specs(space.sample(rng))} <= keys


def test_keys_distinguish_knobs():
    space = Space.by_name("mixed")
    arch = space.sample(0)
    base = space.block_specs(arch)[2].key()
    for label in ("s2_b1_kernel", "s2_b1_bits_w", "s2_b1_width", "s2_b1_rank"):
        other = [v for v in space.choices(label) if v != arch[label]][0]
        assert space.block_specs(dict(arch, **{label: other}))[2].key() != base


@pytest.mark.parametrize("bad, field", [
    ({"s1_b1_kernel": 4}, "s1_b1_kernel"),
    ({"s1_b1_kernel": "3"}, "s1_b1_kernel"),
    ({"s9_b9_kernel": 3}, "s9_b9_kernel"),
    ({"s1_b1_op": "conv"}, "s1_b1_op"),
])
def test_validate_names_the_bad_label(bad, field):
    space = Space.by_name("tiny")
    arch = dict(space.sample(0), **bad)
    with pytest.raises(NasInputError) as info:
        space.validate(arch)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_validate_reports_missing_label():
    space = Space.by_name("tiny")
    arch = space.sample(0)
    del arch["s3_b1_se"]
    with pytest.raises(NasInputError, match="s3_b1_se: missing"):
        space.validate(arch)


def _definition(**changes):
    d = {"name": "t", "input": {"resolution": 8, "channels": 1}, "num_classes": 3,
         "stem": {"channels": 4, "stride": 1},
         "stages": [{"channels": 8, "stride": 2, "repeats": 2, "knobs": {"kernel": [3, 5]}}]}
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, field", [
    ({"stages": [{"channels": 8, "knobs": {"kernal": [3]}}]}, "stages[0].knobs.kernal"),
    ({"stages": [{"channels": 8, "knobs": {"kernel": [3, 4]}}]}, "stages[0].knobs.kernel"),
    ({"stages": [{"channels": 8, "knobs": {"bits_w": [3]}}]}, "stages[0].knobs.bits_w"),
    ({"stages": [{"channels": "8"}]}, "stages[0].channels"),
    ({"stages": [{"stride": 2}]}, "stages[0].channels"),
    ({"stages": [{"channels": 8, "stride": 2, "knobs": {"op": "skip"}}]}, "stages[0].knobs.op"),
    ({"input": {"resolution": 8}}, "input.channels"),
    ({"colour": 1}, "colour"),
    ({"num_classes": 1}, "num_classes"),
])
def test_malformed_space_names_the_field(changes, field):
    with pytest.raises(NasInputError) as info:
        Space.from_dict(_definition(**changes), "bad.yaml")
    assert info.value.field == field
    assert info.value.source == "bad.yaml"


def test_arch_file_roundtrip_and_errors(tmp_path):
    space = Space.by_name("tiny")
    arch = space.sample(2)
    path = tmp_path / "a.json"
    ArchFile(space, arch, {"note": "x"}).save(path)
    assert json.loads(path.read_text())["space"] == "tiny"
    loaded = load_arch(path)
    assert loaded.arch == arch and loaded.space.name == "tiny"

    inline = tmp_path / "inline.json"
    inline.write_text(json.dumps({"space": _definition(), "arch": {"s1_b1_kernel": 5, "s1_b2_kernel": 3}}))
    assert load_arch(inline).space.name == "t"

    broken = tmp_path / "broken.json"
    broken.write_text('{"space": "tiny", "arch": {')
    with pytest.raises(NasInputError, match="not valid JSON"):
        load_arch(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"space": "tiny", "arch": dict(arch, s1_b1_kernel=9)}))
    with pytest.raises(NasInputError) as info:
        load_arch(wrong)
    assert info.value.source == str(wrong) and info.value.field == "s1_b1_kernel"
