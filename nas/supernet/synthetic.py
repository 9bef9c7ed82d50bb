"""A latency table computed from MACs, for tests and benchmarks that need no measured table.

Each layer's "latency" is ``overhead_ms + macs * ms_per_mac`` (skip layers: ``skip_ms``), stored
under the same keys, through the same :class:`~nas.latency.table.LatencyTable` as a measured
table, so ``predict`` and ``expected`` behave exactly as with a real one.

Example:
    >>> table = macs_latency_table(Space.by_name("tiny"))
    >>> table.predict(arch)
"""

from __future__ import annotations

from nas.latency.table import LatencyTable
from nas.metrics import layer_costs
from nas.space import Space


def macs_latency_table(space: Space, ms_per_mac: float = 1e-6, overhead_ms: float = 0.002,
                       skip_ms: float = 0.0005) -> LatencyTable:
    """Returns an in-memory table of MAC-proportional latencies (backend 'fake', rule 'float').

    Args:
        space: the Space.
        ms_per_mac: milliseconds per multiply-accumulate.
        overhead_ms: fixed cost of every non-skip layer.
        skip_ms: cost of a skip layer.
    """
    table = LatencyTable({"backend": {"name": "fake", "precision_rule": "float"}, "entries": {}},
                         space, source="<macs-latency>")
    entries = {}
    for spec in space.unique_block_specs():
        key = table.key(spec)
        ms = skip_ms if spec.op == "skip" else overhead_ms + layer_costs(spec)["macs"] * ms_per_mac
        entries[key] = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "n": 1}
    table.data["entries"] = entries
    return table


#: A one-slot space whose only decision is the depthwise kernel (3, 5 or 7), for
#: :func:`pair_distance_task`: only the 7x7 kernel sees both pixels of a pair.
KERNEL_TASK_SPACE = {
    "name": "kernel_task", "input": {"resolution": 14, "channels": 1}, "num_classes": 2,
    "stem": {"channels": 8, "kernel": 1, "stride": 1}, "head": {"channels": 16},
    "stages": [{"channels": 8, "stride": 1, "knobs": {"op": "dwsep", "kernel": [3, 5, 7]}}]}


def pair_distance_task(n: int, seed: int = 0):
    """Returns images with two lit pixels 5 (class 0) or 6 (class 1) apart, in a row or column.

    Every pixel lies at least 3 from the border, so a network whose receptive field is narrower
    than the pair (1x1 stem, then a 3x3 or 5x5 depthwise conv, then 1x1 convs and a global pool)
    sees two isolated pixels in both classes and is at chance; a 7x7 kernel covers both pixels.

    Args:
        n: number of images.
        seed: generator seed.

    Returns:
        (x [n, 14, 14, 1] float32, y [n] int32).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = np.zeros((n, 14, 14, 1), np.float32)
    for i in range(n):
        d = 5 + int(y[i])
        r, c = int(rng.integers(3, 11)), int(rng.integers(3, 11 - d))
        if rng.random() < 0.5:
            x[i, r, c] = x[i, r, c + d] = 1.0
        else:
            x[i, c, r] = x[i, c + d, r] = 1.0
    return x, y
