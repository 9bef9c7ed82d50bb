"""The model builder: every shipped space builds, runs forward and backward, and its parameter
count equals the count computed from its BlockSpecs (nas.metrics)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.blocks.quant import weight_count

from nas.errors import NasInputError
from nas.metrics import layer_costs, network_costs
from nas.model import (build_model, check_buildable, default_block_names, init_variables,
                       variable_shapes, with_resolution)
from nas.space import Space
from nas.spec import BlockSpec

# fbnet and proxyless are 224x224 spaces: built at 32x32 here (same slots, smaller shapes).
SPACES = {"tiny": None, "mixed": None, "fbnet": 32, "proxyless": 32}


def _space(name):
    space = Space.by_name(name)
    return with_resolution(space, SPACES[name]) if SPACES[name] else space


def _count(tree):
    return weight_count(tree)  # quantizer steps are metadata, not weights


@pytest.mark.parametrize("name", sorted(SPACES))
def test_param_count_equals_blockspec_count(name):
    space = _space(name)
    for seed in range(2):
        arch = space.sample(seed)
        model = build_model(space, arch)
        shapes = variable_shapes(model, (1, *space.resolution, space.in_channels))
        specs = space.block_specs(arch)
        assert _count(shapes["params"]) == network_costs(specs)["params"]
        for spec, block in zip(specs, model.names):
            assert _count(shapes["params"].get(block, {})) == layer_costs(spec)["params"], block


@pytest.mark.parametrize("name,seed", [("tiny", 0), ("mixed", 0), ("fbnet", 1),
                                       ("proxyless", 2)])
def test_sampled_arch_runs_forward_and_backward(name, seed):
    space = _space(name)
    arch = space.sample(seed)
    # the 22-slot fbnet/proxyless nets with XLA's depthwise conv compile in about half the time;
    # the shift implementation's gradients are checked in test_blocks_depthwise and, in whole
    # networks, on tiny and mixed here
    impl = "xla" if name in ("fbnet", "proxyless") else "auto"
    model = build_model(space, arch, depthwise_impl=impl)
    shape = (2, *space.resolution, space.in_channels)
    variables = init_variables(model, jax.random.key(seed), shape)
    x = jax.random.normal(jax.random.key(1), shape)

    @jax.jit
    def step(params, batch_stats):
        def loss(params):
            logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, upd)
        return jax.grad(loss, has_aux=True)(params)

    grads, (logits, upd) = step(variables["params"], variables["batch_stats"])
    assert logits.shape == (2, space.num_classes) and bool(jnp.all(jnp.isfinite(logits)))
    assert set(upd) == {"batch_stats"}
    # every layer with weights gets a gradient, and BatchNorm statistics move
    for block, g in grads.items():
        assert sum(float(np.abs(leaf).sum()) for leaf in jax.tree.leaves(g)) > 0, block
    assert not np.allclose(upd["batch_stats"]["stem"]["bn"]["mean"],
                           variables["batch_stats"]["stem"]["bn"]["mean"])


def test_blocks_are_named_by_label_prefix_and_sow_features():
    space = Space.by_name("tiny")
    arch = space.sample(5)
    model = build_model(space, arch)
    assert model.names == ("stem",) + tuple(s.prefix for s in space.slots) + ("head",)
    assert default_block_names(model.specs) == model.names
    variables = init_variables(model, jax.random.key(0), (2, 16, 16, 1))
    with_weights = {n for n, s in zip(model.names, model.specs) if s.op != "skip"}
    assert set(variables["params"]) == with_weights
    x = jnp.ones((2, 16, 16, 1))
    logits, state = jax.jit(lambda v: model.apply(v, x, mutable=["intermediates"]))(variables)
    feats = state["intermediates"]
    assert set(feats) == set(model.names) - {"head"}
    for name, spec in zip(model.names[:-1], model.specs[:-1]):
        assert feats[name]["features"][0].shape == (2, *spec.out_hw, spec.cout)
    assert logits.shape == (2, 10)


def test_dropout_needs_rng_in_training_only():
    space = Space.by_name("mixed")  # head dropout 0.1
    model = build_model(space, space.sample(0))
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    x = jnp.ones((1, 32, 32, 3))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"]))
    jax.eval_shape(lambda: model.apply(variables, x))  # eval: no rng needed


def test_groups_with_rank_is_a_clear_input_error():
    definition = Space.by_name("tiny").to_dict()
    definition["stages"][-1]["knobs"]["groups"] = 2
    space = Space.from_dict(definition, "bad.yaml")
    arch = space.sample(0)
    arch["s4_b1_rank"] = 0.5
    with pytest.raises(NasInputError, match="groups and rank") as err:
        build_model(space, arch)
    assert "bad.yaml" in str(err.value) and "s4_b1" in str(err.value)


def test_host_init_matches_module_init_structure_and_scale():
    space = Space.by_name("tiny")
    model = build_model(space, space.sample(0))
    ours = init_variables(model, jax.random.key(0), (1, 16, 16, 1))
    theirs = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1))))
    assert jax.tree.structure(ours) == jax.tree.structure(
        {"params": theirs["params"], "batch_stats": theirs["batch_stats"]})
    kernel = np.asarray(ours["params"]["head"]["conv"]["kernel"])  # [1, 1, 64, 128], He fan-in
    assert abs(kernel.std() - np.sqrt(2 / 64)) < 0.1 * np.sqrt(2 / 64)
    again = init_variables(model, jax.random.key(0), (1, 16, 16, 1))
    other = init_variables(model, jax.random.key(1), (1, 16, 16, 1))
    np.testing.assert_array_equal(kernel, again["params"]["head"]["conv"]["kernel"])
    assert not np.array_equal(kernel, other["params"]["head"]["conv"]["kernel"])


def test_group_divisibility_is_checked_on_the_grouped_convs_of_the_program():
    """A Fused-MBConv groups only its 1x1 project (mid -> cout): its input channels need not
    divide; an MBConv's grouped expand reads them, so there they must."""
    fused = BlockSpec("fused_mbconv", 12, 16, 1, (8, 8), expand=2, groups=8)   # mid 24
    check_buildable([fused], ["s1_b1"])
    with pytest.raises(NasInputError, match="groups=8 does not divide 12 channels") as err:
        check_buildable([dataclasses.replace(fused, op="mbconv")], ["s1_b1"])
    assert "s1_b1" in str(err.value)
    with pytest.raises(NasInputError, match="does not divide 20 channels"):
        check_buildable([dataclasses.replace(fused, cout=20)], ["s1_b1"])
