"""Search strategies and their one registry (:mod:`.registry`).

Sample-based strategies (random, evolution, rl, nsga2) share the ask/tell interface of
:mod:`.base`; one-shot strategies (fbnet, proxyless, single_path) share the one-shot protocol of
:mod:`.protocol` (init / weight_step / arch_step / derive / distribution): they train a supernet
with the one trainer (:func:`nas.training.loop.run_training`) and derive an Arch. Use
:func:`make_strategy` to build one from its config name and :func:`parse_params` to validate its
parameters (a bad parameter raises :class:`~nas.errors.NasInputError` naming
``strategy.params.FIELD``); ``registry.entry(name).family`` says which family a name belongs to.
Every strategy's search writes the same files (:mod:`.outputs`).
"""

from __future__ import annotations

from nas.strategies.base import Observation, Proposal, Strategy
from nas.strategies.protocol import OneShot, OneShotState
from nas.strategies.registry import StrategyEntry, entry, make_strategy, names, parse_params

__all__ = ["Observation", "OneShot", "OneShotState", "Proposal", "Strategy", "StrategyEntry",
           "entry", "make_strategy", "names", "parse_params"]
