"""Regularized (aging) evolution, Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search" (AAAI), Algorithm 1.

The population is a queue ordered by age. The first ``population`` candidates are random; after
that each child is a one-decision mutation (:meth:`Space.mutate`) of the best of ``sample_size``
members drawn uniformly from the population (tournament selection). Each evaluated child joins
the population and the *oldest* member is removed, whatever its reward (aging regularizes the
search towards architectures that stay good when retrained).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import pydantic

from nas.space import Arch, Space
from nas.strategies.base import Observation, Proposal, Strategy, step_rng
from nas.strategies.random import sample_proposal


class EvolutionParams(pydantic.BaseModel):
    """Attributes: population (P, members kept); sample_size (S, tournament size)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    population: int = pydantic.Field(10, ge=2)
    sample_size: int = pydantic.Field(3, ge=1)

    @pydantic.model_validator(mode="after")
    def _sample_fits(self) -> "EvolutionParams":
        if self.sample_size > self.population:
            raise ValueError("sample_size must not exceed population")
        return self


class EvolutionState(NamedTuple):
    """Attributes: seed; step (asks so far); randoms (random initial candidates asked);
    population: ((arch, reward), ...) oldest first."""

    seed: int
    step: int
    randoms: int
    population: tuple[tuple[Arch, float], ...]


def regularized_evolution(space: Space, params: EvolutionParams | None = None) -> Strategy:
    """Returns the regularized-evolution Strategy.

    Args:
        space: the search space.
        params: population and tournament size.
    """
    params = params or EvolutionParams()

    def init(seed: int) -> EvolutionState:
        return EvolutionState(int(seed), 0, 0, ())

    def ask(state: EvolutionState, n: int) -> tuple[EvolutionState, list[Proposal]]:
        rng = step_rng(state.seed, state.step)
        out, randoms = [], state.randoms
        for _ in range(n):
            if randoms < params.population or not state.population:
                randoms += 1
                out.append(sample_proposal(space, rng))
                continue
            picks = rng.choice(len(state.population), size=min(params.sample_size, len(state.population)),
                               replace=False)
            parent = max((state.population[int(i)] for i in picks), key=lambda m: m[1])[0]
            child = space.mutate(parent, rng)
            out.append(Proposal(child, tuple(space.encode(child))))
        return state._replace(step=state.step + 1, randoms=randoms), out

    def tell(state: EvolutionState, observations: Sequence[Observation]) -> EvolutionState:
        population = list(state.population)
        for obs in observations:
            if obs.reward is None:
                continue
            population.append((obs.proposal.arch, float(obs.reward)))
            if len(population) > params.population:
                population.pop(0)  # aging: remove the oldest, not the worst
        return state._replace(population=tuple(population))

    return Strategy("evolution", init, ask, tell)
