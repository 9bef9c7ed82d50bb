"""The JSON schema of a latency table file, and its one-line validation errors.

The schema (JSON Schema 2020-12) is the reference for ``latency_tables/README.md``. Beyond the
schema, :func:`check_table_json` checks what a schema cannot say: p10 <= median <= p90 and the
checksum over the file's content (a hand-edited or truncated table is refused).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping

from nas.errors import NasInputError

FORMAT = "nas-latency-table"
VERSION = 1

_TIMING = {
    "type": "object",
    "required": ["median_ms", "p10_ms", "p90_ms", "n"],
    "additionalProperties": False,
    "properties": {
        "median_ms": {"type": "number", "exclusiveMinimum": 0},
        "p10_ms": {"type": "number", "exclusiveMinimum": 0},
        "p90_ms": {"type": "number", "exclusiveMinimum": 0},
        "n": {"type": "integer", "minimum": 1},
        "prepare_s": {"type": "number", "minimum": 0},
    },
}

_ENERGY = {
    "type": "object",
    "required": ["energy_mj", "source"],
    "additionalProperties": False,
    "properties": {
        "energy_mj": {"type": "number", "minimum": 0},
        "source": {"enum": ["estimated", "measured"]},
    },
}

_PER_CLASS = {
    "type": "object",
    "required": ["float", "int8", "skip"],
    "additionalProperties": False,
    "properties": {c: {"type": "number"} for c in ("float", "int8", "skip")},
}

_MODEL = {
    "type": "object",
    "required": ["kind", "intercept_ms", "scale"],
    "properties": {
        "kind": {"type": "string"},
        "intercept_ms": {"type": "number"},
        "scale": _PER_CLASS,
        "offset_ms": _PER_CLASS,
        "n": {"type": "integer", "minimum": 0},
        "outliers": {"type": "integer", "minimum": 0},
    },
}

_CAL_POINT = {
    "type": "object",
    "required": ["arch_id", "arch", "measured"],
    "additionalProperties": False,
    "properties": {"arch_id": {"type": "string"}, "arch": {"type": "object"},
                   "measured": _TIMING},
}

_METRICS = {
    "type": "object",
    "required": ["within_10pct", "rmspe", "kendall_tau", "n"],
    "properties": {
        "within_10pct": {"type": "number", "minimum": 0, "maximum": 1},
        "rmse_ms": {"type": "number", "minimum": 0},
        "rmspe": {"type": "number", "minimum": 0},
        "kendall_tau": {"type": ["number", "null"]},
        "n": {"type": "integer", "minimum": 1},
    },
}

#: The last ``nas latency validate`` of the table (optional; tables from before it lack it).
_VALIDATION = {
    "type": "object",
    "required": ["within_10pct", "rmspe", "kendall_tau", "n", "date", "machine", "sampling"],
    "properties": {
        **_METRICS["properties"],
        "plain_sum": _METRICS,
        "seed": {"type": "integer"},
        "sampling": {"type": "string"},
        "date": {"type": "string"},
        "machine": {"type": "object", "required": ["cpu_model"],
                    "properties": {"cpu_model": {"type": "string"}}},
        "extremes": {"type": "object"},
        "calibration_overlap": {"type": "integer", "minimum": 0},
    },
}

TABLE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "nas latency table",
    "type": "object",
    "required": ["format", "version", "space", "backend", "provenance", "entries", "checksum"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "complete": {"type": "boolean"},
        "space": {
            "type": "object", "required": ["name", "hash"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1},
                           "hash": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}},
        },
        "backend": {
            "type": "object", "required": ["name", "precision_rule", "versions", "device"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "precision_rule": {"type": "string"},
                "versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "device": {"type": "string"},
            },
        },
        "provenance": {
            "type": "object",
            "required": ["cpu_model", "threads", "batch", "date"],
            "properties": {
                "cpu_model": {"type": "string"},
                "cores": {"type": "array", "items": {"type": "integer"}},
                "threads": {"type": "integer", "minimum": 0},
                "batch": {"type": "integer", "minimum": 1},
                "date": {"type": "string"},
                "timing": {"type": "object"},
                "host_load": {"type": "array", "items": {"type": "number"}},
            },
        },
        "entries": {"type": "object", "additionalProperties": _TIMING},
        "energy": {"type": "object", "additionalProperties": _ENERGY},
        "calibration": {
            "type": "object",
            "required": ["seed", "points"],
            "additionalProperties": False,
            "properties": {
                "seed": {"type": "integer"},
                "sampling": {"type": "string"},
                "points": {"type": "array", "items": _CAL_POINT},
                "model": _MODEL,
            },
        },
        "validation": _VALIDATION,
        "checksum": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
    },
}


def content_checksum(data: Mapping[str, Any]) -> str:
    """Returns 'sha256:<hex>' of the canonical JSON of `data` without its 'checksum' field."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _non_finite(data: Any) -> str | None:
    """Returns the dotted path of the first NaN or infinite number in a JSON tree, or None."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path or "(top level)"
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value))
    return None


def check_table_json(data: Any, source: str) -> None:
    """Checks a parsed table file against the schema, the timing order and the checksum.

    Args:
        data: the parsed JSON.
        source: the file name, named in errors.

    Raises:
        NasInputError: one line naming the file, the field and the fix.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(TABLE_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        e = errors[0]
        raise NasInputError(f"{e.message[:200]} (not a valid latency table; rebuild it with "
                            "'nas latency build')", source, _path(e))
    bad = _non_finite(data)
    if bad is not None:
        raise NasInputError("NaN or infinite number; re-measure with 'nas latency build'",
                            source, bad)
    for key, entry in data["entries"].items():
        if not entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"]:
            raise NasInputError("needs p10_ms <= median_ms <= p90_ms; re-measure it with "
                                "'nas latency build'", source, f"entries.{key}")
    if data["checksum"] != content_checksum(data):
        raise NasInputError("content does not match its checksum (edited or corrupted after it "
                            "was built); rebuild it with 'nas latency build'", source, "checksum")
