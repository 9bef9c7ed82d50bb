"""The cost term of the single-path loss: latency (or another additive cost) as a function of
the relaxed gates.

For each slot, a tensor holds the cost of every combination of ladder levels (the layer's
LatencyTable entry, ``table.layer_ms(table.key(spec))``, or a per-layer metric of
:mod:`nas.metrics`). The slot's cost is that tensor contracted with each ladder's level
probabilities (:func:`~nas.single_path.indicators.ladder_levels`: ``P(k=3) = 1 - i5``,
``P(k=5) = i5 (1 - i7)``, ``P(k=7) = i5 i7``), i.e. the table entries weighted by products of
the indicators. The indicators are hard in the forward pass, so the value is exactly the
predicted cost of the currently selected Arch (``LatencyTable.predict`` of ``derive_arch``),
and its gradient reaches every threshold through the sigmoid relaxation, as in the paper.

Example:
    >>> cost = SlotCosts.from_table(space, table)
    >>> lat = cost.expected(gates_by_slot)          # ms, differentiable
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from nas.errors import NasInputError
from nas.metrics import layer_costs
from nas.single_path.indicators import ladder_levels
from nas.single_path.plan import LADDER_ORDER, space_plan
from nas.space import Space
from nas.spec import BlockSpec

#: Per-layer metrics of nas.metrics.layer_costs that can stand in for latency.
METRICS = ("macs", "bops", "size_bits", "energy_pj", "params")


@dataclasses.dataclass(frozen=True)
class SlotCosts:
    """Per-slot cost tensors over ladder levels, plus the fixed cost (stem, head, intercept).

    Attributes:
        names: per slot, the ladder names of the tensor's axes (in ladder order).
        tensors: per slot, the cost of each combination of levels.
        fixed: cost of the layers no decision changes.
        unit: 'ms' for a latency table, else the metric's name.
    """

    names: tuple[tuple[str, ...], ...]
    tensors: tuple[np.ndarray, ...]
    fixed: float
    unit: str

    @classmethod
    def build(cls, space: Space, layer_cost: Callable[[BlockSpec], float], fixed: float,
              unit: str) -> "SlotCosts":
        """Tabulates `layer_cost` over every slot's ladder levels."""
        names, tensors = [], []
        for plan in space_plan(space):
            axes = tuple(n for n in LADDER_ORDER if n in plan.ladders)
            t = np.zeros([plan.ladders[n].n for n in axes], np.float64)
            for levels in plan.grid():
                t[tuple(levels[n] for n in axes)] = layer_cost(plan.spec(levels))
            names.append(axes)
            tensors.append(t)
        return cls(tuple(names), tuple(tensors), float(fixed), unit)

    @classmethod
    def from_table(cls, space: Space, table: Any) -> "SlotCosts":
        """Costs from a LatencyTable (calibrated per-layer contributions, ms).

        Raises:
            NasInputError: a layer the superkernel contains is missing from the table.
        """
        fixed = table.model["intercept_ms"] + sum(table.layer_ms(table.key(s))
                                                  for s in (space.stem_spec, space.head_spec))
        return cls.build(space, lambda spec: table.layer_ms(table.key(spec)), fixed, "ms")

    @classmethod
    def from_metric(cls, space: Space, metric: str) -> "SlotCosts":
        """Costs from a per-layer metric of :func:`nas.metrics.layer_costs` (e.g. 'bops').

        Raises:
            NasInputError: unknown metric.
        """
        if metric not in METRICS:
            raise NasInputError(f"unknown cost metric {metric!r}; use one of {list(METRICS)} or a "
                                "latency table", field="cost")
        fixed = sum(float(layer_costs(s)[metric]) for s in (space.stem_spec, space.head_spec))
        return cls.build(space, lambda spec: float(layer_costs(spec)[metric]), fixed, metric)

    def expected(self, gates: Sequence[Mapping[str, Any]]):
        """Returns the cost under the gates (a JAX scalar; exact on hard gates).

        Args:
            gates: per slot (in space order), {ladder: [gates]}.
        """
        total = jnp.asarray(self.fixed, jnp.float32)
        for names, tensor, g in zip(self.names, self.tensors, gates):
            t = jnp.asarray(tensor, jnp.float32)
            for name in names:
                t = jnp.tensordot(ladder_levels(g[name]), t, axes=([0], [0]))
            total = total + t
        return total

    def extremes(self) -> tuple[float, float]:
        """Returns (min, max) cost over the Archs the superkernel contains."""
        lo = self.fixed + sum(float(t.min()) for t in self.tensors)
        hi = self.fixed + sum(float(t.max()) for t in self.tensors)
        return lo, hi
