"""Published architectures: our counts equal those of the reference implementations.

The reference numbers were measured on the PyTorch definitions (timm 1.0.31, pytorchcv 0.0.74)
as described in search_spaces/published/README.md: params = sum(p.numel()), MACs = forward
hooks on Conv2d and Linear at 1x3x224x224.
"""

import json

import pytest

from nas.archfile import load_arch
from nas.metrics import arch_metrics
from nas.space import Space, repo_root

PUBLISHED = repo_root() / "search_spaces" / "published"

# name: (params, MACs) of the reference implementation (see the README for how they were measured)
REFERENCE = {
    "mobilenet_v2": (3_504_872, 300_774_272),      # timm mobilenetv2_100
    "mnasnet_a1": (3_887_038, 311_579_072),        # timm semnasnet_100
    "mnasnet_b1": (4_383_312, 314_415_872),        # timm mnasnet_100
    "fbnet_a": (4_264_792, 238_989_752),           # timm builder on maskrcnn-benchmark FBNet-A
    "fbnet_b": (4_813_048, 296_614_728),           # timm builder on maskrcnn-benchmark FBNet-B
    "fbnet_c": (5_572_200, 384_960_160),           # timm fbnetc_100, pytorchcv fbnet_cb
    "proxyless_mobile": (4_080_512, 320_427_584),  # pytorchcv proxylessnas_mobile
    "proxyless_gpu": (7_119_848, 465_260_160),     # pytorchcv proxylessnas_gpu
    "proxyless_cpu": (4_361_648, 439_243_864),     # pytorchcv proxylessnas_cpu
    "spnasnet": (4_421_616, 333_467_072),          # timm spnasnet_100
}


def test_every_published_network_is_shipped():
    assert sorted(p.stem for p in PUBLISHED.glob("*.json")) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_macs_match_the_reference(name):
    af = load_arch(PUBLISHED / f"{name}.json")
    assert af.space.resolution == (224, 224) and af.space.num_classes == 1000
    assert af.meta["source"] and af.meta["reference_implementation"]
    m = arch_metrics(af.space, af.arch)
    assert (m["params"], m["macs"]) == REFERENCE[name]


@pytest.mark.parametrize("name, shipped", [("fbnet_b", "fbnet"), ("fbnet_c", "fbnet"),
                                           ("proxyless_mobile", "proxyless")])
def test_published_arch_is_a_point_of_the_shipped_space(name, shipped):
    """FBNet-B/C and ProxylessNAS-Mobile were searched in the spaces we ship: same network there."""
    data = json.loads((PUBLISHED / f"{name}.json").read_text())
    space = Space.by_name(shipped)
    m = arch_metrics(space, space.validate(data["arch"]))
    assert (m["params"], m["macs"]) == REFERENCE[name]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_flax_model_has_the_reference_parameter_count(name):
    """The Flax network built from the file (shapes only, no compile) has the reference params."""
    model_lib = pytest.importorskip("nas.model")
    import jax
    import numpy as np

    af = load_arch(PUBLISHED / f"{name}.json")
    model = model_lib.build_model(af.space, af.arch)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
    assert count == REFERENCE[name][0]
