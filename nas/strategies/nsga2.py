"""NSGA-II over (accuracy, costs): Deb et al. 2002, "A fast and elitist multiobjective genetic
algorithm: NSGA-II" (IEEE Transactions on Evolutionary Computation 6(2)).

The objectives are the validation accuracy (maximized) and one or more cost metrics (minimized,
``params.objectives``, e.g. ``[latency_ms, size_bytes]``; by default the config's
``objective.metric``). The search keeps a population of ``population`` (N) trained candidates:

* **Initial population**: uniform random Archs, until N candidates have been trained.
* **Offspring** (each ``ask``): two parents, each the winner of a binary tournament on the
  population (lower non-domination rank wins; equal ranks: larger crowding distance; then the
  first drawn), uniform crossover of their decision vectors with probability ``crossover`` (else
  the first parent), then a one-decision mutation (:meth:`Space.mutate`).
* **Survival** (``tell``, once N offspring have been trained): population + offspring (2N) are
  sorted into non-dominated fronts (:func:`nas.pareto.non_dominated_sort`); fronts fill the new
  population best first, and the front that does not fit whole contributes its members with the
  largest crowding distance (:func:`nas.pareto.crowding_distance`). This is NSGA-II's elitist
  (mu + lambda) step with lambda = mu = N, the offspring asked in the ask/tell rounds the search
  loop runs instead of one batch.

Candidates that failed, were rejected for breaking ``objective.limits`` (never trained: no
accuracy) or lack an objective's value never join the population; an Arch already in it is not
added twice. The non-dominated front of every trained candidate is written by the search loop to
``pareto.json`` (for every strategy); NSGA-II is the strategy that searches for it.

State is plain data and randomness comes from (seed, step), so replaying history.jsonl rebuilds it
exactly (:mod:`nas.strategies.base`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import pydantic

from nas.objective import COST_METRICS
from nas.pareto import crowding_distance, non_dominated_sort
from nas.space import Arch, Space
from nas.strategies.base import Observation, Proposal, Strategy, step_rng
from nas.strategies.random import sample_proposal


class NSGA2Params(pydantic.BaseModel):
    """NSGA-II settings.

    Attributes:
        objectives: cost metrics minimized beside the accuracy (None: the config's
            ``objective.metric``; latency_ms needs a latency table).
        population: N, the population kept and the offspring per generation.
        crossover: probability of uniform crossover between the two parents (else the child
            starts as the first parent); every child then gets a one-decision mutation.
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    objectives: list[Literal[COST_METRICS]] | None = pydantic.Field(  # type: ignore[valid-type]
        None, min_length=1)
    population: int = pydantic.Field(16, ge=2)
    crossover: float = pydantic.Field(0.9, ge=0, le=1)

    @pydantic.field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("objectives must be distinct")
        return value


class Member(NamedTuple):
    """One trained candidate of the population.

    Attributes:
        arch: the canonical Arch.
        arch_id: its id.
        point: its objective vector, all minimized: (-accuracy, cost 1, cost 2, ...).
    """

    arch: Arch
    arch_id: str
    point: tuple[float, ...]


class NSGA2State(NamedTuple):
    """Attributes: seed; step (asks so far); population (survivors of the last selection,
    empty before the first); offspring (trained since the last selection)."""

    seed: int
    step: int
    population: tuple[Member, ...]
    offspring: tuple[Member, ...]


def rank_and_crowding(points: Sequence[Sequence[float]]) -> tuple[list[int], list[float]]:
    """Returns each point's non-domination rank (0 = Pareto front) and crowding distance.

    Args:
        points: objective vectors, all minimized.

    Returns:
        (ranks, distances), aligned with `points`; the distance is within the point's front.
    """
    ranks, distances = [0] * len(points), [0.0] * len(points)
    for rank, front in enumerate(non_dominated_sort(points)):
        for i, d in zip(front, crowding_distance(points, front)):
            ranks[i], distances[i] = rank, d
    return ranks, distances


def select_survivors(points: Sequence[Sequence[float]], n: int) -> list[int]:
    """Returns the indices NSGA-II keeps: whole fronts best first, the last by crowding.

    Args:
        points: objective vectors, all minimized.
        n: how many to keep.

    Returns:
        Up to n indices, ascending.
    """
    kept: list[int] = []
    for front in non_dominated_sort(points):
        if len(kept) + len(front) <= n:
            kept += front
            continue
        distance = crowding_distance(points, front)
        order = sorted(range(len(front)), key=lambda k: (-distance[k], front[k]))
        kept += [front[k] for k in order[:n - len(kept)]]
        break
    return sorted(kept)


def nsga2(space: Space, params: NSGA2Params | None = None) -> Strategy:
    """Returns the NSGA-II Strategy.

    Args:
        space: the search space.
        params: objectives, population size, crossover probability (``objectives`` must be
            set: :func:`nas.search.run_search` fills it from ``objective.metric`` when unset).

    Raises:
        ValueError: no objectives.
    """
    params = params or NSGA2Params()
    if not params.objectives:
        raise ValueError("nsga2 needs its objectives (strategy.params.objectives)")
    names = ("accuracy", *params.objectives)

    def init(seed: int) -> NSGA2State:
        return NSGA2State(int(seed), 0, (), ())

    def tournament(rng, ranks: list[int], distances: list[float]) -> int:
        picks = rng.choice(len(ranks), size=min(2, len(ranks)), replace=False)
        return min((int(i) for i in picks), key=lambda i: (ranks[i], -distances[i]))

    def ask(state: NSGA2State, n: int) -> tuple[NSGA2State, list[Proposal]]:
        rng = step_rng(state.seed, state.step)
        out = []
        if state.population:
            ranks, distances = rank_and_crowding([m.point for m in state.population])
        for _ in range(n):
            if not state.population:
                out.append(sample_proposal(space, rng))
                continue
            first = state.population[tournament(rng, ranks, distances)]
            second = state.population[tournament(rng, ranks, distances)]
            tokens = space.encode(first.arch)
            if rng.random() < params.crossover:
                other = space.encode(second.arch)
                tokens = [a if rng.random() < 0.5 else b for a, b in zip(tokens, other)]
            child = space.mutate(space.decode(tokens), rng)
            out.append(Proposal(child, tuple(space.encode(child))))
        return state._replace(step=state.step + 1), out

    def tell(state: NSGA2State, observations: Sequence[Observation]) -> NSGA2State:
        seen = {m.arch_id for m in state.population + state.offspring}
        offspring = list(state.offspring)
        for obs in observations:
            values = [obs.metrics.get(k) for k in names]
            arch_id = space.arch_id(obs.proposal.arch)
            if obs.rejected or obs.reward is None or arch_id in seen or None in values:
                continue
            seen.add(arch_id)
            offspring.append(Member(obs.proposal.arch, arch_id,
                                    (-float(values[0]), *(float(v) for v in values[1:]))))
        population = state.population
        if len(offspring) >= params.population:
            merged = population + tuple(offspring)
            population = tuple(merged[i] for i in
                               select_survivors([m.point for m in merged], params.population))
            offspring = []
        return state._replace(population=population, offspring=tuple(offspring))

    return Strategy("nsga2", init, ask, tell)
