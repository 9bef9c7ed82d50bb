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
An op switch (:mod:`nas.single_path.op_switch`) has one tensor per branch, weighted by the op
gate's level probabilities.

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
from nas.single_path.op_switch import OP_LADDER, branch_key
from nas.single_path.plan import LADDER_ORDER, SlotPlan, space_plan
from nas.space import Space
from nas.spec import BlockSpec

#: Per-layer metrics of nas.metrics.layer_costs that can stand in for latency.
METRICS = ("macs", "bops", "size_bits", "energy_pj", "params")


@dataclasses.dataclass(frozen=True)
class BranchCost:
    """The cost tensor of one slot, or of one branch of an op switch.

    Attributes:
        prefix: the gate-key prefix of its ladders ('' for a slot, 'fused_mbconv/' for a
            branch, see :mod:`nas.single_path.op_switch`).
        names: the ladder names of the tensor's axes (in ladder order).
        tensor: the cost of each combination of levels.
    """

    prefix: str
    names: tuple[str, ...]
    tensor: np.ndarray

    def expected(self, gates: Mapping[str, Any]):
        """Returns the tensor contracted with each ladder's level probabilities."""
        t = jnp.asarray(self.tensor, jnp.float32)
        for name in self.names:
            t = jnp.tensordot(ladder_levels(gates[self.prefix + name]), t, axes=([0], [0]))
        return t


def tabulate(plan: SlotPlan, layer_cost: Callable[[BlockSpec], float],
             prefix: str = "") -> BranchCost:
    """Returns the cost tensor of a plan without op switch (a slot or a branch)."""
    axes = tuple(n for n in LADDER_ORDER if n in plan.ladders)
    t = np.zeros([plan.ladders[n].n for n in axes], np.float64)
    for levels in plan.grid():
        t[tuple(levels[n] for n in axes)] = layer_cost(plan.spec(levels))
    return BranchCost(prefix, axes, t)


@dataclasses.dataclass(frozen=True)
class SlotCosts:
    """Per-slot cost tensors over ladder levels, plus the fixed cost (stem, head, intercept).

    Attributes:
        slots: per slot, one :class:`BranchCost`, or for an op switch one per branch (op level
            0, 1): the slot's cost is then ``P(op=0) cost_0 + P(op=1) cost_1``, each branch's
            contracted with that branch's gates.
        fixed: cost of the layers no decision changes.
        unit: 'ms' for a latency table, else the metric's name.
    """

    slots: tuple[tuple[BranchCost, ...], ...]
    fixed: float
    unit: str

    @classmethod
    def build(cls, space: Space, layer_cost: Callable[[BlockSpec], float], fixed: float,
              unit: str) -> "SlotCosts":
        """Tabulates `layer_cost` over every slot's (every branch's) ladder levels."""
        slots = []
        for plan in space_plan(space):
            if plan.branches:
                slots.append(tuple(tabulate(b, layer_cost, branch_key(b.base_op, ""))
                                   for b in plan.branches))
            else:
                slots.append((tabulate(plan, layer_cost),))
        return cls(tuple(slots), float(fixed), unit)

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
            gates: per slot (in space order), {gate key: [gates]} (:func:`~nas.single_path.gates.slot_gates`).
        """
        total = jnp.asarray(self.fixed, jnp.float32)
        for parts, g in zip(self.slots, gates):
            if len(parts) == 1:
                total = total + parts[0].expected(g)
                continue
            p_op = ladder_levels(g[OP_LADDER])
            total = total + sum(p_op[i] * part.expected(g) for i, part in enumerate(parts))
        return total

    def extremes(self) -> tuple[float, float]:
        """Returns (min, max) cost over the Archs the superkernel contains."""
        lo = self.fixed + sum(min(float(p.tensor.min()) for p in parts) for parts in self.slots)
        hi = self.fixed + sum(max(float(p.tensor.max()) for p in parts) for parts in self.slots)
        return lo, hi
