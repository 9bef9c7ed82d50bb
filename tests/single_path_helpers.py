"""Shared fixtures of the single-path tests: a small nestable space and a synthetic latency table."""

from __future__ import annotations

from nas.latency.build import keys_to_measure
from nas.latency.table import LatencyTable, new_table_data
from nas.metrics import layer_costs
from nas.space import Space

#: Every kind of ladder in three slots at 8x8: op gate, skip, mid (expand x width), kernel,
#: SE, three bit-widths, rank.
SMALL = {
    "name": "sp_small", "input": {"resolution": 8, "channels": 1}, "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 32, "act": "relu", "dropout": 0.0},
    "defaults": {"act": "relu", "se_ratio": 0.25},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "dwsep"], "kernel": [3, 5], "expand": 1}},
        {"channels": 8, "stride": 1, "repeats": 1,
         "knobs": {"op": ["mbconv", "skip"], "kernel": [3, 5, 7], "expand": [3, 6],
                   "width": [0.5, 1.0], "bits_w": [4, 8, 32], "se": [False, True]}},
        {"channels": 16, "stride": 2, "repeats": 1,
         "knobs": {"kernel": [3, 5], "expand": [3, 6], "rank": [None, 0.5], "bits_w": [8, 32]}},
    ]}

#: A fourth slot for :func:`small_space` (fused=True): a Fused-MBConv, whose kxk conv nests the
#: kernel and mid ladders, with skip, SE and rank.
FUSED_STAGE = {"channels": 16, "stride": 1, "repeats": 1,
               "knobs": {"op": ["fused_mbconv", "skip"], "kernel": [3, 5], "expand": [2, 4],
                         "width": [0.5, 1.0], "rank": [None, 0.5], "se": [False, True]}}


def small_space(fused: bool = False) -> Space:
    """Returns the small test space (with `fused`: plus the :data:`FUSED_STAGE` slot)."""
    if fused:
        return Space.from_dict(dict(SMALL, stages=SMALL["stages"] + [FUSED_STAGE]), "tests:sp_small")
    return Space.from_dict(SMALL, "tests:sp_small")


def fake_table(space: Space, per_mac_ms: float = 1e-5, per_layer_ms: float = 0.01) -> LatencyTable:
    """Returns an in-memory latency table whose entries grow with each layer's MACs."""
    data = new_table_data(space, {"name": "fake", "precision_rule": "float", "versions": {},
                                  "device": "test"}, {})
    for key, spec in keys_to_measure(space, "float").items():
        ms = per_layer_ms + per_mac_ms * layer_costs(spec)["macs"]
        data["entries"][key] = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "n": 1}
    return LatencyTable(data, space)


def trained_once(space: Space, x):
    """Returns (network, variables) of `space`'s superkernel after one training batch `x`
    (BatchNorm moments, running ranges and residual statistics measured)."""
    import jax

    from nas.single_path.network import SinglePathNetwork, init_single_path

    net = SinglePathNetwork(space)
    # an RBG key: its random draws compile in a third of threefry's time (the tests using this
    # compare the superkernel with its children on the same weights, whatever they are)
    variables = init_single_path(net, jax.random.key(0, impl="unsafe_rbg"))
    _, upd = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    return net, {"params": variables["params"], "batch_stats": upd["batch_stats"]}



def one_slot_space(name: str, knobs: dict, dropout: float = 0.0) -> dict:
    """Returns the definition of a one-slot space at 8x8 (4 channels, 4 classes): train steps
    that compile in seconds, for tests of one mechanism.

    Args:
        name: the space's name.
        knobs: the slot's knobs (e.g. ``{"op": ["mbconv", "skip"], "kernel": [3, 5]}``).
        dropout: the head's dropout (> 0 makes the step's key reach the program).

    Returns:
        The space definition (``Space.from_dict`` takes it).
    """
    return {"name": name, "input": {"resolution": 8, "channels": 1}, "num_classes": 4,
            "stem": {"channels": 4, "kernel": 3, "stride": 1, "act": "relu"},
            "head": {"channels": 8, "act": "relu", "dropout": dropout},
            "defaults": {"act": "relu"},
            "stages": [{"channels": 4, "stride": 1, "repeats": 1, "knobs": knobs}]}
