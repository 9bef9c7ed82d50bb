"""FBNet-style candidate blocks (a slot's ``block`` knob) as single-path ladders.

A slot with candidates lists named presets of several knobs (``k5_e1_g2: {op: mbconv, kernel: 5,
expand: 1, groups: 2}``, ``skip: {op: skip}``). Single-Path NAS decides nested ladders, not
names, so the plan (:mod:`nas.single_path.plan`) is built from the slot's *candidate view*: the
same slot with every knob its candidates set turned into a choice of the values they use
(:func:`candidate_view`), except that the mid ladder takes the (expand, width, groups)
combinations the candidates list (:func:`mid_combos`) rather than their product. A
:class:`CandidateMatcher` then names the candidate that each combination of ladder levels is
(by the layer's latency-table key, so a skip matches whatever the other ladders say); the plan
refuses candidates that are not such a product.

Example:
    >>> view = candidate_view(slot)         # fbnet_cifar: op (mbconv, skip), kernel (3, 5),
    >>> view.choices["groups"]              #   expand (1, 3, 6), groups (1, 2)
    (1, 2)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping

from nas.slot import Slot
from nas.spec import BlockSpec, op_traits


def _preset(slot: Slot, name: str) -> dict[str, Any]:
    """A candidate's knob values (its preset over the slot's fixed knobs)."""
    return {**slot.fixed, **slot.candidates[name]}


def candidate_view(slot: Slot) -> Slot:
    """Returns the slot with its candidates' knobs as choices (the slot itself without
    candidates).

    A knob set by some candidate becomes a choice of the distinct values (first-seen order) of
    the candidates whose operator it changes (``op_traits(op).knobs``: a skip's kernel is no
    value), or fixed where they all agree.

    Args:
        slot: a slot of a Space.

    Returns:
        A Slot without candidates.
    """
    if not slot.candidates:
        return slot
    values: dict[str, list] = {knob: [] for preset in slot.candidates.values() for knob in preset}
    for name in slot.candidates:
        knobs = _preset(slot, name)
        relevant = op_traits(slot.spec({"block": name}).op).knobs | {"op"}
        for knob, vals in values.items():
            if knob in relevant and knobs[knob] not in vals:
                vals.append(knobs[knob])
    fixed = dict(slot.fixed)
    choices = dict(slot.choices)
    for knob, vals in values.items():
        if len(vals) == 1:
            fixed[knob] = vals[0]
        elif vals:
            choices[knob] = tuple(vals)
    return dataclasses.replace(slot, fixed=fixed, choices=choices, candidates={})


def mid_combos(slot: Slot, view: Slot, op: str) -> list[tuple[Any, float, int]]:
    """Returns the (expand, width, groups) combinations of operator `op` in a slot: those its
    candidates list (each with every searched width), else the product of the choices.

    Args:
        slot: the Space's slot.
        view: its :func:`candidate_view`.
        op: a bottleneck operator of the slot.
    """
    get = lambda knobs, k: view.choices.get(k, (knobs[k],))  # noqa: E731
    if not slot.candidates:
        knobs = view.fixed
        return list(itertools.product(get(knobs, "expand"), get(knobs, "width"),
                                      get(knobs, "groups")))
    out = []
    for name in slot.candidates:
        knobs = _preset(slot, name)
        if knobs["op"] == op:
            out += [(knobs["expand"], w, knobs["groups"])
                    for w in slot.choices.get("width", (knobs["width"],))]
    return out


def combo_sort_key(level: tuple[int, int]) -> tuple[int, int]:
    """Orders mid levels (channels, groups): fewer channels first, then more groups first."""
    channels, groups = level
    return channels, -groups


class CandidateMatcher:
    """Names the candidate block of a slot's knob values, and records which were named.

    Attributes:
        slot: the Space's slot.
        knobs: the knobs some candidate sets.
        reached: the candidates named so far.
    """

    def __init__(self, slot: Slot):
        self.slot = slot
        self.knobs = {knob for preset in slot.candidates.values() for knob in preset}
        self.reached: set[str] = set()
        self._keys: dict[tuple, dict[str, str]] = {}

    def name(self, values: Mapping[str, Any], spec: BlockSpec) -> str | None:
        """Returns the candidate whose layer is `spec` (None if no candidate is).

        Args:
            values: the slot's knob values (its searched non-candidate knobs are read).
            spec: the layer those values give.
        """
        others = tuple((knob, values[knob]) for knob in self.slot.choices)
        keys = self._keys.get(others)
        if keys is None:
            keys = {}
            for name in self.slot.candidates:
                keys.setdefault(self.slot.spec({**dict(others), "block": name}).key(), name)
            self._keys[others] = keys
        name = keys.get(spec.key())
        if name is not None:
            self.reached.add(name)
        return name
