"""The grammar of a search space's YAML: a definition checked field by field into its layers.

:class:`SpaceParser` reads a space definition (the parsed YAML of ``search_spaces/NAME.yaml``,
or a dict) into a :class:`ParsedSpace`: input, classes, the stem and head BlockSpecs and the
layer slots of every stage with their fixed knobs and choices. Every malformed field is one
:class:`~nas.errors.NasInputError` naming it (``stages[1].knobs.kernel``) and the fix.
:class:`nas.space.Space` is built on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from nas.errors import NasInputError
from nas.knobs import KNOB_DEFAULTS, SPACE_LIMITS as LIMITS
from nas.knobs import check_int, normalize_knob
from nas.slot import Slot
from nas.spec import BlockSpec, conv_out

_TOP_KEYS = {"name", "description", "source", "input", "num_classes", "stem", "head", "defaults",
             "stages"}
_STAGE_ATTRS = {"channels", "stride", "repeats", "se_ratio", "residual", "knobs", "candidates",
                "name", "skip_projection"}
_STEM_KEYS = {"channels", "kernel", "stride", "act", "bits_w", "bits_a"}
_HEAD_KEYS = {"channels", "act", "dropout", "bits_w", "bits_a"}
_DEFAULT_KEYS = set(KNOB_DEFAULTS) | {"se_ratio", "skip_projection"}


@dataclasses.dataclass(frozen=True)
class ParsedSpace:
    """A checked space definition.

    Attributes:
        name: the space's name.
        description: its description ('' if none).
        resolution: input (height, width).
        in_channels: input channels.
        num_classes: classes of the classifier.
        stem_spec: the stem layer.
        slots: the searchable layer slots, in network order.
        head_spec: the head layer.
    """

    name: str
    description: str
    resolution: tuple[int, int]
    in_channels: int
    num_classes: int
    stem_spec: BlockSpec
    slots: tuple[Slot, ...]
    head_spec: BlockSpec


class SpaceParser:
    """Checks a space definition, naming `source` (its file) in errors.

    Attributes:
        source: the file the definition came from, or None.
    """

    def __init__(self, source: str | None = None):
        self.source = source

    def _err(self, field: str, message: str) -> NasInputError:
        return NasInputError(message, self.source, field)

    def _int(self, value: Any, field: str, minimum: int = 1, limit: str | None = None) -> int:
        return check_int(value, field, self.source, minimum, LIMITS[limit] if limit else None)

    def _mapping(self, value: Any, field: str, allowed: set[str]) -> dict:
        if not isinstance(value, Mapping):
            raise self._err(field, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self._err(f"{field}.{unknown[0]}" if field else unknown[0],
                            f"unknown field; allowed fields: {sorted(allowed)}")
        return dict(value)

    def parse(self, d: Any) -> ParsedSpace:
        """Returns the checked space of definition `d`.

        Raises:
            NasInputError: a malformed field (the message names it).
        """
        d = self._mapping(d, "", _TOP_KEYS)
        for required in ("name", "input", "num_classes", "stem", "stages"):
            if required not in d:
                raise self._err(required, "missing required field")
        if not isinstance(d["name"], str) or not d["name"]:
            raise self._err("name", "expected a non-empty string")
        name: str = d["name"]
        description: str = str(d.get("description", ""))
        inp = self._mapping(d["input"], "input", {"resolution", "channels"})
        for key in ("resolution", "channels"):
            if key not in inp:
                raise self._err(f"input.{key}", "missing required field")
        res = inp["resolution"]
        if isinstance(res, Sequence) and not isinstance(res, str) and len(res) == 2:
            resolution = tuple(self._int(r, "input.resolution", limit="resolution")
                               for r in res)
        else:
            r = self._int(res, "input.resolution", limit="resolution")
            resolution = (r, r)
        in_channels = self._int(inp["channels"], "input.channels", limit="channels")
        num_classes = self._int(d["num_classes"], "num_classes", 2, "num_classes")

        defaults = dict(KNOB_DEFAULTS)
        se_ratio_default, projection_default = 0.25, False
        for key, value in self._mapping(d.get("defaults", {}) or {}, "defaults", _DEFAULT_KEYS).items():
            if key == "se_ratio":
                se_ratio_default = self._ratio(value, "defaults.se_ratio")
            elif key == "skip_projection":
                projection_default = self._bool(value, "defaults.skip_projection")
            else:
                defaults[key] = normalize_knob(key, value, f"defaults.{key}", self.source)

        stem = self._mapping(d["stem"], "stem", _STEM_KEYS)
        if "channels" not in stem:
            raise self._err("stem.channels", "missing required field")
        stem_stride = self._int(stem.get("stride", 2), "stem.stride", limit="stride")
        stem_spec = BlockSpec(
            op="stem", cin=in_channels,
            cout=self._int(stem["channels"], "stem.channels", limit="channels"),
            stride=stem_stride, in_hw=resolution,
            kernel=normalize_knob("kernel", stem.get("kernel", 3), "stem.kernel", self.source),
            act=normalize_knob("act", stem.get("act", defaults["act"]), "stem.act", self.source),
            bits_w=normalize_knob("bits_w", stem.get("bits_w", 32), "stem.bits_w", self.source),
            bits_a=normalize_knob("bits_a", stem.get("bits_a", 32), "stem.bits_a", self.source),
            expand=1)

        stages = d["stages"]
        if not isinstance(stages, list) or not stages:
            raise self._err("stages", "expected a non-empty list of stages")
        slots: list[Slot] = []
        cin, hw = stem_spec.cout, stem_spec.out_hw
        for si, stage in enumerate(stages, start=1):
            where = f"stages[{si - 1}]"
            stage = self._mapping(stage, where, _STAGE_ATTRS)
            if "channels" not in stage:
                raise self._err(f"{where}.channels", "missing required field")
            cout = self._int(stage["channels"], f"{where}.channels", limit="channels")
            stride = self._int(stage.get("stride", 1), f"{where}.stride", limit="stride")
            repeats = self._int(stage.get("repeats", 1), f"{where}.repeats", limit="repeats")
            se_ratio = self._ratio(stage.get("se_ratio", se_ratio_default), f"{where}.se_ratio")
            residual = self._bool(stage.get("residual", True), f"{where}.residual")
            projection = self._bool(stage.get("skip_projection", projection_default),
                                    f"{where}.skip_projection")
            fixed, choices = dict(defaults), {}
            knobs = stage.get("knobs", {}) or {}
            if not isinstance(knobs, Mapping):
                raise self._err(f"{where}.knobs", "expected a mapping {knob: value or [choices]}")
            for knob, value in knobs.items():
                field = f"{where}.knobs.{knob}"
                if knob not in KNOB_DEFAULTS:
                    raise self._err(field, f"unknown knob; known knobs: {sorted(KNOB_DEFAULTS)}")
                if isinstance(value, list):
                    if not value or len(value) > LIMITS["choices"]:
                        raise self._err(field, f"{len(value)} choices; expected 1 to "
                                               f"{LIMITS['choices']}")
                    vals = tuple(normalize_knob(knob, v, field, self.source) for v in value)
                    if len(set(vals)) != len(vals):
                        raise self._err(field, f"duplicate choices in {value!r}")
                    choices[knob] = vals
                else:
                    fixed[knob] = normalize_knob(knob, value, field, self.source)
            candidates = self._candidates(stage.get("candidates"), where, choices)
            for bi in range(1, repeats + 1):
                s = stride if bi == 1 else 1
                slot_cin = cin if bi == 1 else cout
                slots.append(self._make_slot(f"s{si}_b{bi}", slot_cin, cout, s, hw, fixed, choices,
                                             candidates, se_ratio, residual, projection, where))
                hw = (conv_out(hw[0], s), conv_out(hw[1], s))
                if len(slots) > LIMITS["slots"]:
                    raise self._err(f"{where}.repeats", f"more than {LIMITS['slots']} layer "
                                                        "slots in all; use fewer repeats or stages")
            cin = cout

        head = self._mapping(d.get("head", {}) or {}, "head", _HEAD_KEYS)
        hidden = head.get("channels", 0) or 0
        hidden = self._int(hidden, "head.channels", 0, "channels")
        dropout = head.get("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise self._err("head.dropout", f"{dropout!r} is not allowed; expected a number in [0, 1)")
        head_spec = BlockSpec(
            op="head", cin=cin, cout=num_classes, stride=1, in_hw=hw, hidden=hidden,
            act=normalize_knob("act", head.get("act", defaults["act"]), "head.act", self.source),
            bits_w=normalize_knob("bits_w", head.get("bits_w", 32), "head.bits_w", self.source),
            bits_a=normalize_knob("bits_a", head.get("bits_a", 32), "head.bits_a", self.source),
            dropout=float(dropout), kernel=1)
        return ParsedSpace(name, description, resolution, in_channels, num_classes, stem_spec,
                           tuple(slots), head_spec)

    def _bool(self, value: Any, field: str) -> bool:
        """Returns `value` if it is true or false, else raises NasInputError naming `field`."""
        if not isinstance(value, bool):
            raise self._err(field, f"{value!r} is not allowed; expected true or false")
        return value

    def _ratio(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise self._err(field, f"{value!r} is not allowed; expected a number in [0, 1]")
        return float(value)

    def _candidates(self, cands: Any, where: str, choices: Mapping) -> dict[str, dict]:
        if cands is None:
            return {}
        field = f"{where}.candidates"
        if not isinstance(cands, Mapping) or not cands or len(cands) > LIMITS["choices"]:
            raise self._err(field, "expected a mapping {name: {knob: value}} of 1 to "
                                   f"{LIMITS['choices']} candidates")
        out = {}
        for name, preset in cands.items():
            if not isinstance(preset, Mapping):
                raise self._err(f"{field}.{name}", "expected a mapping {knob: value}")
            out[str(name)] = {}
            for knob, value in preset.items():
                if knob in choices:
                    raise self._err(f"{field}.{name}.{knob}",
                                    "knob is both searched in knobs and set by a candidate; keep one")
                out[str(name)][knob] = normalize_knob(knob, value, f"{field}.{name}.{knob}", self.source)
        return out

    def _make_slot(self, prefix, cin, cout, stride, hw, fixed, choices, candidates, se_ratio,
                   residual, projection, where) -> Slot:
        ok_choices = dict(choices)
        ok_cands = dict(candidates)
        can_skip = (stride == 1 and cin == cout) or projection
        if not can_skip:
            if "op" in ok_choices:
                ok_choices["op"] = tuple(v for v in ok_choices["op"] if v != "skip")
            ok_cands = {n: p for n, p in ok_cands.items() if p.get("op", fixed["op"]) != "skip"}
            op_fixed = fixed["op"] == "skip" and "op" not in ok_choices and not candidates
            if op_fixed or ("op" in ok_choices and not ok_choices["op"]) or (candidates and not ok_cands):
                raise self._err(f"{where}.knobs.op",
                                f"slot {prefix} changes shape ({cin}->{cout} channels, stride {stride}) "
                                "so it cannot be 'skip'; add another op or skip_projection: true")
        options = math.prod(len(v) for v in ok_choices.values()) * max(1, len(ok_cands))
        if options > LIMITS["slot_options"]:
            raise self._err(f"{where}.knobs", f"slot {prefix} has {options} combinations of "
                                              f"choices; at most {LIMITS['slot_options']}")
        return Slot(prefix, cin, cout, stride, hw, dict(fixed), ok_choices, ok_cands, se_ratio,
                    residual, projection)
