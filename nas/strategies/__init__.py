"""Search strategies. Sample-based ones share the ask/tell interface of :mod:`.base`.

Use :func:`make_strategy` to build one from its config name and parameter mapping; a bad
parameter raises :class:`~nas.errors.NasInputError` naming ``strategy.params.FIELD``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pydantic

from nas.errors import NasInputError
from nas.space import Space
from nas.strategies.base import Observation, Proposal, Strategy
from nas.strategies.evolution import EvolutionParams, regularized_evolution
from nas.strategies.random import RandomParams, random_search
from nas.strategies.rl import RLParams, reinforce

# name -> (parameter model, factory(space, params) -> Strategy)
SAMPLE_BASED: dict[str, tuple[type[pydantic.BaseModel], Callable[..., Strategy]]] = {
    "random": (RandomParams, random_search),
    "evolution": (EvolutionParams, regularized_evolution),
    "rl": (RLParams, reinforce),
}

# One-shot (supernet) strategies: name -> parameter model, imported lazily. ``nas search`` runs
# them through nas.strategies.oneshot_loop.run_oneshot_search instead of the ask/tell loop.
ONE_SHOT_PARAMS: dict[str, str] = {
    "fbnet": "nas.strategies.oneshot_base:OneShotParams",
    "proxyless": "nas.strategies.oneshot_base:OneShotParams",
    "single_path": "nas.strategies.single_path:SinglePathParams",
}

__all__ = ["Observation", "Proposal", "Strategy", "SAMPLE_BASED", "ONE_SHOT_PARAMS", "make_strategy",
           "parse_params"]


def _params_model(name: str) -> type[pydantic.BaseModel]:
    if name in ONE_SHOT_PARAMS:
        import importlib

        module, attr = ONE_SHOT_PARAMS[name].split(":")
        return getattr(importlib.import_module(module), attr)
    return SAMPLE_BASED[name][0]


def parse_params(name: str, params: Mapping[str, Any] | None, source: str | None = None) -> pydantic.BaseModel:
    """Validates a sample-based strategy's parameters.

    Args:
        name: strategy name (a key of :data:`SAMPLE_BASED`).
        params: the ``strategy.params`` mapping from the config.
        source: the config file, named in errors.

    Returns:
        The validated parameter model.

    Raises:
        NasInputError: unknown strategy or a bad parameter (names the field).
    """
    if name not in SAMPLE_BASED and name not in ONE_SHOT_PARAMS:
        raise NasInputError(f"unknown strategy {name!r}; choose one of "
                            f"{sorted(SAMPLE_BASED) + sorted(ONE_SHOT_PARAMS)}",
                            source, "strategy.name")
    model = _params_model(name)
    try:
        return model.model_validate(dict(params or {}))
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        field = "strategy.params" + (f".{loc}" if loc else "")
        if err["type"] == "extra_forbidden":
            message = f"unknown field; allowed fields: {sorted(model.model_fields)}"
        else:
            got = err.get("input")
            message = (f"{got!r} is not allowed; " if not isinstance(got, (dict, list)) else "") + \
                err["msg"].lower()
        raise NasInputError(message, source, field) from None


def make_strategy(name: str, space: Space, params: Mapping[str, Any] | pydantic.BaseModel | None = None) -> Strategy:
    """Builds a sample-based strategy.

    Args:
        name: 'random', 'evolution' or 'rl'.
        space: the search space.
        params: the strategy's parameters (mapping or validated model).

    Returns:
        The Strategy.
    """
    if not isinstance(params, pydantic.BaseModel):
        params = parse_params(name, params)
    return SAMPLE_BASED[name][1](space, params)
