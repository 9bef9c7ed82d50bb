"""The one strategy registry: config name -> (family, parameter model, factory).

Every place that lists, validates or dispatches strategy names asks this module (``nas search``,
``nas run``, config validation, the weight-sharing fast path); nothing else keeps a list of
names. Two families:

* ``"sample"`` (random, evolution, rl, nsga2): ``factory(space, params) -> Strategy``, the
  ask/tell protocol of :mod:`nas.strategies.base`, run by the ask/tell loop of :mod:`nas.search`.
  A multi-objective one (nsga2) has an ``objectives`` parameter: the cost metrics it minimizes
  beside the accuracy (unset: the config's ``objective.metric``, see :func:`make_strategy`).
* ``"one_shot"`` (fbnet, proxyless, single_path): train a supernet and derive an Arch, run by
  :mod:`nas.strategies.oneshot_driver`. All three implement the one-shot protocol
  :class:`~nas.strategies.protocol.OneShot` (init / weight_step / arch_step / derive /
  distribution). ``supernet`` says which network: ``"paths"`` (a
  :class:`~nas.supernet.network.SuperNet` with one weight set per path, whose checkpoint the
  weight-sharing fast path can score candidates on; ``factory(net, objective, cost, params)``)
  or ``"superkernel"`` (the Single-Path superkernel network; ``factory(space, params, costs,
  target, train, warmup_steps=...)``). spos trains the superkernel's sub-networks by uniform
  sampling (sandwich rule, in-place distillation) and learns no architecture parameters
  (``learns_arch`` False; ``factory(space, params, train, net=...)``): its workdir is a supernet
  to score candidates on (``evaluation.mode: supernet``), as every one-shot workdir is.

Example:
    >>> from nas.strategies import registry
    >>> registry.entry("fbnet").family
    'one_shot'
    >>> registry.names("sample")
    ['evolution', 'nsga2', 'random', 'rl']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping

import pydantic

from nas.errors import NasInputError
from nas.single_path.cost import SlotCosts
from nas.single_path.plan import space_plan
from nas.space import Space
from nas.strategies.evolution import EvolutionParams, regularized_evolution
from nas.strategies.fbnet import fbnet_strategy
from nas.strategies.nsga2 import NSGA2Params, nsga2
from nas.strategies.oneshot_base import OneShotParams, objective_and_cost
from nas.strategies.proxyless import proxyless_strategy
from nas.strategies.random import RandomParams, random_search
from nas.strategies.rl import RLParams, reinforce
from nas.strategies.single_path import (SinglePathParams, single_path_strategy,
                                        check_settings as single_path_settings)
from nas.strategies.spos import SposParams, spos_space_check, spos_strategy
from nas.supernet.network import SuperNet
from nas.training.trainer import TrainConfig

Family = Literal["sample", "one_shot"]


@dataclasses.dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy.

    Attributes:
        name: the config name (``strategy.name``).
        family: 'sample' (ask/tell) or 'one_shot' (supernet training, then derive).
        params: the pydantic model of ``strategy.params``.
        factory: builds the strategy (signature per family, see the module docstring).
        supernet: one-shot only: 'paths' (SuperNet) or 'superkernel' (Single-Path); None for
            sample-based strategies.
        default_objective: 'paths' one-shot only: the loss form used when
            ``params.objective`` is unset ('fbnet' or 'proxyless').
        summary: one line for help texts.
        check_space: ``f(space)`` raising NasInputError for a space the strategy cannot search
            (run by ``--check`` and before any work), or None (every space).
        check_settings: ``f(params, objective, has_table, epochs, source)`` raising
            NasInputError for settings the strategy's run would refuse (run by ``--check`` and
            by the run itself), or None.
        learns_arch: one-shot only: whether ``arch_step`` trains architecture parameters
            (False: spos, which trains sub-networks sampled uniformly and derives its largest).
    """

    name: str
    family: Family
    params: type[pydantic.BaseModel]
    factory: Callable[..., Any]
    supernet: Literal["paths", "superkernel"] | None = None
    default_objective: str | None = None
    summary: str = ""
    check_space: Callable[[Space], Any] | None = None
    check_settings: Callable[..., None] | None = None
    learns_arch: bool = True

    def parse_params(self, params: Mapping[str, Any] | None,
                     source: str | None = None) -> pydantic.BaseModel:
        """Validates this strategy's ``strategy.params``.

        Args:
            params: the mapping from the config (None = all defaults).
            source: the config file, named in errors.

        Returns:
            The validated parameter model.

        Raises:
            NasInputError: unknown field or bad value (names ``strategy.params.FIELD``).
        """
        try:
            return self.params.model_validate(dict(params or {}))
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            field = "strategy.params" + (f".{loc}" if loc else "")
            if err["type"] == "extra_forbidden":
                message = f"unknown field; allowed fields: {sorted(self.params.model_fields)}"
            else:
                got = err.get("input")
                message = (f"{got!r} is not allowed; " if not isinstance(got, (dict, list)) else "") \
                    + err["msg"].lower()
            raise NasInputError(message, source, field) from None


REGISTRY: dict[str, StrategyEntry] = {e.name: e for e in (
    StrategyEntry("random", "sample", RandomParams, random_search,
                  summary="uniform random sampling (the baseline)"),
    StrategyEntry("evolution", "sample", EvolutionParams, regularized_evolution,
                  summary="regularized (aging) evolution"),
    StrategyEntry("rl", "sample", RLParams, reinforce,
                  summary="MnasNet's REINFORCE controller"),
    StrategyEntry("nsga2", "sample", NSGA2Params, nsga2,
                  summary="NSGA-II: Pareto search over accuracy and costs"),
    StrategyEntry("fbnet", "one_shot", OneShotParams, fbnet_strategy, supernet="paths",
                  default_objective="fbnet", summary="FBNet: Gumbel-softmax supernet"),
    StrategyEntry("proxyless", "one_shot", OneShotParams, proxyless_strategy, supernet="paths",
                  default_objective="proxyless", summary="ProxylessNAS: binarized paths"),
    StrategyEntry("single_path", "one_shot", SinglePathParams, single_path_strategy,
                  supernet="superkernel",
                  summary="Single-Path NAS: one superkernel, learned thresholds",
                  check_space=space_plan, check_settings=single_path_settings),
    StrategyEntry("spos", "one_shot", SposParams, spos_strategy, supernet="superkernel",
                  summary="a supernet for scoring sub-networks: uniform sampling (SPOS), "
                          "sandwich rule and in-place distillation (BigNAS) over the superkernel",
                  check_space=spos_space_check, learns_arch=False),
)}


def names(family: Family | None = None, supernet: str | None = None) -> list[str]:
    """Returns the registered strategy names (sorted), optionally of one family or supernet.

    Args:
        family: 'sample', 'one_shot' or None (all).
        supernet: 'paths', 'superkernel' or None (any).

    Returns:
        The sorted names.
    """
    return sorted(n for n, e in REGISTRY.items() if (family is None or e.family == family)
                  and (supernet is None or e.supernet == supernet))


def entry(name: str, source: str | None = None) -> StrategyEntry:
    """Returns the registry entry of a strategy name.

    Args:
        name: ``strategy.name`` of a config.
        source: the config file, named in errors.

    Returns:
        The StrategyEntry.

    Raises:
        NasInputError: unknown name (lists the registered ones).
    """
    if name not in REGISTRY:
        raise NasInputError(f"unknown strategy {name!r}; choose one of {names()}", source,
                            "strategy.name")
    return REGISTRY[name]


def parse_params(name: str, params: Mapping[str, Any] | None,
                 source: str | None = None) -> pydantic.BaseModel:
    """Validates any strategy's parameters.

    Args:
        name: strategy name.
        params: the ``strategy.params`` mapping from the config.
        source: the config file, named in errors.

    Returns:
        The validated parameter model.

    Raises:
        NasInputError: unknown strategy or a bad parameter (names the field).
    """
    return entry(name, source).parse_params(params, source)


def front_metrics(name: str, params: Mapping[str, Any], metric: str,
                  has_latency_table: bool) -> list[str]:
    """Returns the cost metrics of a sample-based search's Pareto front (``pareto.json``).

    Args:
        name: the strategy name.
        params: its ``strategy.params`` mapping.
        metric: the config's ``objective.metric``.
        has_latency_table: whether the config names a latency table.

    Returns:
        A multi-objective strategy's ``objectives`` (unset: ``[metric]``); for the others
        ``[metric]``, or ``['macs']`` when the metric is latency_ms without a table to predict it.
    """
    if "objectives" in entry(name).params.model_fields:
        return list(params.get("objectives") or [metric])
    return ["macs"] if metric == "latency_ms" and not has_latency_table else [metric]


def make_strategy(name: str, space: Space,
                  params: Mapping[str, Any] | pydantic.BaseModel | None = None, *,
                  net: Any = None, table: Any = None, target: float | None = None,
                  train: TrainConfig | None = None, steps_per_epoch: int = 1,
                  metric: str | None = None) -> Any:
    """Builds a strategy from its config name.

    Args:
        name: a registered name (:func:`names`).
        space: the search space.
        params: the strategy's parameters (mapping or validated model).
        net: one-shot only: a prebuilt network (default ``SuperNet(space)`` for 'paths',
            ``SinglePathNetwork(space)`` for 'superkernel').
        table: one-shot only: the cost table ('paths': a LatencyTable or a :mod:`nas.cost_table`
            table for the objective; single_path with ``cost: latency``: the LatencyTable), or
            None for no cost term.
        target: single_path only: the cost target T (``objective.target``), or None.
        train: single_path only: the trainer settings (default ``TrainConfig()``).
        steps_per_epoch: single_path only: steps per epoch (turns ``warmup_epochs`` into steps).
        metric: sample-based only: the config's ``objective.metric``, the objective of a
            multi-objective strategy whose ``objectives`` are unset (:func:`front_metrics`).

    Returns:
        A :class:`~nas.strategies.base.Strategy` (sample) or a
        :class:`~nas.strategies.protocol.OneShot` (one-shot).

    Raises:
        NasInputError: unknown name, bad parameters, or a cost objective without a table.
    """
    e = entry(name)
    if not isinstance(params, pydantic.BaseModel):
        params = e.parse_params(params)
    if e.family == "sample":
        if "objectives" in type(params).model_fields and not params.objectives:
            params = params.model_copy(update={"objectives": [metric or "latency_ms"]})
        return e.factory(space, params)
    if e.supernet == "paths":
        net = net if net is not None else SuperNet(space, params.depthwise_impl, pick=params.pick)
        objective, cost = objective_and_cost(name, params, e.default_objective, table)
        return e.factory(net, objective, cost, params)
    if not e.learns_arch:  # spos: the superkernel's sub-networks, no cost term
        return e.factory(space, params, train, net=net)
    if params.cost == "latency":
        if table is None:
            raise NasInputError("single_path with cost latency needs a latency table; set "
                                "latency_table or strategy.params.cost: bops",
                                field="latency_table")
        costs = SlotCosts.from_table(space, table)
    else:
        costs = SlotCosts.from_metric(space, params.cost)
    return e.factory(space, params, costs, target, train, net=net,
                     warmup_steps=int(round(params.warmup_epochs * steps_per_epoch)))
