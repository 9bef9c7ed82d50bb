"""Deriving a one-shot search's Arch within a cost target and hard limits.

FBNet and ProxylessNAS end by taking every label's most probable choice (the argmax Arch,
:func:`nas.supernet.gates.derive`). Their cost terms are soft, so that Arch can land over the
user's target: the expected cost the loss sees is not the cost of the argmax. A user who set
``objective.target`` (or ``objective.limits``) wants an Arch within it; :func:`derive_within`
gives the most probable Arch it can find that is:

1. start from the argmax Arch; if it is within bounds, it is the answer;
2. repair: while over, apply the one-label change that removes the most *excess* (the summed
   relative overshoot of every bound, :func:`relative_excess`) per unit of log-probability it
   costs (a change that loses no probability wins outright);
3. polish: once within bounds, take the one-label change that gains the most log-probability
   while staying within bounds, until none does.

Every step evaluates whole Archs through the caller's ``excess(arch)``, so couplings between
layers (a width choice changes the next layer's input channels) are priced exactly. When no
single change lowers the excess, the closest Arch found is returned with ``feasible: False``
and the caller says so.

Example:
    >>> result = derive_within(space, alpha, lambda arch: relative_excess(
    ...     {"macs": macs(arch)}, {"macs": 1e6}))
    >>> result.feasible, result.changed
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from nas.space import Arch, Space


@dataclasses.dataclass(frozen=True)
class Derivation:
    """The Arch a constrained derivation chose.

    Attributes:
        arch: the Arch (canonical).
        feasible: whether it is within every bound (excess 0).
        excess: its remaining relative excess (0 when feasible).
        argmax_arch: the unconstrained most probable Arch.
        argmax_excess: the argmax Arch's relative excess.
        changed: labels whose choice differs from the argmax Arch, in canonical order.
        log_prob: the Arch's total log-probability under the logits.
        log_prob_drop: the argmax Arch's log-probability minus this one's (>= 0).
    """

    arch: Arch
    feasible: bool
    excess: float
    argmax_arch: Arch
    argmax_excess: float
    changed: tuple[str, ...]
    log_prob: float
    log_prob_drop: float

    def to_dict(self, space: Space) -> dict[str, Any]:
        """Returns the JSON-able record a summary keeps (Arch ids, not the Archs)."""
        return {"rule": "within_target", "feasible": self.feasible,
                "excess": round(self.excess, 6), "argmax_arch_id": space.arch_id(self.argmax_arch),
                "argmax_excess": round(self.argmax_excess, 6), "changed": list(self.changed),
                "log_prob": round(self.log_prob, 6), "log_prob_drop": round(self.log_prob_drop, 6)}


def relative_excess(costs: Mapping[str, float], bounds: Mapping[str, float]) -> float:
    """Returns the summed relative overshoot ``sum(max(cost / bound - 1, 0))`` of the bounds.

    Args:
        costs: {metric: value} (must hold every bounded metric).
        bounds: {metric: upper bound > 0}.

    Returns:
        0.0 when every cost is within its bound, else the sum of the relative excesses.
    """
    return float(sum(max(float(costs[m]) / float(b) - 1.0, 0.0) for m, b in bounds.items()))


def log_probabilities(space: Space, alpha: Mapping[str, Any]) -> list[np.ndarray]:
    """Returns each label's log-softmax of its logits, in the space's canonical label order."""
    out = []
    for label in space.labels():
        a = np.asarray(alpha[label], np.float64)
        a = a - a.max()
        out.append(a - np.log(np.exp(a).sum()))
    return out


def derive_within(space: Space, alpha: Mapping[str, Any],
                  excess: Callable[[Arch], float], max_steps: int = 1000) -> Derivation:
    """Returns the most probable Arch the greedy repair-and-polish finds within the bounds.

    Args:
        space: the Space.
        alpha: {label: logits} of the search.
        excess: ``excess(arch) -> float``: 0 when the Arch is within every bound, else how far
            over (e.g. :func:`relative_excess` of its costs).
        max_steps: bound on the repair and on the polish steps (each a one-label change).

    Returns:
        The :class:`Derivation`.
    """
    logp = log_probabilities(space, alpha)
    argmax = [int(np.argmax(lp)) for lp in logp]

    def score(indices):
        return float(sum(lp[i] for lp, i in zip(logp, indices)))

    def neighbours(indices):
        for pos, lp in enumerate(logp):
            for choice in range(len(lp)):
                if choice != indices[pos]:
                    new = list(indices)
                    new[pos] = choice
                    yield new, float(lp[choice] - lp[indices[pos]])

    cache: dict[tuple, float] = {}

    def over(indices):
        key = tuple(space.encode(space.decode(indices)))  # choices a canonical Arch ignores
        if key not in cache:
            cache[key] = float(excess(space.decode(indices)))
        return cache[key]

    current, start_excess = argmax, over(argmax)
    current_excess = start_excess
    for _ in range(max_steps):  # repair
        if current_excess <= 0.0:
            break
        best, best_rate = None, -np.inf
        for new, gain in neighbours(current):
            e = over(new)
            if e >= current_excess:
                continue
            removed = current_excess - e
            rate = np.inf if gain >= 0 else removed / -gain
            if rate > best_rate or (rate == best_rate and best is not None and e < over(best)):
                best, best_rate = new, rate
        if best is None:
            break
        current, current_excess = best, over(best)
    if current_excess <= 0.0:
        for _ in range(max_steps):  # polish
            best, best_gain = None, 1e-12
            for new, gain in neighbours(current):
                if gain > best_gain and over(new) <= 0.0:
                    best, best_gain = new, gain
            if best is None:
                break
            current = best
    arch, argmax_arch = space.decode(current), space.decode(argmax)
    changed = tuple(label for label in space.labels()
                    if arch.get(label) != argmax_arch.get(label))
    total, top = score(current), score(argmax)
    return Derivation(arch, current_excess <= 0.0, max(current_excess, 0.0), argmax_arch,
                      start_excess, changed, total, max(top - total, 0.0))
