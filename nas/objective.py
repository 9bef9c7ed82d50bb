"""Multi-objective rewards and losses: accuracy (or loss) traded against a hardware cost.

* MnasNet (Tan et al. 2019, eq. 2): ``reward = ACC * (LAT / T) ** w`` with ``w = alpha`` if
  ``LAT <= T`` else ``beta``. Soft constraint: ``alpha = beta = -0.07`` (a model twice as fast
  earns about 5% more reward); hard constraint: ``alpha = 0, beta = -1`` (no bonus under the
  target, a steep penalty above it).
* FBNet (Wu et al. 2019, eq. 5): ``loss = CE * alpha * log(LAT) ** beta``.
* ProxylessNAS (Cai et al. 2019): ``loss = CE + lambda * E[LAT]`` or the multiplicative form
  ``CE * (E[LAT] / T) ** beta``.

LAT may be any cost metric with the same meaning (latency in ms from a LatencyTable, or params,
MACs, BOPs, size_bytes, energy_mj from :mod:`nas.metrics`). The loss functions use jax.numpy so
the one-shot strategies can differentiate them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax.numpy as jnp

#: Cost metrics of a candidate known without training it (:mod:`nas.metrics`; latency_ms from the
#: latency table): what ``objective.metric``, ``objective.limits`` and a Pareto front may name.
COST_METRICS = ("latency_ms", "params", "macs", "bops", "size_bytes", "energy_mj",
                "peak_activation_bytes")

SOFT = (-0.07, -0.07)
HARD = (0.0, -1.0)
CONSTRAINTS = {"soft": SOFT, "hard": HARD}


def mnasnet_reward(accuracy: float, cost: float, target: float, alpha: float, beta: float) -> float:
    """Returns MnasNet's reward ACC * (LAT / T) ** w.

    Args:
        accuracy: the candidate's accuracy in [0, 1].
        cost: its latency (or other cost), > 0.
        target: the target T, > 0.
        alpha: exponent when cost <= target.
        beta: exponent when cost > target.

    Returns:
        The reward (higher is better).
    """
    w = alpha if cost <= target else beta
    return float(accuracy) * (float(cost) / float(target)) ** w


def fbnet_loss(ce, latency, alpha: float = 0.2, beta: float = 0.6):
    """Returns FBNet's loss CE * alpha * log(LAT) ** beta (jax-differentiable).

    Args:
        ce: cross-entropy (scalar array).
        latency: expected latency (> 1 in the table's unit, so that its log is positive).
        alpha, beta: the paper's coefficients (defaults from the paper: 0.2, 0.6).
    """
    return ce * alpha * jnp.log(latency) ** beta


def proxyless_loss(ce, latency, lam: float = 0.0, target: float | None = None, beta: float = 0.0):
    """Returns ProxylessNAS's loss: CE + lam * LAT, times (LAT / T) ** beta when T is given.

    Args:
        ce: cross-entropy.
        latency: expected latency.
        lam: weight of the additive latency term.
        target: T for the multiplicative form (None = additive only).
        beta: exponent of the multiplicative form (e.g. 0.6).
    """
    loss = ce + lam * latency
    if target is not None:
        loss = loss * (latency / target) ** beta
    return loss


@dataclasses.dataclass(frozen=True)
class MnasObjective:
    """The reward of a sample-based search.

    Attributes:
        metric: the cost's key in an evaluation result ('latency_ms', 'params', 'macs', ...).
        target: the target T in the metric's unit; None = reward is the accuracy alone.
        alpha, beta: MnasNet exponents (see :data:`SOFT`, :data:`HARD`).
    """

    metric: str = "latency_ms"
    target: float | None = None
    alpha: float = SOFT[0]
    beta: float = SOFT[1]

    def reward(self, result: Mapping[str, float]) -> float:
        """Returns the reward of an evaluation result (needs 'accuracy' and the metric).

        Args:
            result: the evaluation result mapping.

        Returns:
            The reward; the accuracy alone when no target is set.
        """
        accuracy = float(result["accuracy"])
        if self.target is None:
            return accuracy
        cost = result.get(self.metric)
        if cost is None or not math.isfinite(float(cost)) or float(cost) <= 0:
            raise ValueError(f"result has no positive {self.metric!r} to weigh against the target")
        return mnasnet_reward(accuracy, float(cost), self.target, self.alpha, self.beta)

    def feasible(self, result: Mapping[str, float]) -> bool:
        """Returns whether a result meets the target (always true without a target)."""
        if self.target is None:
            return True
        cost = result.get(self.metric)
        return cost is not None and float(cost) <= self.target
