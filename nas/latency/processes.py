"""Whole networks timed in several fresh worker processes, the median of their medians kept.

A whole jax network of a few milliseconds (e.g. `fbnet_cifar` at 32x32) runs at a speed that
depends on the process it runs in: the same network, on a quiet machine, pinned to one core,
measured 4.68, 4.95 and 5.86 ms in three fresh processes - a per-process effect (where its
buffers land in memory) that no number of repetitions inside one process removes. Timing each
network in ``processes`` separate workers and keeping the median of the per-process medians
measures the network, not the process. Per-layer entries need it less (their spread across
processes is a few percent) and are timed once.

Example:
    >>> measurer = ProcessMedianMeasurer(lambda: WorkerMeasurer("jax"), processes=3)
    >>> replies = list(measurer.measure(items))    # one 'result' per item, median of 3 processes
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterator, Mapping, Sequence


class ProcessMedianMeasurer:
    """A measurer that runs every item in `processes` fresh measurers (worker processes).

    Args:
        make_measurer: returns a fresh measurer (each ``measure`` call of a
            :class:`~nas.latency.build.WorkerMeasurer` starts its own worker process).
        processes: how many processes time each item (1 = the plain measurer).
    """

    def __init__(self, make_measurer: Callable[[], Any], processes: int = 1):
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.make_measurer, self.processes = make_measurer, processes

    def measure(self, items: Sequence[Mapping[str, Any]]) -> Iterator[dict]:
        """Yields the first process's 'info' reply, then one reply per item: its 'result' with
        ``median_ms`` the median over processes (``p10_ms`` / ``p90_ms`` the lowest and highest
        process median, ``processes`` the medians), or its first 'error'. With one process the
        replies stream through as they come (a killed build keeps what was measured); with more,
        they come once every process has finished."""
        if self.processes == 1:
            yield from self.make_measurer().measure(items)
            return
        results: dict[str, list[dict]] = {}
        errors: dict[str, dict] = {}
        info = None
        for _ in range(self.processes):
            for reply in self.make_measurer().measure(items):
                if reply["type"] == "info":
                    info = info or reply
                elif reply["type"] == "result":
                    results.setdefault(reply["id"], []).append(reply)
                elif reply["type"] == "error":
                    errors.setdefault(reply["id"], reply)
        if info is not None:
            yield info
        for item in items:
            item_id = item["id"]
            if item_id in errors:
                yield errors[item_id]
                continue
            replies = results.get(item_id, [])
            if not replies:
                continue
            medians = [r["median_ms"] for r in replies]
            yield dict(replies[0], median_ms=statistics.median(medians), p10_ms=min(medians),
                       p90_ms=max(medians), processes=medians)
