"""The searchable knobs of a layer slot: their names, defaults and allowed values.

A knob is one decision about a block (its operator, kernel size, expansion ratio, bit-widths...).
Search spaces list, per stage, either a fixed value (scalar) or the choices (list) of each knob.
This module is the one place that says which knobs exist and what values each may take.
"""

from __future__ import annotations

import math
from typing import Any

from nas.errors import NasInputError
from nas.spec import BLOCK_OPS, op_traits

#: Values of the ``op`` knob.
OPS = tuple(op for op, traits in BLOCK_OPS.items() if traits.searchable)
ACTIVATIONS = ("relu", "relu6", "hswish", "swish")
BITS = (2, 4, 8, 32)
MAX_EXPAND = 64
MAX_GROUPS = 1024

#: Upper bounds of a space's numbers: far above any real network, low enough that a typo (an
#: extra zero, 1e9) is reported instead of exhausting memory or time.
SPACE_LIMITS = {"resolution": 8192, "channels": 100_000, "num_classes": 1_000_000, "stride": 8,
                "repeats": 64, "slots": 256, "choices": 64, "slot_options": 10_000}

#: Knob defaults used when a stage neither fixes nor searches a knob.
KNOB_DEFAULTS: dict[str, Any] = {
    "op": "mbconv",
    "kernel": 3,
    "expand": 6,
    "se": False,
    "bits_w": 32,
    "bits_a": 32,
    "width": 1.0,
    "rank": None,
    "groups": 1,
    "act": "relu",
}

KNOB_HELP = {
    "op": f"one of {list(OPS)}",
    "kernel": "an odd integer between 1 and 9 (depthwise kernel size)",
    "expand": f"a positive number up to {MAX_EXPAND} (expansion ratio of the inverted bottleneck)",
    "se": "true or false (squeeze-and-excite)",
    "bits_w": f"one of {list(BITS)} (weight bit-width; 32 = float)",
    "bits_a": f"one of {list(BITS)} (activation bit-width; 32 = float)",
    "width": "a number in (0, 1] (kept fraction of the expanded channels)",
    "rank": "null or a number in (0, 1] (rank of the 1x1 convs as a fraction of full rank)",
    "groups": f"an integer from 1 to {MAX_GROUPS} (groups of the 1x1 convs)",
    "act": f"one of {list(ACTIVATIONS)}",
}


def _is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float (bools, NaN and infinities are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def check_int(value: Any, field: str, source: str | None, minimum: int = 1,
              maximum: int | None = None) -> int:
    """Returns `value` as an int if it is a whole number in [minimum, maximum].

    Raises:
        NasInputError: not a finite whole number (bools excluded) or out of range.
    """
    if not _is_number(value) or int(value) != value or value < minimum or \
            (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise NasInputError(f"{value!r} is not allowed; expected an integer >= {minimum}{upper}",
                            source, field)
    return int(value)


def normalize_knob(name: str, value: Any, where: str | None = None, source: str | None = None) -> Any:
    """Checks one knob value and returns it in canonical form.

    Args:
        name: the knob's name (a key of :data:`KNOB_DEFAULTS`).
        value: the value as read from YAML/JSON.
        where: the field or label to name in an error.
        source: the file to name in an error.

    Returns:
        The value in canonical form: ints for integer knobs, floats for ratios, None for no rank.

    Raises:
        NasInputError: the knob is unknown or the value is not allowed.
    """
    field = where or name
    if name not in KNOB_DEFAULTS:
        raise NasInputError(f"unknown knob {name!r}; known knobs: {sorted(KNOB_DEFAULTS)}", source, field)
    bad = NasInputError(f"{value!r} is not allowed; expected {KNOB_HELP[name]}", source, field)
    if name in ("op", "act"):
        allowed = OPS if name == "op" else ACTIVATIONS
        if value not in allowed:
            raise bad
        return value
    if name == "se":
        if not isinstance(value, bool):
            raise bad
        return value
    if name in ("bits_w", "bits_a"):
        if not _is_number(value) or value not in BITS:
            raise bad
        return int(value)
    if name == "kernel":
        if not _is_number(value) or int(value) != value or not 1 <= value <= 9 or value % 2 == 0:
            raise bad
        return int(value)
    if name == "groups":
        if not _is_number(value) or int(value) != value or not 1 <= value <= MAX_GROUPS:
            raise bad
        return int(value)
    if name == "expand":
        if not _is_number(value) or not 0 < value <= MAX_EXPAND:
            raise bad
        return int(value) if float(value).is_integer() else float(value)
    if name == "width":
        if not _is_number(value) or not 0 < value <= 1:
            raise bad
        return float(value)
    if name == "rank":
        if value is None or value == "none":
            return None
        if not _is_number(value) or not 0 < value <= 1:
            raise bad
        return float(value)
    raise bad  # pragma: no cover - every knob is handled above


def relevant_knobs(op: str) -> set[str]:
    """Returns the knobs that change a block built with operator `op`.

    Args:
        op: the block's operator.

    Returns:
        Knob names whose value matters; the others are ignored (and canonicalized away).
    """
    return set(op_traits(op).knobs)
