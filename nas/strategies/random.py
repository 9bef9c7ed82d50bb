"""Random search: every decision drawn uniformly, independently of past rewards.

The baseline that any search strategy must beat at the same candidate budget.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import pydantic

from nas.space import Space
from nas.strategies.base import Observation, Proposal, Strategy, step_rng


class RandomParams(pydantic.BaseModel):
    """Random search has no parameters (the section may be empty)."""

    model_config = pydantic.ConfigDict(extra="forbid")


class RandomState(NamedTuple):
    """Attributes: seed; step (asks so far)."""

    seed: int
    step: int


def sample_proposal(space: Space, rng) -> Proposal:
    """Returns one uniformly sampled Proposal.

    Args:
        space: the search space.
        rng: a numpy Generator.
    """
    tokens = tuple(int(rng.integers(n)) for n in space.cardinalities())
    return Proposal(space.decode(tokens), tokens)


def random_search(space: Space, params: RandomParams | None = None) -> Strategy:
    """Returns the random-search Strategy for a space.

    Args:
        space: the search space.
        params: unused (kept for a uniform signature).
    """

    def init(seed: int) -> RandomState:
        return RandomState(int(seed), 0)

    def ask(state: RandomState, n: int) -> tuple[RandomState, list[Proposal]]:
        rng = step_rng(state.seed, state.step)
        return state._replace(step=state.step + 1), [sample_proposal(space, rng) for _ in range(n)]

    def tell(state: RandomState, observations: Sequence[Observation]) -> RandomState:
        return state

    return Strategy("random", init, ask, tell)
