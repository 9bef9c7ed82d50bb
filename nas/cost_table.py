"""Cost tables: a model-size, MAC, BOP or energy "latency table", exact and built on the fly.

Any strategy that weighs accuracy against latency can weigh it against another cost instead: a
:class:`CostTable` is a :class:`~nas.latency.table.LatencyTable` (same entries, same ``predict``
and differentiable ``expected``) whose per-layer entries are a metric of :mod:`nas.metrics`
instead of measured milliseconds. The metrics are additive over layers, so the table's model is
the plain sum and ``predict(arch)`` equals the metric of the whole network (exactly for params,
MACs and BOPs; ``size_bytes`` is the sum of the layers' bits / 8, which :mod:`nas.metrics` rounds
up to a whole byte).

Keys keep the layer's full precision (``BlockSpec.key()``, ``bw``/``ba`` as searched): unlike a
backend's latency, BOPs and size depend on the exact bit-widths.

Example:
    >>> table = cost_table(Space.by_name("tiny"), "bops")
    >>> table.predict(arch) == arch_metrics(space, arch)["bops"]
    True
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from nas.errors import NasInputError
from nas.latency.table import LatencyTable
from nas.metrics import layer_costs
from nas.space import Space
from nas.spec import BlockSpec

#: metric name (as in configs and :func:`nas.metrics.network_costs`) -> per-layer value.
LAYER_METRICS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "params": lambda c: float(c["params"]),
    "macs": lambda c: float(c["macs"]),
    "bops": lambda c: float(c["bops"]),
    "size_bytes": lambda c: c["size_bits"] / 8.0,
    "energy_mj": lambda c: c["energy_pj"] * 1e-9,
}

#: backend name recorded in a cost table (never a measured backend's name).
BACKEND_PREFIX = "metric:"


class CostTable(LatencyTable):
    """A LatencyTable whose entries are a :mod:`nas.metrics` cost (unit: the metric's own).

    Attributes:
        metric: the metric's name (a key of :data:`LAYER_METRICS`).
    """

    def __init__(self, data: dict, space: Space, metric: str, source: str | None = None):
        super().__init__(data, space, source)
        self.metric = metric

    def key(self, spec: BlockSpec) -> str:
        """Returns the layer's key at its searched precision (bits change BOPs and size)."""
        return spec.key()


def cost_table(space: Space, metric: str) -> CostTable:
    """Builds the cost table of a Space for one metric (in memory, in the metric's unit).

    Args:
        space: the Space.
        metric: 'params', 'macs', 'bops', 'size_bytes' or 'energy_mj'.

    Returns:
        A :class:`CostTable` with an entry for every distinct layer of the space; its
        ``predict(arch)`` is the network's metric and ``expected(probs)`` its expectation.

    Raises:
        NasInputError: a metric that is not a per-layer sum (e.g. peak_activation_bytes).
    """
    if metric not in LAYER_METRICS:
        raise NasInputError(f"metric {metric!r} is not a sum over layers, so it cannot stand in "
                            f"for latency here; use latency_ms or one of {sorted(LAYER_METRICS)}",
                            field="objective.metric")
    value = LAYER_METRICS[metric]
    entries = {}
    for spec in space.unique_block_specs():
        v = value(layer_costs(spec))
        entries[spec.key()] = {"median_ms": v, "p10_ms": v, "p90_ms": v, "n": 1}
    data = {"backend": {"name": BACKEND_PREFIX + metric, "precision_rule": "exact"},
            "space": {"name": space.name}, "entries": entries,
            "provenance": {"source": f"nas.metrics.layer_costs ({metric})"}}
    return CostTable(data, space, metric, source=f"<{metric} cost table>")


def objective_table(space: Space, metric: str, latency_table: str | None) -> LatencyTable | None:
    """Returns the table a one-shot search differentiates: latency or the objective's metric.

    Args:
        space: the Space.
        metric: the config's ``objective.metric``.
        latency_table: path of the config's latency table (used for latency_ms), or None.

    Returns:
        The LatencyTable for 'latency_ms' (None when no table is set), else a :class:`CostTable`.
    """
    if metric == "latency_ms":
        return LatencyTable.load(latency_table, space) if latency_table else None
    return cost_table(space, metric)
