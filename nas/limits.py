"""Hard limits on a candidate's costs, checked before it is trained (``objective.limits``).

A config may bound any cost the project knows without training (:data:`nas.objective.COST_METRICS`:
the :mod:`nas.metrics` costs, and ``latency_ms`` predicted by the config's latency table)::

    objective: {metric: latency_ms, target: 0.05, limits: {latency_ms: 0.08, size_bytes: 200000}}

The MnasNet reward's ``target`` stays a soft trade-off; a limit is a wall:

* **Sample-based searches** (:mod:`nas.search`) compute each new proposal's costs and never
  train one over a limit: it is written to history.jsonl as a ``kind: "rejected"`` record
  (``status: "rejected"``, its costs, ``violations``: ``[{metric, value, limit}]``), it does not
  count against the budget (the budget counts trained candidates), and the strategy is told it
  was rejected (:class:`nas.strategies.base.Observation`).
* **One-shot searches** (:mod:`nas.strategies.oneshot_driver`) check their derived Arch; one
  over a limit is reported in one line and kept out of ``best_arch.json``.

Example:
    >>> check_limits({"size_bytes": 2e5}, has_latency_table=False)
    >>> [v.text() for v in violations({"size_bytes": 250000.0}, {"size_bytes": 2e5})]
    ['size_bytes 250000 > 200000']
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from nas.errors import NasInputError
from nas.objective import COST_METRICS


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken limit.

    Attributes:
        metric: the cost metric ('size_bytes', 'latency_ms', ...).
        value: the candidate's value, in the metric's unit.
        limit: the limit it exceeds.
    """

    metric: str
    value: float
    limit: float

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"metric", "value", "limit"}`` (what a rejected record stores)."""
        return {"metric": self.metric, "value": self.value, "limit": self.limit}

    def text(self) -> str:
        """Returns e.g. ``'size_bytes 250000 > 200000'``."""
        return f"{self.metric} {self.value:.6g} > {self.limit:.6g}"


def check_limits(limits: Mapping[str, Any], has_latency_table: bool,
                 source: str | None = None) -> None:
    """Validates a config's ``objective.limits``.

    Args:
        limits: ``{metric: limit}`` as parsed (values already numbers).
        has_latency_table: whether the config names a latency table (latency_ms needs one).
        source: the config file, named in errors.

    Raises:
        NasInputError: an unknown metric, a limit that is not a positive finite number, or a
            latency_ms limit without a latency table (one line naming
            ``objective.limits.<name>`` and the fix).
    """
    for name, value in limits.items():
        field = f"objective.limits.{name}"
        if name not in COST_METRICS:
            raise NasInputError(f"unknown limit; limit one of {list(COST_METRICS)} (costs known "
                                "without training)", source, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(float(value)) or float(value) <= 0:
            raise NasInputError(f"{value!r} is not allowed; a limit is a positive number in the "
                                f"metric's unit (e.g. {name}: {_example(name)}); remove it to "
                                "leave the metric free", source, field)
        if name == "latency_ms" and not has_latency_table:
            raise NasInputError("a latency limit needs a latency table; set latency_table: PATH "
                                "(build one with 'nas latency build') or limit another metric",
                                source, field)


def _example(name: str) -> str:
    return {"latency_ms": "0.05", "size_bytes": "200000", "energy_mj": "0.01"}.get(name, "1e5")


def violations(costs: Mapping[str, Any], limits: Mapping[str, float]) -> list[Violation]:
    """Returns the limits a candidate's costs break (in the order of ``limits``).

    Args:
        costs: the candidate's costs (e.g. :meth:`nas.training.evaluate.CandidateEvaluator.costs`).
        limits: ``{metric: limit}`` (validated by :func:`check_limits`).

    Returns:
        One :class:`Violation` per metric whose value is above its limit (empty: within all).

    Raises:
        ValueError: ``costs`` lacks a limited metric (a caller that cannot compute it).
    """
    out = []
    for metric, limit in limits.items():
        if costs.get(metric) is None:
            raise ValueError(f"no {metric!r} among the candidate's costs {sorted(costs)}")
        value = float(costs[metric])
        if value > float(limit):
            out.append(Violation(metric, value, float(limit)))
    return out


def violations_text(found: Sequence[Violation | Mapping[str, Any]]) -> str:
    """Returns the violations on one line, e.g. ``'size_bytes 250000 > 200000, latency_ms ...'``.

    Args:
        found: Violations, or their dicts as stored in a rejected record.
    """
    return ", ".join((v if isinstance(v, Violation) else Violation(**v)).text() for v in found)


def rejection_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Returns how many rejected records broke each limit (a record may break several).

    Args:
        records: rejected history records (their ``violations``).

    Returns:
        ``{metric: records that broke it}``, most frequent first.
    """
    counts = Counter(v["metric"] for r in records for v in r.get("violations") or ())
    return dict(counts.most_common())
