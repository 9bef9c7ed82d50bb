"""Timing: warm-up, many repetitions, robust statistics, and pinning to one core and one thread.

Latency on a shared CPU is noisy. Every figure in a table is the median of many calls (with the
10th and 90th percentiles), taken after a warm-up that also excludes compilation, in a process
pinned to one core whose runtimes use one thread (see :mod:`nas.single_thread`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How long to time one callable.

    Attributes:
        warmup: calls before timing starts (the first one also compiles / plans).
        min_reps: at least this many timed calls.
        max_reps: at most this many timed calls.
        min_seconds: keep timing until this much time passed (and min_reps calls were made).
        rounds: the reps are split into this many rounds, spread over time (the worker cycles
            through a chunk of items per round); the round with the lowest median is kept, as
            interference from other processes only ever adds time.
        extra_rounds: up to this many more rounds for an item none of whose rounds was clean.
        clean_spread: a round is clean when (p90 - p10) / median is at most this.
    """

    warmup: int = 10
    min_reps: int = 60
    max_reps: int = 3000
    min_seconds: float = 0.3
    rounds: int = 5
    extra_rounds: int = 10
    clean_spread: float = 0.3

    def per_round(self) -> "TimingConfig":
        """Returns the config of one round (reps and time divided by the rounds)."""
        r = max(1, self.rounds)
        return TimingConfig(self.warmup, max(1, -(-self.min_reps // r)),
                            max(1, -(-self.max_reps // r)), self.min_seconds / r, 1, 0,
                            self.clean_spread)

    def is_clean(self, timing: "Timing") -> bool:
        """Whether a round's spread shows no interference."""
        return timing.p90_ms - timing.p10_ms <= self.clean_spread * timing.median_ms

    def to_dict(self) -> dict:
        """Returns the config as a JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Statistics of repeated calls, in milliseconds.

    Attributes:
        median_ms: median call time.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        n: number of timed calls.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    n: int

    def to_dict(self) -> dict:
        """Returns the entry as stored in a table: {median_ms, p10_ms, p90_ms, n}."""
        return {"median_ms": round(self.median_ms, 6), "p10_ms": round(self.p10_ms, 6),
                "p90_ms": round(self.p90_ms, 6), "n": self.n}


def summarize(samples_s: np.ndarray | list[float]) -> Timing:
    """Returns median / p10 / p90 (ms) of call times given in seconds."""
    ms = np.asarray(samples_s, np.float64) * 1e3
    p10, med, p90 = np.percentile(ms, [10, 50, 90])
    return Timing(float(med), float(p10), float(p90), int(ms.size))


def best_round(rounds: list[Timing]) -> Timing:
    """Returns the round with the lowest median, with n counting every round's calls."""
    best = min(rounds, key=lambda t: t.median_ms)
    return dataclasses.replace(best, n=sum(t.n for t in rounds))


def time_call(fn: Callable[[], object], config: TimingConfig = TimingConfig(),
              clock: Callable[[], int] = time.perf_counter_ns) -> Timing:
    """Times `fn` (which must block until its result is ready).

    Args:
        fn: the call to time, with no arguments.
        config: warm-up and repetition counts.
        clock: nanosecond clock (injectable for tests).

    Returns:
        The call time statistics (warm-up calls excluded).
    """
    for _ in range(config.warmup):
        fn()
    samples = []
    start = clock()
    while len(samples) < config.max_reps:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) * 1e-9)
        if len(samples) >= config.min_reps and (t1 - start) * 1e-9 >= config.min_seconds:
            break
    return summarize(samples)


def pin_to_core(core: int | None) -> list[int]:
    """Pins the calling process to one CPU core.

    Args:
        core: the core to use; None picks the last core the process may run on.

    Returns:
        The cores the process runs on afterwards.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if core is None:
        core = allowed[-1]
    os.sched_setaffinity(0, {core})
    return sorted(os.sched_getaffinity(0))


def set_realtime() -> str:
    """Gives this process the lowest real-time priority (SCHED_FIFO 1) where permitted.

    On a shared machine a 1 ms network call is often cut by other processes' time slices (and
    jax's execution thread waits to be scheduled); a real-time process pinned to one core is not
    preempted by ordinary ones. Linux still leaves ordinary processes 5% of that core
    (``sched_rt_runtime_us``), and they keep the other cores.

    Returns:
        'fifo' when set, else 'normal' (e.g. without the privilege: timing then runs as usual).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "fifo"
    except (OSError, AttributeError):
        return "normal"


def cpu_model() -> str:
    """Returns the CPU model name from /proc/cpuinfo ('unknown' where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
