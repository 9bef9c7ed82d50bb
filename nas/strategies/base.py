"""The ask/tell interface shared by the sample-based search strategies.

A strategy is a small NamedTuple of pure functions, in the style of optax:

* ``init(seed) -> state``: the starting state (a plain value; no hidden global RNG).
* ``ask(state, n) -> (state, proposals)``: ``n`` candidate Archs to evaluate next.
* ``tell(state, observations) -> state``: learn from evaluated candidates.

Randomness is derived from ``(seed, step)`` inside the state, so the same sequence of
``ask``/``tell`` calls always gives the same proposals. That is what makes resuming cheap: the
search loop replays the recorded rewards from ``history.jsonl`` through ``ask``/``tell`` and
arrives at the same state, without pickling anything.

Example:
    >>> from nas.space import Space
    >>> from nas.strategies import make_strategy
    >>> space = Space.by_name("tiny")
    >>> strategy = make_strategy("random", space, {})
    >>> state = strategy.init(0)
    >>> state, proposals = strategy.ask(state, 2)
    >>> state = strategy.tell(state, [Observation(p, 0.5) for p in proposals])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from nas.space import Arch


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One candidate a strategy wants evaluated.

    Attributes:
        arch: the canonical Arch.
        tokens: the choice index of every decision as the strategy picked it (before
            canonicalization); the RL controller learns from these.
    """

    arch: Arch
    tokens: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Observation:
    """An evaluated (or rejected) proposal.

    Attributes:
        proposal: what was asked.
        reward: the objective's reward (higher is better); None when evaluation failed or the
            proposal was rejected.
        rejected: the proposal broke a hard limit (``objective.limits``) and was never trained;
            random and evolution ignore it (never a parent), rl gives it its ``rejected_reward``,
            nsga2 keeps it out of its population.
        metrics: what the history records of it: 'accuracy' (trained ones), 'latency_ms' and
            the cost metrics (params, macs, ...) it has; multi-objective strategies rank on them.
    """

    proposal: Proposal
    reward: float | None
    rejected: bool = False
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Strategy(NamedTuple):
    """A sample-based search strategy as three pure functions.

    Attributes:
        name: the strategy's config name ('random', 'evolution', 'rl').
        init: ``init(seed) -> state``.
        ask: ``ask(state, n) -> (state, list[Proposal])``.
        tell: ``tell(state, list[Observation]) -> state``.
    """

    name: str
    init: Callable[[int], Any]
    ask: Callable[[Any, int], tuple[Any, list[Proposal]]]
    tell: Callable[[Any, Sequence[Observation]], Any]


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Returns the numpy generator for one ask step: a pure function of (seed, step).

    Args:
        seed: the search seed.
        step: how many asks came before.

    Returns:
        A fresh numpy Generator.
    """
    return np.random.default_rng([int(seed), int(step)])
