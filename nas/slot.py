"""Slot: one searchable layer position of a Space, with its shapes resolved."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from nas.spec import BlockSpec


@dataclasses.dataclass(frozen=True)
class Slot:
    """One searchable layer position of a Space, with its shapes resolved.

    Attributes:
        prefix: label prefix, e.g. 's3_b1'.
        cin, cout, stride, in_hw: the layer's shapes.
        fixed: knob values fixed by the space (defaults included).
        choices: searchable knobs and their allowed values, in declaration order.
        candidates: joint presets for the 'block' decision ({name: {knob: value}}), if any.
        se_ratio: the SE ratio used when the 'se' knob is true.
        residual: whether residual connections are allowed.
        skip_projection: whether 'skip' is allowed where the shapes differ, as a 1x1 conv (with
            the slot's stride) -> BN -> act (op 'skip_proj', FBNet's skip in the CIFAR setting
            of HW-NAS-Bench); otherwise 'skip' is only the identity where the shapes match.
    """

    prefix: str
    cin: int
    cout: int
    stride: int
    in_hw: tuple[int, int]
    fixed: Mapping[str, Any]
    choices: Mapping[str, tuple]
    candidates: Mapping[str, Mapping[str, Any]]
    se_ratio: float
    residual: bool
    skip_projection: bool = False

    @property
    def can_skip(self) -> bool:
        """Whether an identity (skip) layer fits here."""
        return self.stride == 1 and self.cin == self.cout

    def label(self, knob: str) -> str:
        """Returns the Arch label of one of this slot's knobs."""
        return f"{self.prefix}_{knob}"

    def resolve(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Returns every knob's value for this slot given its decisions.

        Args:
            values: {knob: value} for the slot's decisions ('block' for candidates).

        Returns:
            {knob: value} for every knob of :data:`KNOB_DEFAULTS`; a 'skip' that changes the
            shape (only with ``skip_projection``) resolves to op 'skip_proj' with kernel 1.
        """
        knobs = dict(self.fixed)
        if "block" in values:
            knobs.update(self.candidates[values["block"]])
        knobs.update({k: v for k, v in values.items() if k != "block"})
        if knobs["op"] == "skip" and self.skip_projection and not self.can_skip:
            knobs.update(op="skip_proj", kernel=1)
        return knobs

    def spec(self, values: Mapping[str, Any]) -> BlockSpec:
        """Returns the BlockSpec of this slot for the given decisions."""
        k = self.resolve(values)
        return BlockSpec(
            op=k["op"], cin=self.cin, cout=self.cout, stride=self.stride, in_hw=self.in_hw,
            kernel=k["kernel"], expand=k["expand"], se_ratio=self.se_ratio if k["se"] else 0.0,
            act=k["act"], bits_w=k["bits_w"], bits_a=k["bits_a"], width=k["width"],
            rank=k["rank"], groups=k["groups"], residual=self.residual)
